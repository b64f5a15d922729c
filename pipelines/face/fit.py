"""3DMM coefficients from analysed faces: landmark fit, then texture and lighting from the crops."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..morphable.coefficients import FaceCoefficients
from ..morphable.fitting import FitConfig, LandmarkFitter
from ..morphable.model import MorphableModel
from ..render.camera import PerspectiveCamera
from ..video import frame_chunks
from .alignment import FIT_CROP_SIZE, warp_images
from .appearance import estimate_appearance
from .faces import AnalyzedFaces


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
    appearance_resolution: int = 112,
    texture_frames: int = 8,
    batch_size: int = 16,
    on_chunk: Callable[[int], None] | None = None,
) -> FaceFit:
    """Fit ``model`` to the faces of every frame: one image on its own, a video with one shared identity
    and temporal smoothing (``config.temporal_smoothing``). With ``appearance``, one texture from up to
    ``texture_frames`` frames and lighting per frame are solved from the crops at ``appearance_resolution``."""
    device = model.mean_shape.device
    fitter = LandmarkFitter(model, PerspectiveCamera.deep3d(FIT_CROP_SIZE), config)
    landmarks = faces.fit_landmarks().to(device)
    # Interpolated frames count less: their landmarks are a guess between two detections.
    weights = torch.where(faces.detected, 1.0, 0.25).to(device).unsqueeze(1).expand(-1, landmarks.shape[1])
    weights = weights * _contour_weights(fitter, landmarks.device)
    result = fitter.fit_video(landmarks, weights) if faces.frames > 1 else fitter.fit(landmarks, weights)
    coeffs = result.coefficients
    if appearance:
        coeffs = _fit_appearance(model, faces, coeffs, appearance_resolution, texture_frames, batch_size, on_chunk)
    return FaceFit(coeffs, result.landmark_error, result.fitted_landmarks)


def _contour_weights(fitter: LandmarkFitter, device: torch.device) -> torch.Tensor:
    weights = torch.ones(68, device=device)
    weights[[i for i in range(17) if i != 8]] = fitter.config.contour_weight
    return weights


def _fit_appearance(
    model: MorphableModel,
    faces: AnalyzedFaces,
    coeffs: FaceCoefficients,
    resolution: int,
    texture_frames: int,
    batch_size: int,
    on_chunk: Callable[[int], None] | None,
) -> FaceCoefficients:
    scale = torch.tensor([[resolution / FIT_CROP_SIZE]]).view(1, 1, 1)
    transforms = faces.fit_transforms * scale

    def crops(index) -> torch.Tensor:
        return warp_images(faces.images[index], transforms[index], resolution)

    detected = torch.nonzero(faces.detected).squeeze(1)
    picks = detected[torch.linspace(0, detected.numel() - 1, min(texture_frames, detected.numel())).round().long()]
    textured = estimate_appearance(model, coeffs[picks], crops(picks))
    texture = textured.texture[0]
    lit = []
    for chunk in frame_chunks(faces.frames, batch_size):
        lit.append(estimate_appearance(model, coeffs[chunk], crops(chunk), fixed_texture=texture).lighting)
        if on_chunk is not None:
            on_chunk(chunk.stop - chunk.start)
    return coeffs.replace(texture=texture.view(1, -1).expand(faces.frames, -1).contiguous(), lighting=torch.cat(lit))
