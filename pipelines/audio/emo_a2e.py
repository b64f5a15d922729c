"""Emo-A2E (paper 1's emotion-aware audio-to-expression): speech and a text emotion → 3DMM expression.

Tokens (one sequence per window of at most ``target_frames`` video frames):

* a neutral token: the speaker's resting expression (who is talking, with which resting face);
* an emotion token: the CLIP text embedding of the emotion prompt through a Linear, plus its
  intensity through another;
* one audio token per frame: its mel window (the Audio issue's log-mel, any fps) through the same
  strided mel encoder as the landmark model, plus the frame's position in the window.

A transformer encoder mixes them. Each frame's expression is read off its audio token as
``neutral + speech(token) + intensity · emotion(token)``: the emotion part is scaled by the
intensity outside the network, so intensity 0 is emotionally neutral speech and values above 1
exaggerate, whatever the training data's intensity levels were; both parts see the audio, so the
emotion may change how the mouth moves (tight angry lips, a smile that widens on vowels).

Without audio the model reads silence (the log-mel floor): an emotion-only face, held still or
gently animated by a seeded slow variation of the emotion's strength.

A model is tied to the text encoder it was trained with (CLIP spaces of different models are
unrelated): the config records its embedding size and the encoder's name, and a TALK_EMOTION from
another encoder is refused with both names.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..emotion.emotion import TextEmotion
from ..errors import TalkingFaceError
from ..morphable.coefficients import FaceCoefficients
from ..morphable.model import MorphableModel
from .features import LogMel, MelConfig, mel_range_for_frames, mel_windows
from .io import Audio, check_speech
from .landmarks import WindowPlan, blend_windows
from .motion import BLINK_DIRECTIONS
from .window_transformer import (
    MelWindowEncoder,
    WindowTransformer,
    WindowTransformerConfig,
    load_window_transformer,
    save_window_transformer,
)

FILE_FORMAT = "talkingface.emo_a2e"
NO_AUDIO_MOTIONS = ("held", "animated")
# Emotion-only animation: the emotion's strength wanders by up to this fraction, at 0.05–0.3 Hz.
ANIMATION_DEPTH = 0.2
ANIMATION_FREQUENCIES_HZ = (0.05, 0.3)


@dataclass(frozen=True)
class EmoA2EConfig(WindowTransformerConfig):
    DESCRIPTION = "Emo-A2E"
    POSITIVE_FIELDS = ("expression_dim", "emotion_dim", "target_frames")

    expression_dim: int = 64
    emotion_dim: int = 512
    # The text encoder whose embeddings the model was trained on, as TALK_EMOTION names it
    # (pipelines.emotion.emotion.emotion_encoder_id: its name and embedding size).
    encoder: str = ""
    target_frames: int = 32

    def own_problems(self) -> list[str]:
        return [] if self.encoder else ["encoder must name the text encoder the embeddings come from"]


class EmoA2ETransformer(WindowTransformer):
    NAME = "Emo-A2E"

    def __init__(self, config: EmoA2EConfig) -> None:
        super().__init__()
        self.config = config
        width = config.width
        self.audio_encoder = MelWindowEncoder(config)
        self.neutral_encoder = nn.Sequential(nn.Linear(config.expression_dim, width), nn.GELU(), nn.Linear(width, width))
        self.emotion_projection = nn.Linear(config.emotion_dim, width)
        self.intensity_projection = nn.Linear(1, width)
        self.build_mixer(config, kinds=3)  # neutral, emotion and audio tokens
        self.speech_head = nn.Linear(width, config.expression_dim)
        self.emotion_head = nn.Linear(width, config.expression_dim)
        self.start_at_zero(self.speech_head, self.emotion_head)  # at the speaker's resting face

    def forward(
        self, neutral: torch.Tensor, embedding: torch.Tensor, intensity: torch.Tensor, mel_windows: torch.Tensor
    ) -> torch.Tensor:
        """``neutral [B or 1, E]``, ``embedding [B or 1, D]``, ``intensity [B or 1]``,
        ``mel_windows [B, T, bins, window]`` → expression ``[B, T, E]``."""
        config = self.config
        batch, frames = mel_windows.shape[:2]
        rows = neutral.shape[0] if neutral.shape[0] == 1 else batch
        self.check_inputs({
            "neutral": (neutral, (rows, config.expression_dim)),
            "embedding": (embedding, (embedding.shape[0] if embedding.shape[0] == 1 else batch, config.emotion_dim)),
            "intensity": (intensity, (intensity.shape[0] if intensity.shape[0] == 1 else batch,)),
            "mel_windows": (mel_windows, (batch, frames, config.mel_bins, config.mel_window)),
        }, frames)
        neutral_token = self.neutral_encoder(neutral) + self.kind_embedding[0]
        emotion_token = self.emotion_projection(embedding) + self.intensity_projection(intensity.unsqueeze(-1))
        emotion_token = emotion_token + self.kind_embedding[1]
        tokens = torch.cat(
            [
                neutral_token.unsqueeze(1).expand(batch, -1, -1),
                emotion_token.unsqueeze(1).expand(batch, -1, -1),
                self.audio_encoder(mel_windows) + self.kind_embedding[2] + self.frame_embedding[:frames],
            ],
            dim=1,
        )
        frame_tokens = self.mix(tokens)[:, 2:]
        emotion = intensity.view(-1, 1, 1) * self.emotion_head(frame_tokens)
        return neutral.unsqueeze(1) + self.speech_head(frame_tokens) + emotion


# ---- checkpoints ---------------------------------------------------------------------------
def save_emo_a2e(model: EmoA2ETransformer, path: str | Path, extra_metadata: dict[str, str] | None = None) -> None:
    """One .safetensors file: the weights plus the config (with the text encoder's name) as JSON."""
    save_window_transformer(model, path, FILE_FORMAT, extra_metadata)


def load_emo_a2e(path: str | Path) -> EmoA2ETransformer:
    """Strict loader: the file must say it is an Emo-A2E checkpoint, and every weight must be present
    with the shape its config implies."""
    return load_window_transformer(path, FILE_FORMAT, "Emo-A2E", EmoA2ETransformer, EmoA2EConfig,
                                   "scripts/train_emo_a2e.py")


# ---- prediction ----------------------------------------------------------------------------
def check_emotion(config: EmoA2EConfig, emotion: TextEmotion) -> None:
    """The emotion must come from the text encoder the model was trained with."""
    if emotion.encoder != config.encoder:
        raise TalkingFaceError(
            f"the emotion was encoded by '{emotion.encoder}' but this Emo-A2E model was trained on '{config.encoder}' "
            "embeddings; load that text encoder in the emotion chain, or an Emo-A2E model trained on yours"
        )
    size = emotion.embedding.shape[-1] if emotion.embedding.ndim else 0
    if emotion.embedding.ndim != 1 or size != config.emotion_dim:
        raise TalkingFaceError(
            f"the emotion embedding has shape {tuple(emotion.embedding.shape)} but this Emo-A2E model takes "
            f"[{config.emotion_dim}] embeddings from '{config.encoder}'"
        )
    if not torch.isfinite(emotion.embedding).all() or not math.isfinite(emotion.intensity):
        raise TalkingFaceError("the emotion embedding or intensity is not finite")


def check_expression_dim(config: EmoA2EConfig, expression_dim: int, what: str = "the face model") -> None:
    if expression_dim != config.expression_dim:
        raise TalkingFaceError(
            f"this Emo-A2E model predicts {config.expression_dim} expression coefficients but {what} has "
            f"{expression_dim}: use an Emo-A2E model trained for that face model"
        )


def _condition(model: EmoA2ETransformer, emotion: TextEmotion, neutral: torch.Tensor) -> tuple[torch.Tensor, ...]:
    config = model.config
    check_emotion(config, emotion)
    neutral = neutral.reshape(-1)
    check_expression_dim(config, neutral.shape[0], "the speaker's neutral expression")
    device = next(model.parameters()).device
    return (
        neutral.to(device, torch.float32).unsqueeze(0),
        emotion.embedding.to(device, torch.float32).unsqueeze(0),
        torch.tensor([float(emotion.intensity)], device=device),
    )


@torch.no_grad()
def predict_expression(
    model: EmoA2ETransformer,
    audio: Audio,
    fps: float,
    frames: int,
    emotion: TextEmotion,
    neutral: torch.Tensor,
    overlap: int | None = None,
    windows_per_batch: int = 64,
    log_mel: LogMel | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Expression ``[frames, E]`` for ``frames`` video frames at ``fps`` driven by 16 kHz ``audio``
    with ``emotion``; ``neutral [E]`` is the speaker's resting expression. Long audio runs in
    overlapping windows of ``target_frames`` (``overlap`` frames shared; default a quarter)."""
    config = model.config
    check_speech(audio, fps, "Emo-A2E")
    condition = _condition(model, emotion, neutral)
    device = condition[0].device
    log_mel = (log_mel or LogMel()).to(device)
    plan = WindowPlan(frames, config.target_frames, config.target_frames // 4 if overlap is None else overlap)
    samples = audio.samples.to(device, torch.float32)

    def predict(frame_index: torch.Tensor) -> torch.Tensor:
        first_mel, last_mel = mel_range_for_frames(int(frame_index[0, 0]), int(frame_index[-1, -1]) + 1, fps,
                                                   log_mel.config)
        mel = log_mel.frames(samples, first_mel, last_mel).unsqueeze(0)
        windows = mel_windows(mel, first_mel, frame_index.flatten(), fps, log_mel.config)[0]
        return model(*condition, windows.view(*frame_index.shape, *windows.shape[1:]))

    return blend_windows(plan, windows_per_batch, predict, device, on_batch)


@torch.no_grad()
def emotion_only_expression(
    model: EmoA2ETransformer,
    frames: int,
    fps: float,
    emotion: TextEmotion,
    neutral: torch.Tensor,
    motion: str = "held",
    seed: int = 0,
) -> torch.Tensor:
    """Expression ``[frames, E]`` with no speech: the model's face for ``emotion`` over silence,
    ``held`` still or ``animated`` (its strength wandering slowly, seeded)."""
    if motion not in NO_AUDIO_MOTIONS:
        raise TalkingFaceError(f"unknown no-audio motion '{motion}'; choose one of {NO_AUDIO_MOTIONS}")
    if frames < 1:
        raise TalkingFaceError("an emotion-only sequence needs at least one frame")
    if not fps > 0:
        raise TalkingFaceError(f"fps must be positive, got {fps}")
    config = model.config
    condition = _condition(model, emotion, neutral)
    silence = torch.full((1, config.target_frames, config.mel_bins, config.mel_window), MelConfig().silence_value,
                         device=condition[0].device)
    held = model(*condition, silence)[0].mean(0)
    resting = condition[0][0]
    if motion == "held":
        return held.expand(frames, -1).clone()
    rng = np.random.default_rng(seed)
    time = np.arange(frames) / fps
    frequencies = rng.uniform(*ANIMATION_FREQUENCIES_HZ, 3)
    phases = rng.uniform(0, 2 * math.pi, 3)
    amplitudes = rng.uniform(0.5, 1.0, 3)
    wander = (amplitudes[:, None] * np.sin(2 * math.pi * frequencies[:, None] * time + phases[:, None])).sum(0)
    strength = 1.0 + ANIMATION_DEPTH * torch.from_numpy(wander / amplitudes.sum()).float().to(held.device)
    return resting + strength.unsqueeze(1) * (held - resting)


def with_expression(face_model: MorphableModel, base: FaceCoefficients, expression: torch.Tensor) -> FaceCoefficients:
    """``base`` (head motion: pose, gaze, blinks) with ``expression [F, E]``; blinks of the head motion
    stay, closing the eyes further than the expression does."""
    expression = expression.to(base.expression.device, base.expression.dtype)
    blinks = [face_model.expression_index(name) for name in BLINK_DIRECTIONS if name in face_model.expression_names]
    if blinks:
        expression = expression.clone()
        expression[:, blinks] = torch.maximum(expression[:, blinks], base.expression[:, blinks])
    return base.replace(expression=expression)
