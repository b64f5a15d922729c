"""What travels on a TALK_EMOTION socket: a text emotion in CLIP space, with its strength."""
from __future__ import annotations

from dataclasses import dataclass

import torch

# The eight emotions of MEAD, the order of every per-emotion table in the pack.
MEAD_EMOTIONS = ("neutral", "angry", "contempt", "disgusted", "fear", "happy", "sad", "surprised")


@dataclass(frozen=True)
class TextEmotion:
    """An emotion prompt (or a blend of two) encoded by one CLIP text encoder.

    ``embedding`` is the unit-norm pooled text embedding ``[D]``; models trained on one encoder's
    space check ``encoder`` before using it. ``anchor_weights`` ``[len(MEAD_EMOTIONS)]`` sum to 1:
    the zero-shot similarity of the prompt to the emotion anchor prompts, which needs no trained
    model. ``intensity`` scales the expression change (0: neutral, 1: as prompted, above 1: stronger).
    """

    embedding: torch.Tensor
    anchor_weights: torch.Tensor
    intensity: float
    prompt: str
    encoder: str

    @property
    def dominant_emotion(self) -> str:
        return MEAD_EMOTIONS[int(self.anchor_weights.argmax())]
