"""One-file model checkpoints: weights in safetensors, the format tag, version and config as metadata."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import ModelFileError


def save_checkpoint(
    model: nn.Module,
    path: str | Path,
    metadata: dict[str, str],
    dtype: torch.dtype | None = None,
) -> None:
    """Write ``model``'s weights (cast to ``dtype`` when given) with ``metadata`` into one file."""
    tensors = {name: value.detach().to("cpu", dtype).contiguous() for name, value in model.state_dict().items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)


def read_checkpoint_metadata(path: str | Path, description: str) -> dict[str, str]:
    """The metadata of a checkpoint, read without loading its weights (wrong files fail cheaply)."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{description} '{path.name}' not found")
    try:
        with safe_open(str(path), framework="pt") as handle:
            return handle.metadata() or {}
    except Exception as error:  # safetensors raises its own types for a corrupt header
        raise ModelFileError(f"{path.name} could not be read as safetensors: {error}") from error


def read_checkpoint_weights(path: str | Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as error:
        raise ModelFileError(f"{Path(path).name} could not be read as safetensors: {error}") from error
