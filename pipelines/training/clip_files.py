"""Training clip files: one ``.safetensors`` per clip, its tensors plus ``format``, ``fps`` and
``sample_rate`` (16 kHz) in the metadata; each trainer names its format and what else a clip holds."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..audio.io import SAMPLE_RATE
from ..errors import ModelFileError


def write_clip_file(path: str | Path, clip_format: str, fps: float, tensors: dict[str, torch.Tensor],
                    metadata: dict[str, str] | None = None) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file({name: value.float().contiguous() for name, value in tensors.items()}, str(path),
              metadata={"format": clip_format, "fps": repr(float(fps)), "sample_rate": str(SAMPLE_RATE), **(metadata or {})})


def read_clip_file(path: str | Path, clip_format: str, description: str, read: Callable[[Any, dict[str, str]], Any]) -> Any:
    """``read(handle, metadata)`` of a clip file after checking its format and sample rate; any
    failure is a :class:`ModelFileError` naming the file and ``description`` (the kind of clip)."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("format") != clip_format:
                raise ModelFileError(f"{path.name} is not {description} (format '{clip_format}')")
            if int(metadata.get("sample_rate", 0)) != SAMPLE_RATE:
                raise ModelFileError(f"{path.name}: clips must hold {SAMPLE_RATE} Hz audio")
            return read(handle, metadata)
    except ModelFileError:
        raise
    except Exception as error:
        raise ModelFileError(f"{path.name} could not be read as {description}: {error}") from error
