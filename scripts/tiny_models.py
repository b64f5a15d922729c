"""Write a tiny model of every kind the pack loads, in ComfyUI's ``models/`` layout.

    python -m scripts.tiny_models DIR

The files are small and randomly initialised where a model is learned, but in the real formats
and folders, so tests, the demo and a real ComfyUI (``run.py --models DIR``) load them through the
same code users run.

Naming convention: every file an example workflow names is either one that ships with the pack
(the built-in demo face, the demo generator in ``assets/``) or the file a user puts into
``ComfyUI/models/`` under the name in :data:`USER_MODEL_FILES`; the stand-ins here are written
under exactly those names, so the templates run unchanged with the stand-ins and with the real
files. Files only the tests use keep names that say they are tiny (``tgdm_tiny_32px``,
``talkingface_tiny_clip``). A workflow that names a user file also carries a Note saying where
the file comes from.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from pipelines.morphable.demo_model import build_demo_face_arrays
from pipelines.morphable.model import save_face_model_mat
from scripts.tiny_audio import TINY_AUDIO_MODEL_FILE, write_tiny_audio_models
from scripts.tiny_clip import TINY_CLIP_DIR, write_tiny_clip
from scripts.tiny_dubbing import TINY_DUBBING_FILE, write_tiny_dubbing_model
from scripts.tiny_emo_a2e import TINY_EMO_A2E_FILE, write_tiny_emo_a2e
from scripts.tiny_generator import (
    TINY_LATENT_GENERATOR_FILE,
    TINY_SWAP_GENERATOR_FILE,
    TINY_VAE_FILE,
    write_tiny_generator,
    write_tiny_latent_generator,
    write_tiny_swap_generator,
)
from scripts.tiny_insightface import PACK_NAME, write_tiny_insightface

TINY_FACE_RESOLUTION = 12
BFM_FILE = "BFM_model_front.mat"

# What the example workflows name, relative to ComfyUI/models/ (the widget value is the part after
# the folder). Files that ship with the pack are not here: "demo face (built-in)" in Load 3DMM and
# tgdm_demo_64px.safetensors (assets/, listed by Load Generator).
USER_MODEL_FILES = {
    "insightface pack": f"insightface/models/{PACK_NAME}/",
    "Basel Face Model": f"3dmm/{BFM_FILE}",
    "dlib 68-point landmarks": "dlib/shape_predictor_68_face_landmarks.dat",
    "audio-to-motion model": f"talkingface/{TINY_AUDIO_MODEL_FILE}",
    "Emo-A2E model": f"talkingface/{TINY_EMO_A2E_FILE}",
    "latent-mode generator": f"talkingface/{TINY_LATENT_GENERATOR_FILE}",
    "dubbing model": f"talkingface/{TINY_DUBBING_FILE}",
    "face-swap generator": f"talkingface/{TINY_SWAP_GENERATOR_FILE}",
    "SD1.5 VAE": f"vae/{TINY_VAE_FILE}",
    "open_clip ViT-B-32": f"clip/{TINY_CLIP_DIR}/open_clip_model.safetensors",
}


def write_tiny_models(root: Path) -> list[Path]:
    """Write every tiny model under ``root`` and return the paths written."""
    face_model = root / USER_MODEL_FILES["Basel Face Model"]
    face_model.parent.mkdir(parents=True, exist_ok=True)
    save_face_model_mat(build_demo_face_arrays(resolution=TINY_FACE_RESOLUTION), face_model)
    return [
        face_model, *write_tiny_audio_models(root), *write_tiny_insightface(root), *write_tiny_generator(root),
        *write_tiny_swap_generator(root), *write_tiny_latent_generator(root), *write_tiny_clip(root),
        *write_tiny_emo_a2e(root), *write_tiny_dubbing_model(root),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="the models/ folder to fill")
    args = parser.parse_args()
    for path in write_tiny_models(args.directory):
        print(path)


if __name__ == "__main__":
    main()
