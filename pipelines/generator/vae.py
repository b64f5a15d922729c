"""Latent mode's VAE: the user's Stable Diffusion VAE file, loaded offline into diffusers'
``AutoencoderKL`` from a config shipped in ``configs/`` (never fetched), and a codec that turns
ComfyUI-style images into scaled latents and back in bounded batches.

VAE files come in two key layouts and both load: the original LDM/CompVis names
(``encoder.down.0.block.0.conv1.weight``, ``quant_conv.weight``; e.g. vae-ft-mse-840000-ema-pruned
.safetensors, also with a ``first_stage_model.`` prefix) are converted with diffusers' own
single-file converter; diffusers names (``encoder.down_blocks.0.resnets.0.conv1.weight``, including
the pre-0.14 attention names ``query``/``key``/``value``/``proj_attn``) load as they are.
"""
from __future__ import annotations

import dataclasses
import json
from functools import lru_cache
from pathlib import Path

import torch

from ..checkpoints import WeightMismatch, read_checkpoint_metadata, read_checkpoint_weights
from ..errors import ModelFileError, TalkingFaceError
from ..video import frame_chunks
from .config import TGDMConfig

CONFIGS_DIR = Path(__file__).resolve().parent / "configs"
VAE_CONFIG_FILES = {"sd15": "sd15_vae.json"}
VAE_FOLDER_HINT = "ComfyUI/models/vae/"
# Parts of an AutoencoderKL; other tensors in a VAE file (e.g. a training loss's weights) are ignored.
VAE_PARTS = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")
# diffusers < 0.14 named the attention projections differently.
OLD_ATTENTION_NAMES = {".query.": ".to_q.", ".key.": ".to_k.", ".value.": ".to_v.", ".proj_attn.": ".to_out.0."}


def vae_config(name: str) -> dict:
    """The shipped diffusers ``AutoencoderKL`` config of VAE family ``name`` (e.g. ``"sd15"``)."""
    if name not in VAE_CONFIG_FILES:
        raise ModelFileError(f"unknown VAE '{name}': this pack ships configs for {sorted(VAE_CONFIG_FILES)}")
    return dict(_read_config(VAE_CONFIG_FILES[name]))


@lru_cache
def _read_config(file_name: str) -> dict:
    return json.loads((CONFIGS_DIR / file_name).read_text())


def build_autoencoder(config: dict, device: torch.device | str = "cpu"):
    """An ``AutoencoderKL`` with the architecture of ``config`` (``device="meta"`` builds it without memory)."""
    from diffusers import AutoencoderKL

    with torch.device(device):
        return AutoencoderKL.from_config(config)


def is_ldm_layout(weights: dict[str, torch.Tensor]) -> bool:
    return any(".down.0." in name or name.startswith("first_stage_model.") for name in weights)


