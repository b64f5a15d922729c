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


def load_weights_strictly(model: nn.Module, weights: dict[str, torch.Tensor], file_name: str, description: str) -> None:
    """Load ``weights`` into ``model`` only when every weight is there with the right shape and none is
    extra; otherwise raise one error that names a few of each problem (as diffusers' loader reports)."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong = [f"'{name}' is {tuple(weights[name].shape)}, the config needs {tuple(expected[name].shape)}"
             for name in sorted(set(expected) & set(weights)) if weights[name].shape != expected[name].shape]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} weights, e.g. {missing[:3]}")
    if unexpected:
        problems.append(f"{len(unexpected)} weights the config does not use, e.g. {unexpected[:3]}")
    problems += wrong[:3]
    if problems:
        raise ModelFileError(f"{file_name} does not match its own {description} config: " + "; ".join(problems))
    model.load_state_dict(weights, strict=True)
