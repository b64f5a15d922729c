"""3DMM coefficients from analysed faces: landmark fit, then texture and lighting from the crops."""
from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, replace

import torch

from ..errors import TalkingFaceError
from ..morphable.camera import PerspectiveCamera
from ..morphable.coefficients import FaceCoefficients
from ..morphable.fitting import ALL_GROUPS, FitConfig, FitResult, LandmarkFitter
from ..morphable.model import MorphableModel
from ..video import frame_chunks
from .alignment import FIT_CROP_SIZE, warp_images
from .appearance import estimate_appearance
from .faces import AnalyzedFaces
from .gaze import estimate_gaze
from .motion import smooth_coefficients
from .smoothing import acceleration_weight

VIDEO_MODES = ("joint", "fast")
# Fast mode: frames whose joint fit fixes the shared identity, spread over the video.
IDENTITY_SAMPLE_FRAMES = 12
# Fast mode fits this many frames at once, so memory stays flat however long the video is.
FAST_CHUNK_FRAMES = 128


@dataclass
class FaceFit:
    coefficients: FaceCoefficients
    landmark_error: torch.Tensor  # [T] RMS px in the 224-px fitting crop
    fitted_landmarks: torch.Tensor  # [T, 68, 2] in the fitting crop


def fit_faces(
    model: MorphableModel,
    faces: AnalyzedFaces,
    config: FitConfig | None = None,
    appearance: bool = True,
    gaze: bool = True,
    video_mode: str = "joint",
    smoothing: float = 0.5,
    fps: float | None = None,
    appearance_resolution: int = 112,
    texture_frames: int = 8,
    batch_size: int = 16,
    on_chunk: Callable[[int], None] | None = None,
    init: FaceCoefficients | None = None,
    refine: Collection[str] = ALL_GROUPS,
) -> FaceFit:
    """Fit ``model`` to the faces of every frame: one image on its own, a video with one shared identity
    and temporal smoothing. With ``appearance``, one texture from up to
    ``texture_frames`` frames and lighting per frame are solved from the crops at ``appearance_resolution``;
    with ``gaze``, the gaze of each frame is read from its eyes in those crops.

    ``smoothing`` (0..1) is the one smoothing setting of both video modes: a cut-off of 0.5 Hz / smoothing²
    at ``fps`` (see :mod:`.smoothing`). ``video_mode`` ``joint`` solves the video in one problem with a
    landmark-acceleration penalty of that cut-off (it replaces ``config.temporal_smoothing``); ``fast``
    takes the identity from a joint fit of a few frames spread over the video, fits every frame with it
    side by side, and smooths pose and expression with a One-Euro filter whose cut-off at rest is that.

    ``init`` (one row per frame, e.g. from the face regressor, in the fitting crop) is where the fit
    starts; only the ``refine`` groups move, the rest (and texture and lighting when ``appearance`` is
    off) keep its values. A video's identity (and texture) from ``init`` is averaged over the detected
    frames: one person, one shape.

    ``fps`` defaults to the frame rate the faces carry. Frames with no face anywhere (every frame passing
    through) get the neutral face, or ``init``, unfitted: nothing downstream will show them.
    ``on_chunk(frames_done)`` runs after every appearance batch."""
    if video_mode not in VIDEO_MODES:
        raise TalkingFaceError(f"video_mode must be one of {VIDEO_MODES}, got '{video_mode}'")
    fps = faces.fps if fps is None else fps
    device = model.mean_shape.device
    if not faces.detected.any():
        return _unfitted(model, faces, init, device)
    # Fast mode smooths afterwards; its identity frames are spread over the video, not neighbours.
    weight = acceleration_weight(smoothing, fps) if video_mode == "joint" else 0.0
    config = replace(config or FitConfig(), temporal_smoothing=weight)
    fitter = LandmarkFitter(model, PerspectiveCamera.deep3d(FIT_CROP_SIZE), config)
    landmarks = faces.fit_landmarks().to(device)
    # Interpolated frames count less: their landmarks are a guess between two detections.
    weights = torch.where(faces.detected, 1.0, 0.25).to(device).unsqueeze(1).expand(-1, landmarks.shape[1])
    weights = weights * _contour_weights(fitter, landmarks.device)
    if init is not None:
        init = _one_person(init.to(device), faces.detected.to(device))
    if faces.frames == 1:
        result = fitter.fit(landmarks, weights, optimize=refine, init=init)
    elif video_mode == "joint":
        result = fitter.fit_video(landmarks, weights, optimize=refine, init=init)
    else:
        result = _fit_video_fast(fitter, landmarks, weights, faces.detected.to(device), smoothing, fps, init, refine)
    coeffs = result.coefficients
    if appearance or gaze:
        coeffs = _from_crops(model, faces, coeffs, appearance, gaze, appearance_resolution, texture_frames,
                             batch_size, on_chunk)
    return FaceFit(coeffs, result.landmark_error, result.fitted_landmarks)


