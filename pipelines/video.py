"""Helpers shared by every stage that walks over the frames of a video."""
from __future__ import annotations

from collections.abc import Iterator

from .errors import TalkingFaceError


def frame_chunks(total_frames: int, chunk_size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``chunk_size`` frames covering ``range(total_frames)``,
    so long videos are processed with memory bounded by the chunk, not the video."""
    if chunk_size < 1:
        raise TalkingFaceError(f"chunk_size must be at least 1, got {chunk_size}")
    for start in range(0, total_frames, chunk_size):
        yield slice(start, min(start + chunk_size, total_frames))
