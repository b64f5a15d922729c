"""Settings of the landmark fit and what it returns."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...errors import TalkingFaceError
from ..coefficients import FaceCoefficients


@dataclass
class FitConfig:
    """Settings of :class:`LandmarkFitter`.

    Costs are in squared pixels of the camera's image, summed over landmarks. A coefficient prior
    of ``w`` adds ``w·c²`` per coefficient: the MAP estimate for landmark noise of ``sqrt(w)`` px
    per coordinate when the coefficients are ~N(0, 1), so the defaults assume about 1 px (raise
    them for noisier detectors). The pose prior is relative to the motion it stands for: a pose
    change that moves the 68 landmarks of the mean frontal face by Δ px RMS costs
    ``pose_prior · 68 · Δ²``. Temporal smoothing adds ``temporal_smoothing · |a|²`` for the
    acceleration a (px per frame², all landmarks) of the fitted landmark tracks: the MAP weight
    for landmark noise σ when true accelerations are about σ / sqrt(temporal_smoothing).
    """

    identity_prior: float = 1.0
    expression_prior: float = 1.0
    # Pull rotation and translation towards the initial guess (the ``init`` coefficients, or the
    # closed-form estimate); 0 leaves the pose free.
    pose_prior: float = 0.0
    # Weight of the jaw landmarks (all but the chin) relative to the others: detectors place them
    # less consistently, and their correspondence is only approximate.
    contour_weight: float = 0.5
    # Move the jaw landmarks onto the silhouette with the pose, and along it to the observed points
    # (a detector's jaw points are outline points, evenly spaced by convention). Turn off for
    # landmarks that come from fixed model vertices (synthetic data, landmarks predicted in model space).
    contour: bool = True
    # Levenberg–Marquardt steps on the pose alone before all groups are freed; this keeps the
    # shape from bending to make up for a rough initial pose.
    pose_iterations: int = 5
    # Rounds of (re-select contour vertices, then LM steps); each round stops early once converged.
    # With contour off this is one round of rounds × iterations steps.
    rounds: int = 3
    iterations: int = 10
    # A face has converged when a step lowers its cost by less than this fraction.
    tolerance: float = 1e-5
    # Faces solved at once by :meth:`LandmarkFitter.fit` (bounds memory, not the result).
    batch_size: int = 512
    # Video: weight of the landmark acceleration penalty (see above); it smooths jitter without
    # holding back steady motion. 0 fits the frames independently except for the shared identity.
    temporal_smoothing: float = 1.0
    # Video: frames solved jointly. Longer videos take the identity from at most
    # ``identity_frames`` frames spread over the video, then solve windows one after another with
    # the identity fixed; each window re-fits ``chunk_overlap`` frames of the previous one and is
    # tied to the two frames before it, so the joins stay smooth. Memory grows with the window only.
    chunk_frames: int = 256
    chunk_overlap: int = 16
    identity_frames: int = 64

    def __post_init__(self) -> None:
        problems = [
            f"{name} must be at least {least}, got {getattr(self, name)}"
            for name, least in (
                ("identity_prior", 0), ("expression_prior", 0), ("pose_prior", 0), ("contour_weight", 0),
                ("pose_iterations", 0), ("rounds", 1), ("iterations", 1), ("batch_size", 1),
                ("temporal_smoothing", 0), ("chunk_frames", 2), ("chunk_overlap", 0), ("identity_frames", 1),
            )
            if not getattr(self, name) >= least
        ]
        if not self.tolerance > 0:
            problems.append(f"tolerance must be positive, got {self.tolerance}")
        if problems:
            raise TalkingFaceError("invalid Fit 3DMM settings: " + "; ".join(problems))

    def schedule(self) -> tuple[int, int]:
        """Rounds and LM steps per round; without contour there is nothing to re-select between rounds."""
        if self.contour:
            return self.rounds, self.iterations
        return 1, self.rounds * self.iterations


@dataclass
class FitResult:
    """Fitted coefficients (texture, lighting and gaze taken from ``init``, else zero), the RMS
    distance in px between observed and fitted landmarks per face (landmarks of weight zero left
    out), and the fitted landmark positions ``[B, 68, 2]`` in px."""

    coefficients: FaceCoefficients
    landmark_error: torch.Tensor
    fitted_landmarks: torch.Tensor
