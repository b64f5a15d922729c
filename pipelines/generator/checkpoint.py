"""TGDM checkpoints: one ``.safetensors`` file, the config as JSON in its metadata, loaded strictly."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import ModelFileError, TalkingFaceError
from .config import TGDMConfig
from .tgdm import TGDMDenoiser

FILE_FORMAT = "talkingface.tgdm"
FILE_VERSION = "1"


def save_tgdm(model: TGDMDenoiser, path: str | Path, extra_metadata: dict[str, str] | None = None) -> None:
    """Write the weights (float32 unless already half) and the config into one file."""
    metadata = {"format": FILE_FORMAT, "version": FILE_VERSION, "config": model.config.to_json()}
    metadata.update(extra_metadata or {})
    tensors = {name: value.detach().to("cpu").contiguous() for name, value in model.state_dict().items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)


def read_tgdm_metadata(path: str | Path) -> dict[str, str]:
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"generator checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            return handle.metadata() or {}
    except Exception as error:  # safetensors raises its own types for a corrupt header
        raise ModelFileError(f"{path.name} could not be read as safetensors: {error}") from error


def load_tgdm(path: str | Path, device: torch.device | str = "cpu") -> TGDMDenoiser:
    """Build the denoiser its file describes and load every weight; anything missing, extra or of
    the wrong shape is named in the error."""
    path = Path(path)
    metadata = read_tgdm_metadata(path)
    if metadata.get("format") != FILE_FORMAT:
        kind = f"format '{metadata['format']}'" if "format" in metadata else "no 'format' entry in its metadata"
        raise ModelFileError(
            f"{path.name} is not a TGDM generator checkpoint ({kind}, expected '{FILE_FORMAT}'); "
            "train one with `python -m scripts.train_tgdm` or pick a generator file"
        )
    if metadata.get("version") != FILE_VERSION:
        raise ModelFileError(f"{path.name} is TGDM checkpoint version {metadata.get('version')!r}; this pack reads {FILE_VERSION!r}")
    if "config" not in metadata:
        raise ModelFileError(f"{path.name} has no 'config' in its metadata; re-save it with save_tgdm")
    try:
        config = TGDMConfig.from_json(metadata["config"])
    except TypeError as error:
        raise ModelFileError(f"{path.name} has an unusable TGDM config: {error}") from error
    except TalkingFaceError as error:
        raise ModelFileError(f"{path.name}: {error}") from error
    model = TGDMDenoiser(config)
    expected = model.state_dict()
    with safe_open(str(path), framework="pt") as handle:
        stored = set(handle.keys())
        missing = sorted(set(expected) - stored)
        unexpected = sorted(stored - set(expected))
        problems = []
        if missing:
            problems.append(f"missing {len(missing)} weights, e.g. {missing[:3]}")
        if unexpected:
            problems.append(f"{len(unexpected)} weights the config does not use, e.g. {unexpected[:3]}")
        weights = {}
        for name in sorted(stored & set(expected)):
            tensor = handle.get_tensor(name)
            if tensor.shape != expected[name].shape:
                problems.append(f"'{name}' is {tuple(tensor.shape)}, the config needs {tuple(expected[name].shape)}")
            weights[name] = tensor
    if problems:
        raise ModelFileError(f"{path.name} does not match its own TGDM config: " + "; ".join(problems[:4]))
    model.load_state_dict(weights, strict=True)
    return model.to(device).eval()
