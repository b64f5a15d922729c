"""What is derived from a mesh's triangles (sorted corners, incidence, per-batch index tensors), built
once and reused: a renderer or model hands the same triangles tensor over batch after batch, and
building these costs about as much as rendering a frame."""
from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

import torch

Derived = TypeVar("Derived")


class LastDerived(Generic[Derived]):
    """The value last derived from one tensor and a key. Held by a weak reference to the tensor and
    its version counter, so a new or edited tensor rebuilds it (inference tensors have no version
    counter; a mesh's triangles are never edited in place)."""

    def __init__(self) -> None:
        self._last: tuple[weakref.ref, Hashable, Derived] | None = None
        # Parts of one render ask from several threads at once: one builds, the others wait for it.
        self._lock = threading.Lock()

    def get(self, tensor: torch.Tensor, key: Hashable, build: Callable[[], Derived]) -> Derived:
        full_key = (None if tensor.is_inference() else tensor._version, key)
        with self._lock:
            last = self._last
            if last is not None and last[0]() is tensor and last[1] == full_key:
                return last[2]
            value = build()
            self._last = (weakref.ref(tensor), full_key, value)
            return value


def frame_offset_ids(corner_ids: tuple[torch.Tensor, ...] | list[torch.Tensor], frames: int,
                     num_vertices: int, frames_inner: bool = False) -> list[torch.Tensor]:
    """Per corner, its vertex ids ``[F]`` plus ``frame * num_vertices`` for every frame, flat int32
    (gathers read half the index bytes): indices into vertex planes of ``frames`` consecutive frames,
    frame-major ``[frames, F]``, or with ``frames_inner`` triangle-major ``[F, frames]``."""
    frame_starts = torch.arange(frames, device=corner_ids[0].device) * num_vertices
    if frames_inner:
        return [(corner.unsqueeze(1) + frame_starts).view(-1).int() for corner in corner_ids]
    return [(corner.unsqueeze(0) + frame_starts.unsqueeze(1)).view(-1).int() for corner in corner_ids]
