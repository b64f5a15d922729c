"""Write a tiny model of every kind the pack loads, in ComfyUI's ``models/`` layout.

    python -m scripts.tiny_models DIR

The files are small and randomly initialised where a model is learned, but in the real formats
and folders, so tests, the demo and a real ComfyUI (``run.py --models DIR``) load them through the
same code users run.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from pipelines.morphable.demo_model import build_demo_face_arrays
from pipelines.morphable.model import save_face_model_mat
from scripts.tiny_audio import write_tiny_audio_models
from scripts.tiny_clip import write_tiny_clip
from scripts.tiny_dubbing import write_tiny_dubbing_model
from scripts.tiny_emo_a2e import write_tiny_emo_a2e
from scripts.tiny_generator import write_tiny_generator, write_tiny_latent_generator
from scripts.tiny_insightface import write_tiny_insightface

TINY_FACE_RESOLUTION = 12


def write_tiny_models(root: Path) -> list[Path]:
    """Write every tiny model under ``root`` and return the paths written."""
    face_model = root / "3dmm" / "BFM_Fitting" / "BFM_model_front.mat"
    face_model.parent.mkdir(parents=True, exist_ok=True)
    save_face_model_mat(build_demo_face_arrays(resolution=TINY_FACE_RESOLUTION), face_model)
    return [
        face_model, *write_tiny_audio_models(root), *write_tiny_insightface(root), *write_tiny_generator(root),
        *write_tiny_latent_generator(root), *write_tiny_clip(root), *write_tiny_emo_a2e(root),
        *write_tiny_dubbing_model(root),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="the models/ folder to fill")
    args = parser.parse_args()
    for path in write_tiny_models(args.directory):
        print(path)


if __name__ == "__main__":
    main()
