"""Write tiny, randomly initialised TGDM generator checkpoints into a ComfyUI-style ``models/`` folder.

    python -m scripts.tiny_generator DIR

They have the real architecture and file format at toy size, so tests, the example workflows and a
real ComfyUI load them through the same code as trained checkpoints. Their output is noise-like:
they are untrained. scripts/tiny_models.py calls :func:`write_tiny_generator` and
:func:`write_tiny_latent_generator`; the latter also writes a tiny SD-style VAE into ``models/vae/``
in the original LDM key layout that SD1.5 VAE files use.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from pipelines.generator.checkpoint import save_tgdm
from pipelines.generator.config import TGDMConfig
from pipelines.generator.tgdm import TGDMDenoiser
from pipelines.generator.vae import build_autoencoder, ldm_vae_weights, vae_config

TINY_GENERATOR_FILE = "tgdm_tiny_32px.safetensors"
TINY_LATENT_GENERATOR_FILE = "tgdm_latent.safetensors"  # the name the example workflows give the user's trained one
TINY_VAE_FILE = "vae-ft-mse-840000-ema-pruned.safetensors"  # the SD1.5 VAE users have
TINY_SWAP_GENERATOR_FILE = "tgdm_swap.safetensors"  # the name the face-swap template gives the user's trained one
ARCFACE_DIM = 512


def tiny_generator_config() -> TGDMConfig:
    return TGDMConfig(
        image_size=32, base_channels=8, channel_multipliers=(1, 2), attention_resolutions=(16,),
        attention_head_channels=8, source_base_channels=8, norm_groups=4, surface_frequencies=2,
    )


def tiny_swap_generator_config() -> TGDMConfig:
    """The tiny generator with an ArcFace identity token, as face-swap generators are trained."""
    return dataclasses.replace(tiny_generator_config(), identity_dim=ARCFACE_DIM)


def tiny_latent_generator_config() -> TGDMConfig:
    """Latent mode on 8² latents of the tiny VAE: 64² images in and out."""
    return TGDMConfig(
        space="latent", image_size=8, base_channels=8, channel_multipliers=(1, 2), attention_resolutions=(8,),
        attention_head_channels=8, source_base_channels=8, norm_groups=4, surface_frequencies=2,
        render_stem_channels=8,
    )


def tiny_vae_config() -> dict:
    """The SD1.5 VAE's architecture (4 latent channels, 8x downscaling, same scaling) at toy width."""
    return {**vae_config("sd15"), "block_out_channels": [8, 8, 8, 8], "norm_num_groups": 4, "layers_per_block": 1,
            "sample_size": 64}


def write_tiny_vae(models_root: Path) -> Path:
    """``models_root/vae/vae-ft-mse-840000-ema-pruned.safetensors``, a stand-in for the SD1.5 VAE file of
    that name: its original LDM key names and, unlike the real file, its toy config in the metadata."""
    torch.manual_seed(0)
    config = tiny_vae_config()
    weights = build_autoencoder(config).state_dict()
    path = Path(models_root) / "vae" / TINY_VAE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    ldm = {name: value.contiguous() for name, value in ldm_vae_weights(weights, config).items()}
    save_file(ldm, str(path), metadata={"config": json.dumps(config), "note": "tiny random VAE for tests"})
    return path


def write_tiny_generator(models_root: Path) -> list[Path]:
    """Save the tiny generator as ``models_root/talkingface/tgdm_tiny_32px.safetensors`` (for tests; the
    example workflows use the demo generator that ships with the pack)."""
    torch.manual_seed(0)
    path = Path(models_root) / "talkingface" / TINY_GENERATOR_FILE
    save_tgdm(TGDMDenoiser(tiny_generator_config()), path, {"note": "tiny random weights for tests"})
    return [path]


def write_tiny_swap_generator(models_root: Path) -> list[Path]:
    """Save ``models_root/talkingface/tgdm_swap.safetensors``, a stand-in for a trained face-swap generator."""
    torch.manual_seed(0)
    path = Path(models_root) / "talkingface" / TINY_SWAP_GENERATOR_FILE
    save_tgdm(TGDMDenoiser(tiny_swap_generator_config()), path, {"note": "tiny random weights for tests"})
    return [path]


def write_tiny_latent_generator(models_root: Path) -> list[Path]:
    """Save a tiny latent-mode generator into ``models_root/talkingface/`` and the tiny VAE it works
    with into ``models_root/vae/``."""
    vae = write_tiny_vae(models_root)
    torch.manual_seed(0)
    path = Path(models_root) / "talkingface" / TINY_LATENT_GENERATOR_FILE
    save_tgdm(TGDMDenoiser(tiny_latent_generator_config()), path,
              {"note": "tiny random weights for tests", "trained_with_vae": TINY_VAE_FILE})
    return [path, vae]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="the models/ folder to fill")
    root = parser.parse_args().directory
    for path in [*write_tiny_generator(root), *write_tiny_swap_generator(root), *write_tiny_latent_generator(root)]:
        print(path)


if __name__ == "__main__":
    main()