def _unfitted(model: MorphableModel, faces: AnalyzedFaces, init: FaceCoefficients | None,
              device: torch.device) -> FaceFit:
    coeffs = init.to(device).repeat_to(faces.frames) if init is not None else FaceCoefficients.neutral(
        faces.frames, model.dims, device=device)
    return FaceFit(coeffs, torch.zeros(faces.frames, device=device), torch.zeros(faces.frames, 68, 2, device=device))


def _one_person(init: FaceCoefficients, detected: torch.Tensor) -> FaceCoefficients:
    if init.frames == 1:
        return init
    rows = detected if detected.any() else torch.ones_like(detected)
    return init.replace(**{name: getattr(init, name)[rows].mean(0, keepdim=True).expand(init.frames, -1).contiguous()
                           for name in ("identity", "texture")})


def _fit_video_fast(
    fitter: LandmarkFitter, landmarks: torch.Tensor, weights: torch.Tensor, detected: torch.Tensor,
    smoothing: float, fps: float, init: FaceCoefficients | None, refine: Collection[str],
) -> FitResult:
    frames = landmarks.shape[0]
    refine = frozenset(refine)
    given = init
    if init is None:
        # The aligned crop already centres and frames the face, so a frontal start converges for every frame.
        init = FaceCoefficients.neutral(frames, fitter.dims, device=landmarks.device)
    else:
        init = init.replace(**{name: value.clone() for name, value in init.fields().items()})
    if "identity" in refine:
        candidates = torch.nonzero(detected).squeeze(1)
        if candidates.numel() == 0:
            candidates = torch.arange(frames, device=landmarks.device)
        count = min(IDENTITY_SAMPLE_FRAMES, candidates.numel())
        picks = candidates[torch.linspace(0, candidates.numel() - 1, count, device=landmarks.device).round().long()].unique()
        start = given[picks] if given is not None else None  # without a start, the closed-form pose
        sampled = fitter.fit_video(landmarks[picks], weights[picks], optimize=refine, init=start).coefficients
        init.identity[:] = sampled.identity[0]
    per_frame = refine - {"identity"}
    parts = [
        fitter.fit(landmarks[chunk], weights[chunk], optimize=per_frame, init=init[chunk])
        for chunk in frame_chunks(frames, FAST_CHUNK_FRAMES)
    ]
    coeffs = FaceCoefficients.concat([part.coefficients for part in parts])
    smoothed = smooth_coefficients(coeffs, fps, smoothing, ("rotation", "translation", "expression"))
    return FitResult(smoothed, torch.cat([p.landmark_error for p in parts]), torch.cat([p.fitted_landmarks for p in parts]))


def _contour_weights(fitter: LandmarkFitter, device: torch.device) -> torch.Tensor:
    weights = torch.ones(68, device=device)
    weights[[i for i in range(17) if i != 8]] = fitter.config.contour_weight
    return weights


def _from_crops(
    model: MorphableModel,
    faces: AnalyzedFaces,
    coeffs: FaceCoefficients,
    appearance: bool,
    gaze: bool,
    resolution: int,
    texture_frames: int,
    batch_size: int,
    on_chunk: Callable[[int], None] | None,
) -> FaceCoefficients:
    """Texture, lighting and gaze from the fitting crops, rendered at ``resolution`` chunk by chunk."""
    scale = resolution / FIT_CROP_SIZE
    transforms = faces.fit_transforms * scale
    landmarks = faces.fit_landmarks() * scale

    def crops(index) -> torch.Tensor:
        return warp_images(faces.images[index], transforms[index], resolution)

    texture = None
    if appearance:
        detected = torch.nonzero(faces.detected).squeeze(1)
        picks = detected[torch.linspace(0, detected.numel() - 1, min(texture_frames, detected.numel())).round().long()]
        texture = estimate_appearance(model, coeffs[picks], crops(picks)).texture[0]
    lighting, gazes = [], []
    for chunk in frame_chunks(faces.frames, batch_size):
        chunk_crops = crops(chunk)
        if appearance:
            lighting.append(estimate_appearance(model, coeffs[chunk], chunk_crops, fixed_texture=texture).lighting)
        if gaze:
            gazes.append(estimate_gaze(chunk_crops, landmarks[chunk]))
        if on_chunk is not None:
            on_chunk(chunk.stop)
    updates = {}
    if appearance:
        updates["texture"] = texture.view(1, -1).expand(faces.frames, -1).contiguous()
        updates["lighting"] = torch.cat(lighting)
    if gaze:
        updates["gaze"] = torch.cat(gazes).to(coeffs.gaze)
    return coeffs.replace(**updates)
