"""Lip and jaw landmarks → 3DMM expression, with identity and head pose held at the base motion.

The Foundation's :class:`LandmarkFitter` solves the expression coefficients that best explain the
lip and jaw points (every other landmark has weight zero; the contour search is off because the
predicted jaw points are the model's own landmark vertices), frame by frame in batches; with pose
and identity fixed the problem is nearly linear, so a few Levenberg–Marquardt steps converge.
Temporal smoothing is a Gaussian filter over the fitted expression tracks: the fitter's joint video
mode gives the same kind of smoothing but measured ~20× slower on this problem (82 s against 4 s
for a minute of 25 fps video on 2 cores), which would rule out real-time audio.
Expression directions that do not move any lip or jaw landmark (blinks, brows) cannot be seen by
the fit, so they keep the base's values.
"""
from __future__ import annotations

import torch

from ..errors import TalkingFaceError
from ..morphable.coefficients import FaceCoefficients
from ..morphable.fitting import FitConfig, LandmarkFitter
from ..morphable.model import MorphableModel
from ..video import frame_chunks
from .landmark_model import MOUTH_POINTS, NUM_POINTS
from .landmarks import TalkingLandmarks

# A direction whose largest lip/jaw landmark displacement is below this fraction of the largest
# one's counts as unseen by the mouth landmarks.
UNSEEN_FRACTION = 1e-3

FIT_CHUNK_FRAMES = 1024
DEFAULT_FIT = FitConfig(contour=False, pose_iterations=0, rounds=1, iterations=2, expression_prior=1.0)


def mouth_weights(device: torch.device | str = "cpu") -> torch.Tensor:
    """``[68]``: 1 on the lip and jaw points, 0 elsewhere."""
    weights = torch.zeros(NUM_POINTS, device=device)
    weights[list(MOUTH_POINTS)] = 1.0
    return weights


def mouth_directions(model: MorphableModel) -> torch.Tensor:
    """Boolean ``[n_exp]``: expression directions that move a lip or jaw landmark vertex."""
    ids = model.landmark_ids[list(MOUTH_POINTS)]
    columns = (ids.unsqueeze(1) * 3 + torch.arange(3, device=ids.device)).flatten()
    reach = model.expression_basis[:, columns].abs().amax(1)
    return reach > UNSEEN_FRACTION * reach.max().clamp_min(1e-12)


def smooth_tracks(tracks: torch.Tensor, sigma_frames: float) -> torch.Tensor:
    """Gaussian filter of ``[F, d]`` tracks along the frames (reflected at the ends); 0 leaves them."""
    if sigma_frames <= 0 or tracks.shape[0] < 2:
        return tracks
    radius = max(1, min(int(3 * sigma_frames + 0.5), tracks.shape[0] - 1))
    offsets = torch.arange(-radius, radius + 1, device=tracks.device, dtype=tracks.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma_frames) ** 2)
    kernel = (kernel / kernel.sum()).view(1, 1, -1)
    columns = tracks.T.unsqueeze(1)  # [d, 1, F]
    padded = torch.nn.functional.pad(columns, (radius, radius), mode="reflect")
    return torch.nn.functional.conv1d(padded, kernel).squeeze(1).T.contiguous()


def landmarks_to_expression(
    model: MorphableModel,
    landmarks: TalkingLandmarks,
    smoothing: float = 0.5,
    config: FitConfig | None = None,
    on_chunk=None,
) -> tuple[FaceCoefficients, torch.Tensor]:
    """The base coefficients with the expression fitted to the lip/jaw landmarks and smoothed over
    time (Gaussian, ``smoothing`` frames; 0 = off); also the RMS lip/jaw landmark error ``[F]`` in
    pixels of the landmarks' camera, before smoothing. ``on_chunk(frames_done)`` is called after each
    chunk of frames (progress, interruption)."""
    if landmarks.frames == 0:
        raise TalkingFaceError("the landmark sequence has no frames")
    if smoothing < 0:
        raise TalkingFaceError(f"smoothing must not be negative, got {smoothing}")
    model.check_coefficients(landmarks.base)
    fitter = LandmarkFitter(model, landmarks.camera, config or DEFAULT_FIT)
    device = model.mean_shape.device
    base = landmarks.base.to(device, torch.float32)
    weights = mouth_weights(device)
    fitted, errors = [], []
    # Chunks keep the fitter's per-frame working copies bounded; only the expression rows are kept.
    for chunk in frame_chunks(landmarks.frames, FIT_CHUNK_FRAMES):
        result = fitter.fit(landmarks.points[chunk].to(device, torch.float32), weights, optimize={"expression"},
                            init=base[chunk])
        fitted.append(result.coefficients.expression)
        errors.append(result.landmark_error)
        if on_chunk is not None:
            on_chunk(chunk.stop)
    seen = mouth_directions(model).to(device)
    expression = torch.where(seen, smooth_tracks(torch.cat(fitted), smoothing), base.expression)
    return base.replace(expression=expression), torch.cat(errors)
