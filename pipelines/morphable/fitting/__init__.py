"""Fitting the 3DMM to 68 landmarks: :class:`LandmarkFitter` and its settings. The parts:
``parameters`` (the parameter vector), ``contour`` (jaw landmarks sliding onto and along the silhouette),
``projection`` (landmarks and their Jacobian), ``initial_pose`` (closed-form start), ``priors``
(the regularisers), ``face_solver`` (per-image Levenberg–Marquardt), ``video_solver`` and
``banded_solve`` (one identity per video, landmark tracks smoothed over time)."""
from .config import FitConfig, FitResult
from .fitter import LandmarkFitter
from .parameters import ALL_GROUPS, POSE_GROUPS

__all__ = ["ALL_GROUPS", "POSE_GROUPS", "FitConfig", "FitResult", "LandmarkFitter"]
