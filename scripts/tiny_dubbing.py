"""Write a tiny, randomly initialised dubbing model into a ComfyUI-style ``models/`` folder.

    python -m scripts.tiny_dubbing DIR   # DIR/talkingface/<tiny dubbing checkpoint>.safetensors

Real architecture (TalkFormer landmark attention and implicit warping) and file format at toy
size, so tests, the example workflow and a real ComfyUI load it through the code users run. Its
output is noise-like: it is untrained. scripts/tiny_models.py calls :func:`write_tiny_dubbing_model`.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from pipelines.generator.dubbing import DubbingConfig, DubbingDenoiser, save_dubbing

TINY_DUBBING_FILE = "dubbing.safetensors"  # the name the example workflow gives the user's trained model


def tiny_dubbing_config() -> DubbingConfig:
    return DubbingConfig(
        image_size=32, base_channels=8, channel_multipliers=(1, 2), attention_resolutions=(16,),
        attention_head_channels=8, reference_base_channels=8, reference_frames=2, norm_groups=4, token_width=16,
        coordinate_frequencies=3,
    )


def write_tiny_dubbing_model(models_root: Path) -> list[Path]:
    torch.manual_seed(0)
    model = DubbingDenoiser(tiny_dubbing_config())
    # A small non-zero output layer, so the tiny model's frames depend on its inputs as a trained one's do.
    torch.nn.init.normal_(model.output.weight, std=0.01)
    path = Path(models_root) / "talkingface" / TINY_DUBBING_FILE
    save_dubbing(model, path, {"note": "tiny random weights for tests"})
    return [path]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="the models/ folder to fill")
    for path in write_tiny_dubbing_model(parser.parse_args().directory):
        print(path)


if __name__ == "__main__":
    main()
