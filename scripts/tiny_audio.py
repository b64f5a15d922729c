"""Tiny audio-to-motion checkpoint and the example speech clip.

    python -m scripts.tiny_audio models DIR   # DIR/talkingface/<tiny checkpoint>.safetensors
    python -m scripts.tiny_audio assets [DIR] # the example audio (default tests/assets/)

The checkpoint is randomly initialised (its output heads start at zero, so it holds the speaker's
reference mouth) in the real format; the clip is synthetic speech-like audio from the same
formant synthesiser as the learning check, 16 kHz 16-bit mono. A test checks the committed clip
is what this script writes.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import soundfile
import torch

from pipelines.audio.io import SAMPLE_RATE
from pipelines.audio.landmark_model import LandmarkCompletionTransformer, LandmarkModelConfig, save_landmark_model
from pipelines.training.audio_synthetic import formant_audio, syllable_track

TINY_AUDIO_MODEL_FILE = "audio_landmarks.safetensors"  # the name the example workflows give the user's trained model
TINY_AUDIO_MODEL_CONFIG = LandmarkModelConfig(
    reference_sets=2, target_frames=8, width=32, heads=2, layers=1, feedforward=64, dropout=0.0,
    audio_channels=(16,), point_channels=4,
)
EXAMPLE_AUDIO_FILE = "talkingface_audio_speech.wav"
EXAMPLE_AUDIO_SECONDS = 2.0
EXAMPLE_AUDIO_SEED = 4


def write_tiny_audio_models(models_root: Path) -> list[Path]:
    """Save the tiny landmark model to ``models_root/talkingface/`` and return its path."""
    torch.manual_seed(0)
    model = LandmarkCompletionTransformer(TINY_AUDIO_MODEL_CONFIG)
    # Small non-zero heads, so the tiny model's output depends on its input as a trained one does.
    for head in (model.lip_head, model.jaw_head):
        torch.nn.init.normal_(head.weight, std=0.01)
    path = Path(models_root) / "talkingface" / TINY_AUDIO_MODEL_FILE
    save_landmark_model(model, path, {"note": "tiny, randomly initialised: for tests and workflow checks"})
    return [path]


def example_speech() -> np.ndarray:
    rng = np.random.default_rng(EXAMPLE_AUDIO_SEED)
    return formant_audio(rng, syllable_track(rng, EXAMPLE_AUDIO_SECONDS, SAMPLE_RATE))


def write_audio_assets(directory: Path) -> list[Path]:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / EXAMPLE_AUDIO_FILE
    soundfile.write(str(path), example_speech(), SAMPLE_RATE, subtype="PCM_16")
    return [path]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("models", "assets"))
    parser.add_argument("directory", type=Path, nargs="?", default=None)
    args = parser.parse_args()
    if args.what == "models":
        if args.directory is None:
            parser.error("models needs the models/ folder to fill")
        paths = write_tiny_audio_models(args.directory)
    else:
        paths = write_audio_assets(args.directory or Path("tests/assets"))
    for path in paths:
        print(path)


if __name__ == "__main__":
    main()
