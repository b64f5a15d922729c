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

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..checkpoints import read_checkpoint_metadata, read_checkpoint_weights, save_checkpoint
from ..errors import ModelFileError, TalkingFaceError

FILE_FORMAT = "talkingface.audio_landmarks"
FILE_VERSION = "1"
# iBUG-68: jaw 0–16, brows 17–26, nose 27–35, eyes 36–47, lips 48–67.
JAW_POINTS = tuple(range(0, 17))
LIP_POINTS = tuple(range(48, 68))
MOUTH_POINTS = JAW_POINTS + LIP_POINTS
POSE_POINTS = tuple(range(17, 48))
NUM_POINTS = 68


@dataclass(frozen=True)
class LandmarkModelConfig:
    reference_sets: int = 8
    target_frames: int = 16
    mel_bins: int = 80
    mel_window: int = 16
    width: int = 128
    heads: int = 4
    layers: int = 3
    feedforward: int = 512
    dropout: float = 0.1
    # Audio CNN channels, each stage halving the time axis; point CNN channels.
    audio_channels: tuple[int, ...] = (128, 128)
    point_channels: int = 32

    def __post_init__(self) -> None:
        problems = []
        for name in ("reference_sets", "target_frames", "mel_bins", "mel_window", "width", "heads", "layers", "feedforward",
                     "point_channels"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1")
        if self.width % self.heads:
            problems.append(f"width {self.width} must be divisible by heads {self.heads}")
        if not 0 <= self.dropout < 1:
            problems.append("dropout must be in [0, 1)")
        if not self.audio_channels:
            problems.append("audio_channels must name at least one stage")
        if problems:
            raise TalkingFaceError("invalid landmark model config: " + "; ".join(problems))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> LandmarkModelConfig:
        values = json.loads(text)
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ModelFileError(f"unknown landmark model settings {sorted(unknown)}")
        if "audio_channels" in values:
            values["audio_channels"] = tuple(values["audio_channels"])
        return cls(**values)


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


class MelWindowEncoder(nn.Module):
    """A mel window ``[..., bins, frames]`` → one token: strided convolutions along time whose kernels
    span every mel bin (a 2D CNN with full-height kernels; on CPU this runs as a few dense GEMMs,
    which is what makes hundreds of times real time possible), then a linear read-out."""

    def __init__(self, config: LandmarkModelConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels, frames = config.mel_bins, config.mel_window
        for out_channels in config.audio_channels:
            layers += [nn.Conv1d(channels, out_channels, 3, stride=2, padding=1), nn.GELU()]
            channels, frames = out_channels, (frames + 1) // 2
        self.convs = nn.Sequential(*layers)
        self.project = nn.Linear(channels * frames, config.width)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        leading = windows.shape[:-2]
        features = self.convs(windows.reshape(-1, *windows.shape[-2:]))
        return self.project(features.flatten(1)).reshape(*leading, -1)


class LandmarkCompletionTransformer(nn.Module):
    def __init__(self, config: LandmarkModelConfig) -> None:
        super().__init__()
        self.config = config
        width = config.width
        self.reference_encoder = PointSetEncoder(NUM_POINTS, config.point_channels, width)
        self.audio_encoder = MelWindowEncoder(config)
        self.pose_encoder = PointSetEncoder(len(POSE_POINTS), config.point_channels, width)
        # token kinds (reference, audio, pose) and the frame position of audio and pose tokens
        self.kind_embedding = nn.Parameter(torch.zeros(3, width))
        self.frame_embedding = nn.Parameter(torch.zeros(config.target_frames, width))
        nn.init.normal_(self.kind_embedding, std=0.02)
        nn.init.normal_(self.frame_embedding, std=0.02)
        layer = nn.TransformerEncoderLayer(
            width, config.heads, config.feedforward, config.dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.lip_head = nn.Linear(width, 2 * len(LIP_POINTS))
        self.jaw_head = nn.Linear(width, 2 * len(JAW_POINTS))
        # Start at the reference mouth: an untrained model predicts no motion rather than noise.
        for head in (self.lip_head, self.jaw_head):
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def forward(self, references: torch.Tensor, mel_windows: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        """``references [B or 1, N, 68, 2]``, ``mel_windows [B, T, bins, window]``, ``pose [B, T, 31, 2]``
        (normalised crop frame) → lip and jaw points ``[B, T, 37, 2]`` in :data:`MOUTH_POINTS` order.
        One reference batch row is shared by every window (encoded once)."""
        config = self.config
        batch, frames = mel_windows.shape[:2]
        _check_shapes({
            "mel_windows": (mel_windows, (batch, frames, config.mel_bins, config.mel_window)),
            "pose": (pose, (batch, frames, len(POSE_POINTS), 2)),
        })
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
        _check_shapes({
            "references": (references, (references.shape[0] if references.shape[0] == 1 else batch,
                                        config.reference_sets, NUM_POINTS, 2)),
            "audio_tokens": (audio_tokens, (batch, frames, config.width)),
            "pose_tokens": (pose_tokens, (batch, frames, config.width)),
        })
        if not 1 <= frames <= config.target_frames:
            raise TalkingFaceError(f"the landmark model takes 1 to {config.target_frames} frames at once, got {frames}")
        positions = self.frame_embedding[:frames]
        tokens = torch.cat(
            [
                (self.reference_encoder(references) + self.kind_embedding[0]).expand(batch, -1, -1),
                audio_tokens + self.kind_embedding[1] + positions,
                pose_tokens + self.kind_embedding[2] + positions,
            ],
            dim=1,
        )
        hidden = self.norm(self.encoder(tokens))
        audio_hidden = hidden[:, config.reference_sets: config.reference_sets + frames]
        pose_hidden = hidden[:, config.reference_sets + frames:]
        mean_reference = references.mean(1, keepdim=True)  # [B, 1, 68, 2]
        jaw = mean_reference[:, :, list(JAW_POINTS)] + self.jaw_head(pose_hidden).view(batch, frames, -1, 2)
        lips = mean_reference[:, :, list(LIP_POINTS)] + self.lip_head(audio_hidden).view(batch, frames, -1, 2)
        return torch.cat([jaw, lips], dim=2)


def _check_shapes(expected: dict[str, tuple[torch.Tensor, tuple[int, ...]]]) -> None:
    for name, (tensor, shape) in expected.items():
        if tuple(tensor.shape) != shape:
            raise TalkingFaceError(f"landmark model input '{name}' must be {shape}, got {tuple(tensor.shape)}")


def save_landmark_model(model: LandmarkCompletionTransformer, path: str | Path, extra_metadata: dict[str, str] | None = None) -> None:
    """One .safetensors file: the weights plus the config as JSON in the metadata."""
    metadata = {"format": FILE_FORMAT, "version": FILE_VERSION, "config": model.config.to_json()}
    metadata.update(extra_metadata or {})
    save_checkpoint(model, path, metadata, dtype=torch.float32)


def load_landmark_model(path: str | Path) -> LandmarkCompletionTransformer:
    """Strict loader: the file must say it is an audio-to-landmark checkpoint, and every weight must
    be present with the shape its config implies."""
    path = Path(path)
    metadata = read_checkpoint_metadata(path, "audio-to-motion checkpoint")
    if metadata.get("format") != FILE_FORMAT:
        found = metadata.get("format", "no format tag")
        raise ModelFileError(
            f"{path.name} is not an audio-to-motion (landmark) checkpoint (its metadata says '{found}', "
            f"expected '{FILE_FORMAT}'); pick a checkpoint written by scripts/train_audio_landmarks.py"
        )
    if "config" not in metadata:
        raise ModelFileError(f"{path.name} has no config in its metadata")
    try:
        config = LandmarkModelConfig.from_json(metadata["config"])
    except (ValueError, TypeError) as error:
        raise ModelFileError(f"{path.name} has an invalid config: {error}") from error
    model = LandmarkCompletionTransformer(config)
    expected = model.state_dict()
    tensors = read_checkpoint_weights(path)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = sorted(key for key in set(expected) & set(tensors) if tensors[key].shape != expected[key].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{' …' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}{' …' if len(unexpected) > 5 else ''}")
        if wrong:
            parts.append(f"wrong shape {wrong[:5]}")
        raise ModelFileError(f"{path.name} does not match its config: " + "; ".join(parts))
    model.load_state_dict(tensors, strict=True)
    return model.eval()
