"""TGDM checkpoints: one ``.safetensors`` file, the config as JSON in its metadata, loaded strictly."""
from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoints import load_weights_strictly, read_checkpoint_metadata, read_checkpoint_weights, save_checkpoint
from ..errors import ModelFileError
from .config import TGDMConfig
from .distilled import Distillation
from .tgdm import TGDMDenoiser

FILE_FORMAT = "talkingface.tgdm"
FILE_VERSION = "1"
# The dubbing model's tag (generator/dubbing.py), named here so its files get a helpful refusal.
DUBBING_FORMAT = "talkingface.dubbing"


def save_tgdm(model: TGDMDenoiser, path: str | Path, extra_metadata: dict[str, str] | None = None) -> None:
    """Write the weights (float32 unless already half) and the config into one file; a few-step
    student's file also records its :class:`Distillation`."""
    metadata = {"format": FILE_FORMAT, "version": FILE_VERSION, "config": model.config.to_json()}
    if model.distillation is not None:
        metadata.update(model.distillation.to_metadata())
    metadata.update(extra_metadata or {})
    save_checkpoint(model, path, metadata)


def read_tgdm_metadata(path: str | Path) -> dict[str, str]:
    return read_checkpoint_metadata(path, "generator checkpoint")


def load_tgdm(path: str | Path, device: torch.device | str = "cpu") -> TGDMDenoiser:
    """Build the denoiser its file describes and load every weight; anything missing, extra or of
    the wrong shape is named in the error."""
    path = Path(path)
    metadata = read_tgdm_metadata(path)
    if metadata.get("format") == DUBBING_FORMAT:
        raise ModelFileError(
            f"{path.name} is a dubbing model (lip-sync for videos), not a TGDM generator: load it with "
            "Load Dubbing Model and use it in Dub Video"
        )
    if metadata.get("format") != FILE_FORMAT:
        kind = f"format '{metadata['format']}'" if "format" in metadata else "no 'format' entry in its metadata"
        raise ModelFileError(
            f"{path.name} is not a TGDM generator checkpoint ({kind}, expected '{FILE_FORMAT}'); "
            "train one with `python -m scripts.train_tgdm` or pick a generator file"
        )
    if metadata.get("version") != FILE_VERSION:
        raise ModelFileError(f"{path.name} is TGDM checkpoint version {metadata.get('version')!r}; this pack reads {FILE_VERSION!r}")
    model = TGDMDenoiser(TGDMConfig.from_metadata(metadata, path.name))
    model.distillation = Distillation.from_metadata(metadata, path.name)
    load_weights_strictly(model, read_checkpoint_weights(path), path.name, "TGDM")
    return model.to(device).eval()
