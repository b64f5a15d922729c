"""What the audio chain's two window transformers share (the landmark completion transformer of
:mod:`.landmark_model` and Emo-A2E of :mod:`.emo_a2e`): config checks and their JSON round trip,
the mel window encoder, the token mixer (token-kind and frame-position embeddings, a pre-norm
transformer encoder), and the one-file checkpoint with its strict loader.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoints import (
    CheckpointConfig,
    WeightMismatch,
    read_checkpoint_metadata,
    read_checkpoint_weights,
    save_checkpoint,
)
from ..errors import ModelFileError, TalkingFaceError


@dataclass(frozen=True)
class WindowTransformerConfig(CheckpointConfig):
    """The settings both models have, and the checks of a config: each of ``POSITIVE_FIELDS`` at
    least 1, ``width`` divisible by ``heads``, ``dropout`` in [0, 1), at least one stage of
    ``audio_channels``, plus a config's own :meth:`own_problems`; ``DESCRIPTION`` names the model
    in messages. Subclasses add their own settings, ``target_frames`` among them."""

    DESCRIPTION = "window transformer"
    POSITIVE_FIELDS = ("mel_bins", "mel_window", "width", "heads", "layers", "feedforward")

    mel_bins: int = 80
    mel_window: int = 16
    width: int = 128
    heads: int = 4
    layers: int = 3
    feedforward: int = 512
    dropout: float = 0.1
    # Mel encoder channels, each stage halving the time axis.
    audio_channels: tuple[int, ...] = (128, 128)

    def own_problems(self) -> list[str]:
        return []

    def __post_init__(self) -> None:
        positive = (*self.POSITIVE_FIELDS, *WindowTransformerConfig.POSITIVE_FIELDS)
        problems = [f"{name} must be at least 1" for name in positive if getattr(self, name) < 1]
        problems += self.own_problems()
        if self.width % self.heads:
            problems.append(f"width {self.width} must be divisible by heads {self.heads}")
        if not 0 <= self.dropout < 1:
            problems.append("dropout must be in [0, 1)")
        if not self.audio_channels:
            problems.append("audio_channels must name at least one stage")
        if problems:
            raise TalkingFaceError(f"invalid {self.DESCRIPTION} config (checkpoint or training options): " + "; ".join(problems))


class MelWindowEncoder(nn.Module):
    """A mel window ``[..., bins, frames]`` → one token: strided convolutions along time whose kernels
    span every mel bin (a 2D CNN with full-height kernels; on CPU this runs as a few dense GEMMs,
    which is what makes hundreds of times real time possible), then a linear read-out."""

    def __init__(self, config: WindowTransformerConfig) -> None:
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


class WindowTransformer(nn.Module):
    """Base of the two models: ``NAME`` names the model in messages; :meth:`build_mixer` adds the
    token-kind and frame-position embeddings, the encoder and its final norm; :meth:`mix` runs them."""

    NAME = "the window transformer"

    def build_mixer(self, config: WindowTransformerConfig, kinds: int) -> None:
        width = config.width
        self.kind_embedding = nn.Parameter(torch.zeros(kinds, width))
        self.frame_embedding = nn.Parameter(torch.zeros(config.target_frames, width))
        nn.init.normal_(self.kind_embedding, std=0.02)
        nn.init.normal_(self.frame_embedding, std=0.02)
        layer = nn.TransformerEncoderLayer(
            width, config.heads, config.feedforward, config.dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)

    @staticmethod
    def start_at_zero(*heads: nn.Linear) -> None:
        """Read-out heads of offsets start at zero: an untrained model predicts no motion rather than noise."""
        for head in heads:
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def mix(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.norm(self.encoder(tokens))

    def check_inputs(self, expected: dict[str, tuple[torch.Tensor, tuple[int, ...]]], frames: int) -> None:
        """Each named input must have its expected shape; ``frames`` must fit the frame embedding."""
        for name, (tensor, shape) in expected.items():
            if tuple(tensor.shape) != shape:
                raise TalkingFaceError(f"{self.NAME} input '{name}' must be {shape}, got {tuple(tensor.shape)}")
        if not 1 <= frames <= self.config.target_frames:
            raise TalkingFaceError(f"{self.NAME} takes 1 to {self.config.target_frames} frames at once, got {frames}")


def save_window_transformer(
    model: WindowTransformer, path: str | Path, file_format: str, extra_metadata: dict[str, str] | None = None
) -> None:
    """One .safetensors file: the weights plus the format tag and the config as JSON in the metadata."""
    metadata = {"format": file_format, "version": "1", "config": model.config.to_json()}
    metadata.update(extra_metadata or {})
    save_checkpoint(model, path, metadata, dtype=torch.float32)


def _listed(keys: list[str]) -> str:
    return f"{keys[:5]}{' …' if len(keys) > 5 else ''}"


def load_window_transformer(
    path: str | Path, file_format: str, description: str, model_class: type[WindowTransformer],
    config_class: type[WindowTransformerConfig], written_by: str,
) -> Any:
    """Strict loader: the file must carry ``file_format``, and every weight must be present with the
    shape its config implies; ``description`` names the kind of checkpoint, ``written_by`` the
    script that trains it."""
    path = Path(path)
    metadata = read_checkpoint_metadata(path, f"{description} checkpoint")
    if metadata.get("format") != file_format:
        found = metadata.get("format", "no format tag")
        raise ModelFileError(
            f"{path.name} is not an {description} checkpoint (its metadata says '{found}', expected '{file_format}'); "
            f"pick a checkpoint written by {written_by}"
        )
    model = model_class(config_class.from_metadata(metadata, path.name))
    expected = model.state_dict()
    tensors = read_checkpoint_weights(path)
    mismatch = WeightMismatch.between(expected, tensors)
    if mismatch:
        raise ModelFileError(
            f"{path.name} is not an {description} checkpoint matching its config: expected keys "
            f"{_listed(sorted(expected))}; " + "; ".join(mismatch.labelled(_listed))
        )
    model.load_state_dict(tensors, strict=True)
    return model.eval()
