"""Head motion for a still portrait: the per-frame coefficients that audio-driven lips are fitted onto.

* ``hold``: the portrait's pose in every frame.
* ``reference``: pose changes, blinks and gaze of a reference coefficient sequence (e.g. fitted to
  a video), applied relative to its first frame so the head stays where the portrait has it;
  a shorter reference is played forwards and backwards (no jump at the loop).
* ``idle``: gentle seeded procedural motion — a few slow sinusoids per axis (0.05–0.4 Hz, a few
  degrees) and blinks every 2–6 s.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import TalkingFaceError
from ..morphable.coefficients import FaceCoefficients
from ..morphable.model import MorphableModel

HEAD_MOTIONS = ("hold", "reference", "idle")
BLINK_DIRECTIONS = ("blink_left", "blink_right")
# Peak amplitudes of the idle motion: pitch, yaw, roll (radians) and x, y translation (model units).
IDLE_ROTATION = (0.035, 0.06, 0.02)
IDLE_TRANSLATION = (0.02, 0.015)
BLINK_SECONDS = 0.25
BLINK_INTERVAL_SECONDS = (2.0, 6.0)


def _ping_pong(length: int, frames: int) -> torch.Tensor:
    if length == 1:
        return torch.zeros(frames, dtype=torch.long)
    period = 2 * (length - 1)
    phase = torch.arange(frames) % period
    return torch.where(phase < length, phase, period - phase)


def _blink_indices(model: MorphableModel) -> list[int]:
    return [model.expression_index(name) for name in BLINK_DIRECTIONS if name in model.expression_names]


def head_motion(
    model: MorphableModel,
    portrait: FaceCoefficients,
    frames: int,
    fps: float,
    mode: str = "hold",
    reference: FaceCoefficients | None = None,
    seed: int = 0,
    strength: float = 1.0,
) -> FaceCoefficients:
    """``frames`` rows of the portrait's first frame, with pose (and blinks, gaze) moved by ``mode``."""
    if mode not in HEAD_MOTIONS:
        raise TalkingFaceError(f"unknown head_motion '{mode}'; choose one of {HEAD_MOTIONS}")
    if frames < 1:
        raise TalkingFaceError("head_motion needs at least one frame: set frames to 1 or more")
    model.check_coefficients(portrait)
    base = portrait[0].to(torch.float32).repeat_to(frames)
    base = base.map(lambda value: value.clone())
    if mode == "hold":
        return base
    blinks = _blink_indices(model)
    if mode == "reference":
        if reference is None or reference.frames == 0:
            raise TalkingFaceError("head motion 'reference' needs reference coefficients (connect Load Coefficients)")
        model.check_coefficients(reference)
        reference = reference.to(torch.float32)
        index = _ping_pong(reference.frames, frames)
        base.rotation += strength * (reference.rotation[index] - reference.rotation[:1])
        base.translation += strength * (reference.translation[index] - reference.translation[:1])
        base.gaze = reference.gaze[index].clone()
        if blinks:
            base.expression[:, blinks] = reference.expression[index][:, blinks]
        return base
    if not fps > 0:
        raise TalkingFaceError(f"fps must be positive, got {fps}")
    rng = np.random.default_rng(seed)
    time = np.arange(frames) / fps

    def wander(amplitude: float) -> np.ndarray:
        # three incommensurate slow sinusoids, normalised so the peak stays near ``amplitude``
        frequencies = rng.uniform(0.05, 0.4, 3)
        phases = rng.uniform(0, 2 * math.pi, 3)
        weights = rng.uniform(0.5, 1.0, 3)
        signal = (weights[:, None] * np.sin(2 * math.pi * frequencies[:, None] * time + phases[:, None])).sum(0)
        return amplitude * strength * signal / weights.sum()

    base.rotation += torch.from_numpy(np.stack([wander(a) for a in IDLE_ROTATION], 1)).float()
    base.translation[:, :2] += torch.from_numpy(np.stack([wander(a) for a in IDLE_TRANSLATION], 1)).float()
    if blinks:
        closure = np.zeros(frames)
        blink_frames = max(BLINK_SECONDS * fps, 1.0)
        start = rng.uniform(0.5, BLINK_INTERVAL_SECONDS[1])
        while start * fps < frames:
            position = (np.arange(frames) - start * fps) / blink_frames
            closure = np.maximum(closure, np.where((position >= 0) & (position <= 1), np.sin(np.pi * position), 0.0))
            start += rng.uniform(*BLINK_INTERVAL_SECONDS)
        base.expression[:, blinks] = torch.maximum(
            base.expression[:, blinks], torch.from_numpy(closure).float().unsqueeze(1)
        )
    return base
