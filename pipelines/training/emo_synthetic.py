"""Synthetic emotional talking clips for Emo-A2E: the demo face speaking with one of the MEAD emotions.

The target expression of a frame is ``speaker's resting face + intensity · emotion offset + mouth
motion``. The emotion offsets are built here from the demo face model's named blendshapes (a
FACS-like reading of each emotion: brows, eyes, cheeks, lips); they are this module's own table,
independent of the zero-shot emotion directions of :mod:`pipelines.emotion`. The mouth motion and
the audio come from :mod:`.audio_synthetic`'s syllable generator and formant synthesiser, with an
emotion-dependent speaking style (how wide the jaw opens, how much the lips spread or round), so
the emotion changes how the mouth moves, not only the resting shape. Speakers differ in identity
(for landmark errors) and in their resting expression.

A text encoder satisfying :class:`pipelines.emotion.emotion.EmotionTextEncoder` turns the clips' prompts
into embeddings; :class:`HashedPromptEncoder` is a deterministic frozen random embedding per prompt
(what a text tower with no pretrained knowledge gives: distinct, unrelated vectors), enough to
check that the model learns to use its emotion condition.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..audio.io import SAMPLE_RATE
from ..emotion.emotion import MEAD_EMOTIONS
from ..morphable.model import MorphableModel
from .audio_synthetic import MOUTH_DIRECTIONS, formant_audio, syllable_track

# Blendshape weights of each emotion at full intensity (demo face model direction names).
EMOTION_BLENDSHAPES: dict[str, dict[str, float]] = {
    "neutral": {},
    "angry": {"brow_furrow": 0.9, "squint": 0.5, "lips_press": 0.5, "nose_wrinkle": 0.3, "frown": 0.3},
    "contempt": {"mouth_left": 0.6, "smile": 0.25, "squint": 0.3, "brow_raise": 0.15},
    "disgusted": {"nose_wrinkle": 0.9, "upper_lip_raise": 0.8, "brow_furrow": 0.4, "frown": 0.4, "squint": 0.3},
    "fear": {"brow_inner_raise": 0.9, "brow_raise": 0.5, "eye_wide": 0.8, "lip_stretch": 0.6},
    "happy": {"smile": 0.9, "squint": 0.35, "brow_raise": 0.1},
    "sad": {"brow_inner_raise": 0.8, "frown": 0.8, "lower_lip_depress": 0.3, "squint": 0.15},
    "surprised": {"brow_raise": 0.9, "eye_wide": 0.9, "jaw_open": 0.2, "lips_part": 0.4},
}
# How each emotion speaks: scale of jaw_open, lip_pucker and smile of the syllables.
SPEAKING_STYLE: dict[str, tuple[float, float, float]] = {
    "neutral": (1.0, 1.0, 1.0),
    "angry": (1.2, 0.6, 0.5),
    "contempt": (0.7, 0.8, 1.2),
    "disgusted": (0.8, 0.6, 0.6),
    "fear": (0.9, 0.5, 0.4),
    "happy": (1.0, 0.6, 1.6),
    "sad": (0.6, 1.0, 0.5),
    "surprised": (1.3, 1.3, 0.8),
}
# MEAD's three intensity levels (neutral has one) as the TALK_EMOTION intensity.
LEVEL_INTENSITY = {1: 0.4, 2: 0.7, 3: 1.0}
RESTING_DIRECTIONS = ("smile", "frown", "brow_raise", "brow_furrow", "squint", "lips_press")


def emotion_offset(model: MorphableModel, emotion: str) -> torch.Tensor:
    """``[E]``: the expression change of ``emotion`` at intensity 1 for ``model`` (the demo face)."""
    if emotion not in EMOTION_BLENDSHAPES:
        raise KeyError(f"unknown emotion '{emotion}'; choose one of {MEAD_EMOTIONS}")
    offset = torch.zeros(model.dims.expression)
    for name, weight in EMOTION_BLENDSHAPES[emotion].items():
        offset[model.expression_index(name)] = weight
    return offset


@dataclass
class EmotionClip:
    """One emotion-labelled clip: ``audio [N]`` at 16 kHz; ``expression [F, E]`` per video frame at
    ``fps``; the speaker's resting ``neutral [E]`` expression; the MEAD ``emotion`` and ``level``;
    ``speaker`` names who speaks (held-out splits are by speaker); ``identity`` (optional) lets
    evaluation compare landmarks."""

    audio: torch.Tensor
    expression: torch.Tensor
    neutral: torch.Tensor
    fps: float
    emotion: str
    level: int
    speaker: str
    identity: torch.Tensor | None = None

    @property
    def frames(self) -> int:
        return self.expression.shape[0]

    @property
    def intensity(self) -> float:
        return LEVEL_INTENSITY[self.level]


@dataclass(frozen=True)
class SyntheticSpeaker:
    name: str
    identity: torch.Tensor
    neutral: torch.Tensor


def synthetic_speaker(model: MorphableModel, seed: int) -> SyntheticSpeaker:
    """A random identity with a random resting expression (some people rest with a slight smile or frown)."""
    generator = torch.Generator().manual_seed(seed)
    identity = 0.8 * torch.randn(model.dims.identity, generator=generator)
    neutral = torch.zeros(model.dims.expression)
    for name in RESTING_DIRECTIONS:
        neutral[model.expression_index(name)] = 0.15 * torch.rand((), generator=generator)
    return SyntheticSpeaker(f"synthetic_{seed}", identity, neutral)


def synthetic_emotion_clip(
    model: MorphableModel,
    speaker: SyntheticSpeaker,
    emotion: str,
    level: int,
    seconds: float,
    seed: int,
    fps: float = 25.0,
) -> EmotionClip:
    """``speaker`` saying random syllables with ``emotion`` at MEAD ``level``; the same arguments give the same clip."""
    if level not in LEVEL_INTENSITY:
        raise KeyError(f"MEAD levels are {sorted(LEVEL_INTENSITY)}, got {level}")
    rng = np.random.default_rng(seed)
    fine = syllable_track(rng, seconds, SAMPLE_RATE) * np.asarray(SPEAKING_STYLE[emotion])
    fine = np.clip(fine, 0.0, 1.0)
    audio = formant_audio(rng, fine)
    frames = max(1, int(seconds * fps))
    frame_samples = np.minimum((np.arange(frames) / fps * SAMPLE_RATE).astype(int), fine.shape[0] - 1)
    intensity = LEVEL_INTENSITY[level]
    expression = (speaker.neutral + intensity * emotion_offset(model, emotion)).repeat(frames, 1)
    mouth = [model.expression_index(name) for name in MOUTH_DIRECTIONS]
    expression[:, mouth] += torch.from_numpy(fine[frame_samples]).float()
    return EmotionClip(torch.from_numpy(audio), expression, speaker.neutral.clone(), fps, emotion, level,
                       speaker.name, speaker.identity.clone())


def synthetic_emotion_clips(
    model: MorphableModel,
    speakers: int,
    clips_per_speaker: int,
    seconds: float,
    first_seed: int,
) -> list[EmotionClip]:
    """``clips_per_speaker`` clips for each of ``speakers`` speakers (seeds from ``first_seed``; use
    disjoint ranges for held-out speakers), cycling through the MEAD emotions and levels."""
    clips = []
    combinations = [("neutral", 1)] + [(emotion, level) for emotion in MEAD_EMOTIONS[1:] for level in (1, 2, 3)]
    for index in range(speakers):
        seed = first_seed + index
        speaker = synthetic_speaker(model, seed)
        rng = np.random.default_rng([seed, 7])
        for k in range(clips_per_speaker):
            # every speaker shows every emotion once before combinations repeat at random
            if k < len(MEAD_EMOTIONS):
                emotion = MEAD_EMOTIONS[k]
                level = 1 if emotion == "neutral" else int(rng.integers(1, 4))
            else:
                emotion, level = combinations[int(rng.integers(len(combinations)))]
            clips.append(synthetic_emotion_clip(model, speaker, emotion, level, seconds, seed=seed * 1000 + k))
    return clips


class HashedPromptEncoder:
    """A frozen random text embedding per prompt: unit vectors ``[N, dim]`` seeded by the prompt's
    SHA-256 (stable across runs and machines). Satisfies :class:`pipelines.emotion.emotion.EmotionTextEncoder`."""

    def __init__(self, dim: int = 64, seed: int = 0) -> None:
        self.dim = dim
        self.seed = seed
        self.name = f"hashed-prompts/dim{dim}/seed{seed}"

    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        rows = []
        for prompt in prompts:
            digest = hashlib.sha256(f"{self.seed}:{prompt}".encode()).digest()
            generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))
            rows.append(torch.randn(self.dim, generator=generator))
        embeddings = torch.stack(rows) if rows else torch.zeros(0, self.dim)
        return torch.nn.functional.normalize(embeddings, dim=-1)
