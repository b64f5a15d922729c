"""The landmark completion transformer of IP_LAP / paper 2: audio → lip and jaw landmarks.

Tokens (one sequence per window of ``target_frames`` video frames):

* ``reference_sets`` reference landmark sets of the speaker (all 68 points) — who is talking and
  how their mouth is shaped — each through a 1D CNN over the points;
* one audio token per target frame: its mel window ``[80, 16]`` through a 2D CNN;
* one pose token per target frame: the upper-face (pose) landmarks through a 1D CNN.

A transformer encoder mixes them; as in the IP_LAP figure, the lip points of frame t are read off
audio token t and the jaw points off pose token t. They are predicted as offsets from the mean
reference lip and jaw, all in the normalised crop frame of :mod:`.landmarks`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .window_transformer import (
    MelWindowEncoder,
    WindowTransformer,
    WindowTransformerConfig,
    load_window_transformer,
    save_window_transformer,
)

FILE_FORMAT = "talkingface.audio_landmarks"
# iBUG-68: jaw 0–16, brows 17–26, nose 27–35, eyes 36–47, lips 48–67.
JAW_POINTS = tuple(range(0, 17))
LIP_POINTS = tuple(range(48, 68))
MOUTH_POINTS = JAW_POINTS + LIP_POINTS
POSE_POINTS = tuple(range(17, 48))
NUM_POINTS = 68


@dataclass(frozen=True)
class LandmarkModelConfig(WindowTransformerConfig):
    DESCRIPTION = "landmark model"
    POSITIVE_FIELDS = ("reference_sets", "target_frames", "point_channels")

    reference_sets: int = 8
    target_frames: int = 16
    # Channels of the point-set encoders.
    point_channels: int = 32


class PointSetEncoder(nn.Module):
    """A set of 2D points in a fixed order ``[..., P, 2]`` → one token. IP_LAP uses a 1D CNN along the
    points; at 31–68 points a two-layer MLP over all coordinates sees the same neighbourhoods and
    more, and on CPU it runs as two dense GEMMs where the 2-channel convolutions were the slowest
    part of the model."""

    def __init__(self, points: int, channels: int, width: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(2 * points, channels * 8), nn.GELU(), nn.Linear(channels * 8, width))

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        return self.layers(points.flatten(-2))


class LandmarkCompletionTransformer(WindowTransformer):
    NAME = "the landmark model"

    def __init__(self, config: LandmarkModelConfig) -> None:
        super().__init__()
        self.config = config
        width = config.width
        self.reference_encoder = PointSetEncoder(NUM_POINTS, config.point_channels, width)
        self.audio_encoder = MelWindowEncoder(config)
        self.pose_encoder = PointSetEncoder(len(POSE_POINTS), config.point_channels, width)
        self.build_mixer(config, kinds=3)  # reference, audio and pose tokens
        self.lip_head = nn.Linear(width, 2 * len(LIP_POINTS))
        self.jaw_head = nn.Linear(width, 2 * len(JAW_POINTS))
        self.start_at_zero(self.lip_head, self.jaw_head)  # at the reference mouth

    def forward(self, references: torch.Tensor, mel_windows: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        """``references [B or 1, N, 68, 2]``, ``mel_windows [B, T, bins, window]``, ``pose [B, T, 31, 2]``
        (normalised crop frame) → lip and jaw points ``[B, T, 37, 2]`` in :data:`MOUTH_POINTS` order.
        One reference batch row is shared by every window (encoded once)."""
        config = self.config
        batch, frames = mel_windows.shape[:2]
        self.check_inputs({
            "mel_windows": (mel_windows, (batch, frames, config.mel_bins, config.mel_window)),
            "pose": (pose, (batch, frames, len(POSE_POINTS), 2)),
        }, frames)
        return self.complete(references, *self.frame_tokens(mel_windows, pose))

    def frame_tokens(self, mel_windows: torch.Tensor, pose: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Audio and pose tokens ``[..., width]`` of single frames from their mel windows ``[..., bins,
        window]`` and pose points ``[..., 31, 2]``. Each depends on its frame alone, so overlapping
        windows can encode every frame once and share the tokens (:meth:`complete`)."""
        return self.audio_encoder(mel_windows), self.pose_encoder(pose)

    def complete(self, references: torch.Tensor, audio_tokens: torch.Tensor, pose_tokens: torch.Tensor) -> torch.Tensor:
        """The transformer and read-out: ``references [B or 1, N, 68, 2]`` and a window's frame tokens
        ``[B, T, width]`` (from :meth:`frame_tokens`) → lip and jaw points ``[B, T, 37, 2]``."""
        config = self.config
        batch, frames = audio_tokens.shape[:2]
        self.check_inputs({
            "references": (references, (references.shape[0] if references.shape[0] == 1 else batch,
                                        config.reference_sets, NUM_POINTS, 2)),
            "audio_tokens": (audio_tokens, (batch, frames, config.width)),
            "pose_tokens": (pose_tokens, (batch, frames, config.width)),
        }, frames)
        positions = self.frame_embedding[:frames]
        tokens = torch.cat(
            [
                (self.reference_encoder(references) + self.kind_embedding[0]).expand(batch, -1, -1),
                audio_tokens + self.kind_embedding[1] + positions,
                pose_tokens + self.kind_embedding[2] + positions,
            ],
            dim=1,
        )
        hidden = self.mix(tokens)
        audio_hidden = hidden[:, config.reference_sets: config.reference_sets + frames]
        pose_hidden = hidden[:, config.reference_sets + frames:]
        mean_reference = references.mean(1, keepdim=True)  # [B, 1, 68, 2]
        jaw = mean_reference[:, :, list(JAW_POINTS)] + self.jaw_head(pose_hidden).view(batch, frames, -1, 2)
        lips = mean_reference[:, :, list(LIP_POINTS)] + self.lip_head(audio_hidden).view(batch, frames, -1, 2)
        return torch.cat([jaw, lips], dim=2)


def save_landmark_model(model: LandmarkCompletionTransformer, path: str | Path, extra_metadata: dict[str, str] | None = None) -> None:
    """One .safetensors file: the weights plus the config as JSON in the metadata."""
    save_window_transformer(model, path, FILE_FORMAT, extra_metadata)


def load_landmark_model(path: str | Path) -> LandmarkCompletionTransformer:
    """Strict loader: the file must say it is an audio-to-landmark checkpoint, and every weight must
    be present with the shape its config implies."""
    return load_window_transformer(path, FILE_FORMAT, "audio-to-motion (landmark)", LandmarkCompletionTransformer,
                                   LandmarkModelConfig, "scripts/train_audio_landmarks.py")
