"""Write a tiny, randomly initialised TGDM generator checkpoint into a ComfyUI-style ``models/`` folder.

    python -m scripts.tiny_generator DIR

It has the real architecture and file format at toy size, so tests, the example workflow and a real
ComfyUI load it through the same code as a trained checkpoint. Its output is noise-like: it is
untrained. scripts/tiny_models.py calls :func:`write_tiny_generator`.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from pipelines.generator.checkpoint import save_tgdm
from pipelines.generator.config import TGDMConfig
from pipelines.generator.tgdm import TGDMDenoiser

TINY_GENERATOR_FILE = "tgdm_tiny_32px.safetensors"


def tiny_generator_config() -> TGDMConfig:
    return TGDMConfig(
        image_size=32, base_channels=8, channel_multipliers=(1, 2), attention_resolutions=(16,),
        attention_head_channels=8, source_base_channels=8, norm_groups=4, surface_frequencies=2,
    )


def write_tiny_generator(models_root: Path) -> list[Path]:
    """Save the tiny generator as ``models_root/talkingface/tgdm_tiny_32px.safetensors``."""
    torch.manual_seed(0)
    path = Path(models_root) / "talkingface" / TINY_GENERATOR_FILE
    save_tgdm(TGDMDenoiser(tiny_generator_config()), path, {"note": "tiny random weights for tests"})
    return [path]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="the models/ folder to fill")
    for path in write_tiny_generator(parser.parse_args().directory):
        print(path)


if __name__ == "__main__":
    main()
