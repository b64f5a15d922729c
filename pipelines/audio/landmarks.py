"""Audio → lip and jaw landmarks over audio of any length.

Normalised crop frame: each frame's landmarks are expressed relative to its eyes — origin at the
midpoint of the two eye centres, x along the eye line, unit = the distance between the eye
centres. The eyes belong to the upper-face (pose) points, which are known for every target frame,
so predictions map back to pixels exactly, and the model never sees where the face sits in the
image, how large it is or how it is rolled.

Long audio is cut into windows of ``target_frames`` video frames that overlap by ``overlap``
frames; overlapping predictions are blended with weights that fall off towards each window's
edges. The mel spectrogram is computed per batch of windows from just the samples it needs, so
memory is bounded by the batch, not by the audio.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from ..errors import TalkingFaceError
from ..morphable.camera import PerspectiveCamera
from ..morphable.coefficients import FaceCoefficients
from ..morphable.model import MorphableModel
from ..video import frame_chunks
from .features import LogMel, mel_range_for_frames, mel_windows
from .io import Audio, check_speech
from .landmark_model import MOUTH_POINTS, NUM_POINTS, POSE_POINTS, LandmarkCompletionTransformer

PROJECTION_CHUNK_FRAMES = 1024
RIGHT_EYE = tuple(range(36, 42))  # the subject's right eye: image left
LEFT_EYE = tuple(range(42, 48))


@dataclass
class TalkingLandmarks:
    """68 landmarks per video frame (pixels of ``camera``'s image), lip and jaw driven by audio, the
    rest from the head motion; ``base`` holds the coefficients of that head motion (the portrait's
    identity, texture and light with per-frame pose, blinks and gaze), which the expression fit keeps."""

    points: torch.Tensor  # [F, 68, 2]
    base: FaceCoefficients
    fps: float
    camera: PerspectiveCamera

    @property
    def frames(self) -> int:
        return self.points.shape[0]


def eye_frames(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per frame of ``[..., 68 or 31, 2]`` (full or pose points): origin ``[..., 2]``, unit x axis
    ``[..., 2]`` and scale ``[...]`` of the normalised crop frame."""
    offset = 0 if points.shape[-2] == NUM_POINTS else -POSE_POINTS[0]
    right = points[..., [i + offset for i in RIGHT_EYE], :].mean(-2)
    left = points[..., [i + offset for i in LEFT_EYE], :].mean(-2)
    axis = left - right
    scale = axis.norm(dim=-1).clamp_min(1e-6)
    return (left + right) / 2, axis / scale.unsqueeze(-1), scale


def _axes(frame: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Origin, x and y axes ``[..., 1, 2]`` and scale ``[..., 1, 1]``, broadcastable over points."""
    origin, x_axis, scale = frame
    y_axis = torch.stack([-x_axis[..., 1], x_axis[..., 0]], -1)
    return origin.unsqueeze(-2), x_axis.unsqueeze(-2), y_axis.unsqueeze(-2), scale[..., None, None]


def to_normalised(points: torch.Tensor, frame: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Pixels ``[..., P, 2]`` → normalised crop frame, with ``frame`` from :func:`eye_frames`."""
    origin, x_axis, y_axis, scale = _axes(frame)
    relative = points - origin
    return torch.stack([(relative * x_axis).sum(-1), (relative * y_axis).sum(-1)], -1) / scale


def to_pixels(points: torch.Tensor, frame: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
    origin, x_axis, y_axis, scale = _axes(frame)
    points = points * scale
    return origin + points[..., :1] * x_axis + points[..., 1:] * y_axis


def project_landmarks(model: MorphableModel, coeffs: FaceCoefficients, camera: PerspectiveCamera) -> torch.Tensor:
    """The model's 68 landmark vertices projected to pixels ``[F, 68, 2]``, computing only those
    vertices, in chunks of frames so that only the result grows with the sequence."""
    model.check_coefficients(coeffs)
    reference = model.mean_shape
    ids = model.landmark_ids
    columns = (ids.unsqueeze(1) * 3 + torch.arange(3, device=ids.device)).flatten()
    identity_basis, expression_basis = model.identity_basis[:, columns], model.expression_basis[:, columns]
    mean = model.mean_shape[ids].unsqueeze(0)
    projected = reference.new_empty(coeffs.frames, NUM_POINTS, 2)
    for chunk in frame_chunks(coeffs.frames, PROJECTION_CHUNK_FRAMES):
        part = coeffs[chunk].to(device=reference.device, dtype=reference.dtype)
        offsets = part.identity @ identity_basis + part.expression @ expression_basis
        vertices = mean + offsets.view(part.frames, -1, 3)
        projected[chunk] = camera.project(model.pose(vertices, part.rotation, part.translation))
    return projected


@dataclass(frozen=True)
class WindowPlan:
    """Windows of at most ``length`` frames covering ``frames`` frames, consecutive ones sharing ``overlap``."""

    frames: int
    length: int
    overlap: int

    def __post_init__(self) -> None:
        if self.frames < 1:
            raise TalkingFaceError("there are no video frames to predict")
        if not 0 <= self.overlap < self.length:
            raise ValueError(f"window overlap must be in 0..{self.length - 1}, got {self.overlap}")

    @property
    def window(self) -> int:
        return min(self.length, self.frames)

    def starts(self) -> list[int]:
        if self.frames <= self.length:
            return [0]
        stride = self.length - self.overlap
        starts = list(range(0, self.frames - self.length, stride))
        return starts + [self.frames - self.length]

    def blend_weights(self) -> torch.Tensor:
        """``[window]`` weights rising over the overlap at each end, so joins cross-fade."""
        position = torch.arange(self.window, dtype=torch.float32)
        ramp = float(self.overlap + 1)
        return torch.minimum(torch.minimum(position + 1, self.window - position), torch.tensor(ramp)) / ramp

    def batches(self, windows_per_batch: int) -> Iterator[list[int]]:
        starts = self.starts()
        for first in range(0, len(starts), windows_per_batch):
            yield starts[first: first + windows_per_batch]


def blend_windows(
    plan: WindowPlan,
    windows_per_batch: int,
    predict: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device | str,
    on_batch: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Overlap-blended per-frame predictions over every window of ``plan``: ``predict(frame_index
    [W, window])`` returns ``[W, window, ...]`` for a batch of windows, which cover one run of
    frames; the result is ``[frames, ...]``. Memory is bounded by one batch of windows plus the
    output. ``on_batch(frames_done)`` is called after each batch (progress, interruption)."""
    weights = plan.blend_weights().to(device)
    total = weight_sum = None
    window = torch.arange(plan.window, device=device)
    for starts in plan.batches(windows_per_batch):
        frame_index = torch.tensor(starts, device=device).unsqueeze(1) + window
        predicted = predict(frame_index)
        if total is None:
            total = predicted.new_zeros(plan.frames, *predicted.shape[2:])
            weight_sum = predicted.new_zeros(plan.frames)
        shaped = weights.view(1, -1, *([1] * (predicted.ndim - 2)))
        total.index_add_(0, frame_index.flatten(), (predicted * shaped).flatten(0, 1))
        weight_sum.index_add_(0, frame_index.flatten(), weights.expand(len(starts), -1).flatten())
        if on_batch is not None:
            on_batch(starts[-1] + plan.window)
    return total.div_(weight_sum.view(-1, *([1] * (total.ndim - 1))))


@torch.no_grad()
def predict_mouth(
    model: LandmarkCompletionTransformer,
    audio: Audio,
    fps: float,
    references: torch.Tensor,
    pose_points: torch.Tensor,
    overlap: int | None = None,
    windows_per_batch: int = 64,
    log_mel: LogMel | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Lip and jaw points ``[F, 37, 2]`` (:data:`MOUTH_POINTS` order, normalised crop frame) for the
    F video frames of ``pose_points [F, 31, 2]`` (normalised), driven by 16 kHz ``audio`` at ``fps``;
    ``references [N, 68, 2]`` (normalised) are the speaker's reference landmark sets.
    ``on_batch(frames_done)`` is called after each batch (progress, interruption)."""
    config = model.config
    check_speech(audio, fps, "the landmark model")
    if references.shape != (config.reference_sets, NUM_POINTS, 2):
        raise ValueError(
            f"the model takes {config.reference_sets} reference landmark sets [N, 68, 2], got {tuple(references.shape)}"
        )
    device = next(model.parameters()).device
    log_mel = (log_mel or LogMel()).to(device)
    plan = WindowPlan(pose_points.shape[0], config.target_frames, config.target_frames // 4 if overlap is None else overlap)
    samples = audio.samples.to(device, torch.float32)
    references = references.to(device, torch.float32).unsqueeze(0)
    pose_points = pose_points.to(device, torch.float32)

    def predict(frame_index: torch.Tensor) -> torch.Tensor:
        # The batch's windows cover one run of frames; each frame's tokens are encoded once and
        # shared by the windows that overlap on it.
        first, last = int(frame_index[0, 0]), int(frame_index[-1, -1]) + 1
        first_mel, last_mel = mel_range_for_frames(first, last, fps, log_mel.config)
        mel = log_mel.frames(samples, first_mel, last_mel).unsqueeze(0)
        windows = mel_windows(mel, first_mel, torch.arange(first, last, device=device), fps, log_mel.config)[0]
        audio_tokens, pose_tokens = model.frame_tokens(windows, pose_points[first:last])
        local = frame_index - first
        return model.complete(references, audio_tokens[local], pose_tokens[local])

    return blend_windows(plan, windows_per_batch, predict, device, on_batch)


def audio_to_landmarks(
    model: LandmarkCompletionTransformer,
    face_model: MorphableModel,
    audio: Audio,
    fps: float,
    base: FaceCoefficients,
    reference: FaceCoefficients,
    camera: PerspectiveCamera | None = None,
    overlap: int | None = None,
    windows_per_batch: int = 64,
    on_batch=None,
) -> TalkingLandmarks:
    """Landmarks for every frame of ``base`` (the head motion, one row per video frame): the upper
    face projected from ``base``, lip and jaw predicted from ``audio``; ``reference`` (1 or N frames
    of the speaker, cycled to the model's N reference sets) gives the speaker's mouth shape."""
    camera = camera or PerspectiveCamera.deep3d()
    sets = model.config.reference_sets
    picks = torch.arange(sets) % reference.frames
    reference_px = project_landmarks(face_model, reference[picks], camera)
    reference_points = to_normalised(reference_px, eye_frames(reference_px))
    points = project_landmarks(face_model, base, camera)  # the upper face; the mouth is replaced below
    frames = eye_frames(points)
    pose = list(POSE_POINTS)
    # Conversions chunk by chunk: only per-frame results, never per-frame temporaries, grow with the audio.
    chunks = list(frame_chunks(points.shape[0], PROJECTION_CHUNK_FRAMES))
    pose_points = points.new_empty(points.shape[0], len(pose), 2)
    for chunk in chunks:
        pose_points[chunk] = to_normalised(points[chunk, pose], tuple(part[chunk] for part in frames))
    mouth = predict_mouth(model, audio, fps, reference_points, pose_points, overlap, windows_per_batch, on_batch=on_batch)
    mouth = mouth.to(points.device)
    for chunk in chunks:
        points[chunk, list(MOUTH_POINTS)] = to_pixels(mouth[chunk], tuple(part[chunk] for part in frames))
    return TalkingLandmarks(points=points, base=base, fps=fps, camera=camera)


def resting_landmarks(
    face_model: MorphableModel, fps: float, base: FaceCoefficients, camera: PerspectiveCamera | None = None
) -> TalkingLandmarks:
    """Landmarks for silence: every point, the mouth included, projected from ``base`` (the head
    motion over the portrait's own resting expression), so the mouth does not move."""
    camera = camera or PerspectiveCamera.deep3d()
    return TalkingLandmarks(points=project_landmarks(face_model, base, camera), base=base, fps=fps, camera=camera)