def diffusers_vae_weights(weights: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """``weights`` under diffusers' ``AutoencoderKL`` names, whichever layout the file used."""
    if is_ldm_layout(weights):
        from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

        return convert_ldm_vae_checkpoint(weights, config)
    converted = {}
    for name, value in weights.items():
        if not name.startswith(VAE_PARTS):
            continue
        for old, new in OLD_ATTENTION_NAMES.items():
            name = name.replace(old, new)
        if ".attentions." in name and value.ndim == 4:  # 1x1-conv projections of old files
            value = value[:, :, 0, 0]
        converted[name] = value
    return converted


def ldm_vae_weights(weights: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """The inverse of :func:`diffusers_vae_weights` for an LDM file: diffusers ``AutoencoderKL`` weights
    under the original CompVis names, attention projections as 1x1 convolutions (how SD VAE files
    are distributed)."""
    levels = len(config["block_out_channels"])
    layers = config["layers_per_block"]
    renames = [("conv_shortcut", "nin_shortcut"), ("conv_norm_out", "norm_out"), ("mid_block.attentions.0.", "mid.attn_1.")]
    for i in range(levels):
        up = levels - 1 - i
        renames += [(f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}.") for j in range(layers)]
        renames += [(f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{up}.block.{j}.") for j in range(layers + 1)]
        renames += [(f"down_blocks.{i}.downsamplers.0.", f"down.{i}.downsample."),
                    (f"up_blocks.{i}.upsamplers.0.", f"up.{up}.upsample.")]
    renames += [(f"mid_block.resnets.{i}.", f"mid.block_{i + 1}.") for i in range(2)]
    attention = [("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."), ("to_out.0.", "proj_out.")]
    converted = {}
    for name, value in weights.items():
        for new, old in renames:
            name = name.replace(new, old)
        if ".attn_1." in name:
            for new, old in attention:
                name = name.replace(f".attn_1.{new}", f".attn_1.{old}")
            if name.endswith(".weight") and value.ndim == 2:
                value = value[:, :, None, None]
        converted[name] = value
    return converted


def load_vae(path: str | Path, name: str = "sd15", device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
    """The VAE in ``path`` (either key layout) as a diffusers ``AutoencoderKL``, built from the shipped
    config of family ``name``, or from an ``AutoencoderKL`` config in the file's metadata when it
    carries one (as the project's tiny test VAEs do); anything missing or of the wrong shape is named in the error."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(
            f"VAE file '{path.name}' not found: put the SD1.5 VAE (e.g. vae-ft-mse-840000-ema-pruned.safetensors) into {VAE_FOLDER_HINT}"
        )
    config = _own_config(read_checkpoint_metadata(path, "VAE file")) or vae_config(name)
    weights = diffusers_vae_weights(read_checkpoint_weights(path), config)
    model = build_autoencoder(config, "meta")
    expected = model.state_dict()
    mismatch = WeightMismatch.between(expected, weights)
    if len(mismatch.missing) == len(expected):
        raise ModelFileError(
            f"{path.name} is not a Stable Diffusion VAE (none of its tensors is an encoder/decoder weight); "
            f"pick the VAE file from {VAE_FOLDER_HINT}"
        )
    # Tensors beyond the VAE's (a whole SD checkpoint's UNet, say) are ignored: only the VAE is read.
    problems = dataclasses.replace(mismatch, unexpected=[]).problems(needs=f"the {name} VAE")
    if problems:
        raise ModelFileError(f"{path.name} is not a {name} VAE: " + "; ".join(problems[:4]))
    # Cast before assigning (files are often fp16); diffusers warns about casting a built model.
    model.load_state_dict({key: weights[key].to(dtype) for key in expected}, strict=True, assign=True)
    return model.to(device).eval().requires_grad_(False)


def _own_config(metadata: dict[str, str]) -> dict | None:
    """An ``AutoencoderKL`` config stored in a file's metadata, if that is what its ``config`` entry is."""
    try:
        config = json.loads(metadata.get("config", "null"))
    except json.JSONDecodeError:
        return None
    return config if isinstance(config, dict) and config.get("_class_name") == "AutoencoderKL" else None


class LatentCodec:
    """Images ↔ scaled latents. ``encode`` takes ComfyUI IMAGE ``[B, H, W, C]`` 0..1 and returns
    ``latents · scaling_factor`` ``[B, c, H/f, W/f]``; ``decode`` is the inverse. Both return float32
    on the CPU and work through the batch ``batch_size`` frames at a time, so memory is bounded."""

    latent_channels: int
    scale_factor: int
    scaling_factor: float
    batch_size: int = 4
    name: str = ""  # the VAE file, recorded in checkpoints trained on its latents

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([self._encode(images[batch]) * self.scaling_factor for batch in frame_chunks(images.shape[0], self.batch_size)])

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return torch.cat([self._decode(latents[batch] / self.scaling_factor) for batch in frame_chunks(latents.shape[0], self.batch_size)])

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def check_matches(self, config: TGDMConfig, generator_name: str = "the generator") -> None:
        """Raise when these latents are not the ones the generator was trained on."""
        mine = (self.latent_channels, self.scale_factor, round(self.scaling_factor, 6))
        if mine != (config.latent_channels, config.vae_scale_factor, round(config.vae_scaling_factor, 6)):
            raise TalkingFaceError(
                f"{generator_name} works on {config.latent_channels}-channel latents of a VAE that scales by "
                f"{config.vae_scale_factor} with latent scaling {config.vae_scaling_factor} (the '{config.vae}' VAE); the VAE "
                f"given has {self.latent_channels} channels, scales by {self.scale_factor} with latent scaling "
                f"{self.scaling_factor}: load the {config.vae} VAE from {VAE_FOLDER_HINT}"
            )


class DiffusersVAECodec(LatentCodec):
    """A diffusers ``AutoencoderKL``. Encoding takes the posterior's mode (as ComfyUI's VAE Encode
    does), so the same image always gives the same latent. ``tiled`` decodes/encodes images larger
    than the VAE's training size in overlapping tiles (not needed at 512² for the SD1.5 VAE)."""

    def __init__(self, autoencoder, batch_size: int = 4, tiled: bool = False, name: str = "") -> None:
        self.autoencoder = autoencoder
        self.batch_size = batch_size
        self.name = name
        self.latent_channels = autoencoder.config.latent_channels
        self.scale_factor = 2 ** (len(autoencoder.config.block_out_channels) - 1)
        self.scaling_factor = autoencoder.config.scaling_factor
        if tiled:
            autoencoder.enable_tiling()

    @property
    def device(self) -> torch.device:
        return next(self.autoencoder.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.autoencoder.parameters()).dtype

    def to(self, device: torch.device | str) -> DiffusersVAECodec:
        self.autoencoder.to(device)
        return self

    @torch.no_grad()
    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        pixels = images[..., :3].permute(0, 3, 1, 2).to(self.device, self.dtype) * 2 - 1
        return self.autoencoder.encode(pixels).latent_dist.mode().float().cpu()

    @torch.no_grad()
    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        pixels = self.autoencoder.decode(latents.to(self.device, self.dtype)).sample
        return ((pixels.float() + 1) * 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu()
