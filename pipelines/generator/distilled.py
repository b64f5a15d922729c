"""Few-step students of a TGDM generator (made by ``scripts/distill_tgdm.py``): what their checkpoint
records and which timesteps they run at.

A student has the teacher's architecture and config; it learnt to jump from a point of the teacher's
guided sampling path at a few fixed timesteps straight to where that path ends, so one plain pass
per step replaces the teacher's guided three, and 1 to ``student_steps`` steps replace its 25. The
sampler's ``distilled`` scheduler runs it: DDIM's deterministic update between the timesteps of
diffusers' "trailing" spacing (999; 999, 499; 999, 666, 332; 999, 749, 499, 249 for 1000 training
timesteps), which are the timesteps the student was trained at.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from ..errors import ModelFileError, TalkingFaceError

DISTILLED_SCHEDULER = "distilled"
METADATA_KEY = "distillation"


def trailing_timesteps(steps: int, num_train_timesteps: int) -> list[int]:
    """The timesteps diffusers' DDIM visits in ``steps`` steps with ``timestep_spacing="trailing"``."""
    stride = num_train_timesteps / steps
    return [round(num_train_timesteps - index * stride) - 1 for index in range(steps)]


def student_timesteps(student_steps: int, num_train_timesteps: int) -> list[int]:
    """Every timestep a student run in 1 to ``student_steps`` steps visits, highest first."""
    visited = {t for steps in range(1, student_steps + 1) for t in trailing_timesteps(steps, num_train_timesteps)}
    return sorted(visited, reverse=True)


@dataclass(frozen=True)
class Distillation:
    """What a student checkpoint records: it runs in 1 to ``student_steps`` steps with the teacher's
    guidance (``texture_guidance``, ``geometry_guidance``) built in; ``teacher`` names the teacher's
    file and ``teacher_steps`` the guided DDIM steps whose results it learnt."""

    student_steps: int
    texture_guidance: float
    geometry_guidance: float
    teacher_steps: int
    teacher: str = ""

    def __post_init__(self) -> None:
        if not 1 <= self.student_steps <= 8:
            raise TalkingFaceError(f"a student runs in 1 to 8 steps, got {self.student_steps}")
        uncovered = [steps for steps in range(1, self.student_steps + 1) if self.teacher_steps % steps]
        if self.teacher_steps < self.student_steps or uncovered:
            raise TalkingFaceError(
                f"the teacher's {self.teacher_steps} steps must pass through every timestep of a 1- to "
                f"{self.student_steps}-step run, so they must be a multiple of {uncovered or [self.student_steps]} "
                "(12 or 24 for students of up to 4 steps)"
            )

    def describe(self) -> str:
        return (f"a 1-{self.student_steps} step student with guidance texture {self.texture_guidance:g}, "
                f"geometry {self.geometry_guidance:g} built in")

    def to_metadata(self) -> dict[str, str]:
        return {METADATA_KEY: json.dumps(dataclasses.asdict(self), sort_keys=True)}

    @classmethod
    def from_metadata(cls, metadata: dict[str, str], file_name: str) -> Distillation | None:
        """The record in a checkpoint's metadata, or None for a generator that is no student."""
        if METADATA_KEY not in metadata:
            return None
        try:
            return cls(**json.loads(metadata[METADATA_KEY]))
        except (TypeError, ValueError) as error:
            raise ModelFileError(f"{file_name} has an unusable '{METADATA_KEY}' record in its metadata: {error}") from error
