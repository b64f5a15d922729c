"""Training of the landmark completion transformer on clips of per-frame landmarks plus 16 kHz audio.

Clips are stored one per ``.safetensors`` file (``audio [N]``, ``landmarks [F, 68, 2]`` in pixels,
fps in the metadata): :func:`save_clip` writes them, from a preprocessing step or from
:mod:`.audio_synthetic`. Training samples windows of ``target_frames`` frames with reference sets
drawn from other frames of the same clip (as IP_LAP does), and minimises L1 on the lip and jaw
points plus L1 on their frame-to-frame velocity, in the normalised crop frame. Training runs in :func:`.loop.train_windows` (HF accelerate,
resumable from ``checkpoint_dir/training_state``).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from ..audio.features import LogMel, mel_windows, padded_log_mel
from ..audio.io import SAMPLE_RATE
from ..audio.landmark_model import (
    MOUTH_POINTS,
    POSE_POINTS,
    LandmarkCompletionTransformer,
    LandmarkModelConfig,
    save_landmark_model,
)
from ..audio.landmarks import eye_frames, to_normalised
from ..errors import TalkingFaceError
from .audio_synthetic import TalkingClip
from .clip_files import read_clip_file, write_clip_file
from .loop import TrainConfig, WindowTask, train_windows, validation_l1, velocity_l1

CLIP_FORMAT = "talkingface.audio_clip"
STATE_FORMAT = "talkingface.audio-landmarks-training-state"


def save_clip(clip: TalkingClip, path: str | Path) -> None:
    write_clip_file(path, CLIP_FORMAT, clip.fps, {"audio": clip.audio, "landmarks": clip.landmarks})


def load_clip(path: str | Path) -> TalkingClip:
    return read_clip_file(path, CLIP_FORMAT, "a training clip", lambda handle, metadata: TalkingClip(
        handle.get_tensor("audio"), handle.get_tensor("landmarks"), float(metadata["fps"])))


@dataclass
class _PreparedClip:
    mel: torch.Tensor  # [80, M + 2·pad], starting at mel frame -pad
    first_mel: int
    points: torch.Tensor  # [F, 68, 2] normalised
    fps: float


class LandmarkWindows(Dataset):
    """``count`` windows drawn from ``clips``; window k is the same on every pass (seeded by k), so a
    validation set is fixed and a training set covers many windows per clip across its epochs.
    References are other frames of the same clip; in ``portrait_fraction`` of the windows they are
    one frame repeated, as when a still portrait drives the model."""

    def __init__(self, clips: Sequence[TalkingClip], config: LandmarkModelConfig, count: int, seed: int = 0,
                 portrait_fraction: float = 0.5) -> None:
        if not clips:
            raise TalkingFaceError("no training clips")
        if not 0 <= portrait_fraction <= 1:
            raise TalkingFaceError(f"portrait_fraction must be in 0..1, got {portrait_fraction}")
        self.config = config
        self.count = count
        self.seed = seed
        self.portrait_fraction = portrait_fraction
        log_mel = LogMel()
        self.prepared = []
        for clip in clips:
            if clip.frames < config.target_frames + 1:
                raise TalkingFaceError(f"a clip of {clip.frames} frames is shorter than a training window")
            points = to_normalised(clip.landmarks, eye_frames(clip.landmarks))
            self.prepared.append(_PreparedClip(*padded_log_mel(log_mel, clip.audio), points, clip.fps))
        self.mel_config = log_mel.config

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        clip = self.prepared[int(torch.randint(len(self.prepared), (1,), generator=generator))]
        frames = clip.points.shape[0]
        length = self.config.target_frames
        start = int(torch.randint(frames - length + 1, (1,), generator=generator))
        window = torch.arange(start, start + length)
        references = torch.randint(frames, (self.config.reference_sets,), generator=generator)
        if float(torch.rand((), generator=generator)) < self.portrait_fraction:
            # A still portrait gives one mouth shape, repeated in every reference slot; the mean
            # reference mouth that the model predicts offsets from is then that one shape rather
            # than an average over talking frames, and the model must learn both cases.
            references = references[:1].expand(self.config.reference_sets)
        mel = mel_windows(clip.mel.unsqueeze(0), clip.first_mel, window, clip.fps, self.mel_config)[0]
        points = clip.points[window]
        return {
            "references": clip.points[references],
            "mel_windows": mel,
            "pose": points[:, list(POSE_POINTS)],
            "target": points[:, list(MOUTH_POINTS)],
        }


@dataclass
class Evaluation:
    """Mean L1 per coordinate (normalised units: inter-ocular distance) on the validation windows."""

    model_l1: float
    reference_mean_l1: float  # predicting the speaker's mean reference mouth (what an untrained model does)
    dataset_mean_l1: float  # predicting the training set's mean mouth in every frame


def predict(model: LandmarkCompletionTransformer, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(batch["references"], batch["mel_windows"], batch["pose"])


def evaluate(model: LandmarkCompletionTransformer, loader: DataLoader, dataset_mean: torch.Tensor) -> Evaluation:
    def candidates(model: LandmarkCompletionTransformer, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        reference_mean = batch["references"].mean(1, keepdim=True)[:, :, list(MOUTH_POINTS)]
        return predict(model, batch), reference_mean, dataset_mean.to(reference_mean.device)

    return Evaluation(*validation_l1(model, loader, candidates))


def train_landmark_model(
    model_config: LandmarkModelConfig,
    train_clips: Sequence[TalkingClip],
    validation_clips: Sequence[TalkingClip],
    train_config: TrainConfig,
    checkpoint_dir: str | Path | None = None,
    log: Callable[[str], None] = print,
    until_step: int | None = None,
) -> tuple[LandmarkCompletionTransformer, list[tuple[int, Evaluation]]]:
    """Train on windows of ``train_clips``, validated on ``validation_clips``, in
    :func:`.loop.train_windows` (its ``best``/``last.safetensors`` and resumable state go to
    ``checkpoint_dir``)."""
    torch.manual_seed(train_config.seed)
    train_set = LandmarkWindows(train_clips, model_config, train_config.train_windows, seed=train_config.seed,
                                portrait_fraction=train_config.portrait_references)
    validation_set = LandmarkWindows(validation_clips, model_config, train_config.validation_windows,
                                     seed=10_000 + train_config.seed, portrait_fraction=train_config.portrait_references)
    dataset_mean = torch.cat([clip.points[:, list(MOUTH_POINTS)] for clip in train_set.prepared]).mean(0)
    task = WindowTask(
        name="landmark model",
        state_format=STATE_FORMAT,
        loss=lambda model, batch: velocity_l1(predict(model, batch), batch["target"], train_config.velocity_weight),
        evaluate=lambda model, loader: evaluate(model, loader, dataset_mean),
        describe=lambda result: f"reference mean {result.reference_mean_l1:.4f}, dataset mean {result.dataset_mean_l1:.4f}",
        save_model=save_landmark_model,
    )
    model = LandmarkCompletionTransformer(model_config)
    return train_windows(model, train_set, validation_set, train_config, task, checkpoint_dir, log, until_step)


@dataclass
class ExpressionCheck:
    """The whole chain on clips with known coefficients: audio → landmarks → expression, compared
    with the true mouth weights (mean absolute error and correlation over all frames, per direction),
    against predicting each direction's mean true weight in every frame; and the expression fit
    alone on the clips' true landmarks, which separates what the fit loses from what the landmark
    model misses."""

    mean_abs_error: dict[str, float]
    constant_baseline_error: dict[str, float]
    correlation: dict[str, float]
    true_landmarks_error: dict[str, float]


@torch.no_grad()
def check_expression_chain(
    model: LandmarkCompletionTransformer, face_model, clips: Sequence[TalkingClip], directions: Sequence[str]
) -> ExpressionCheck:
    from ..audio.expression import landmarks_to_expression
    from ..audio.io import Audio
    from ..audio.landmarks import TalkingLandmarks, audio_to_landmarks

    predicted, from_truth, truth = [], [], []
    columns = [face_model.expression_index(name) for name in directions]
    for clip in clips:
        if clip.coefficients is None:
            raise TalkingFaceError("the expression check needs clips with their true coefficients (synthetic clips)")
        base = clip.coefficients.map(lambda value: value.clone())
        base.expression[:, columns] = 0.0  # the chain must find the mouth from the audio alone
        landmarks = audio_to_landmarks(model, face_model, Audio(clip.audio, SAMPLE_RATE), clip.fps, base, base[0])
        predicted.append(landmarks_to_expression(face_model, landmarks)[0].expression[:, columns])
        true_landmarks = TalkingLandmarks(clip.landmarks, base, clip.fps, landmarks.camera)
        from_truth.append(landmarks_to_expression(face_model, true_landmarks)[0].expression[:, columns])
        truth.append(clip.coefficients.expression[:, columns])
    predicted, from_truth, truth = torch.cat(predicted), torch.cat(from_truth), torch.cat(truth)

    def per_direction(values: torch.Tensor) -> dict[str, float]:
        return dict(zip(directions, values.tolist(), strict=True))

    correlation = [torch.corrcoef(torch.stack([predicted[:, k], truth[:, k]]))[0, 1] for k in range(len(columns))]
    return ExpressionCheck(
        per_direction((predicted - truth).abs().mean(0)),
        per_direction((truth.mean(0, keepdim=True) - truth).abs().mean(0)),
        per_direction(torch.stack(correlation)),
        per_direction((from_truth - truth).abs().mean(0)),
    )
