"""Editing coefficient sequences: reenactment/swap mixing, temporal smoothing, semantic sliders."""
from __future__ import annotations

import math

import torch

from ..errors import TalkingFaceError
from ..morphable.coefficients import ALL_FIELDS, FaceCoefficients
from ..morphable.model import MorphableModel
from .smoothing import one_euro

# Which sequence each field comes from: source (the portrait) or driver (the video / the target).
PRESETS = {
    # Reenactment: the portrait's person and light, the driver's motion.
    "reenact": {"identity": "source", "texture": "source", "lighting": "source",
                "expression": "driver", "rotation": "driver", "translation": "driver", "gaze": "driver"},
    # Face swap: the source's identity and skin on the target, everything else (light included) from the target.
    "swap": {"identity": "source", "texture": "source", "lighting": "driver",
             "expression": "driver", "rotation": "driver", "translation": "driver", "gaze": "driver"},
}
# Speed units of each field for One-Euro: moving by this much per second opens the filter by 2 Hz.
SMOOTHING_SCALES = {"expression": 2.0, "rotation": 0.5, "translation": 0.5, "gaze": 0.5, "lighting": 1.0}


def mix_coefficients(source: FaceCoefficients, driver: FaceCoefficients, choice: dict[str, str]) -> FaceCoefficients:
    """Each field from ``source`` or ``driver`` per ``choice``; a one-frame sequence is held over the other's length."""
    if source.dims != driver.dims:
        raise TalkingFaceError(
            f"source and driver coefficients come from different face models ({source.dims} vs {driver.dims}); "
            "fit both with the same 3DMM"
        )
    frames = max(source.frames, driver.frames)
    if min(source.frames, driver.frames) not in (1, frames):
        raise TalkingFaceError(
            f"source has {source.frames} frames and driver {driver.frames}: one of them must have 1 frame or both the same"
        )
    source, driver = source.repeat_to(frames), driver.repeat_to(frames)
    fields = {}
    for name in ALL_FIELDS:
        origin = choice.get(name, "driver")
        if origin not in ("source", "driver"):
            raise TalkingFaceError(f"field '{name}' must come from 'source' or 'driver', got '{origin}'")
        fields[name] = getattr(source if origin == "source" else driver, name).clone()
    return FaceCoefficients(**fields)


def smooth_coefficients(coeffs: FaceCoefficients, fps: float, strength: float, fields: tuple[str, ...]) -> FaceCoefficients:
    """One-Euro filter over frames on the named fields (identity and texture are per person, not smoothed)."""
    updates = {}
    for name in fields:
        if name not in SMOOTHING_SCALES:
            raise TalkingFaceError(f"cannot smooth '{name}'; smoothable fields are {sorted(SMOOTHING_SCALES)}")
        updates[name] = one_euro(getattr(coeffs, name), fps, strength, SMOOTHING_SCALES[name])
    return coeffs.replace(**updates)


SLIDERS = ("jaw_open", "smile", "brow_raise", "blink")
_LEFT_UPPER_LIDS, _LEFT_LOWER_LIDS = (37, 38, 43, 44), (41, 40, 47, 46)


def _landmark_displacements(model: MorphableModel, name: str) -> torch.Tensor:
    """Target 2-D displacements (x right, y up; model units) of the 68 landmark vertices for a slider
    at 1; landmarks that should stay put get zero. Scaled by the eye distance, so they fit any 3DMM."""
    points = model.mean_shape[model.landmark_ids]
    eye_distance = float((points[36:42].mean(0) - points[42:48].mean(0)).norm())
    move = torch.zeros(68, 2)
    if name == "jaw_open":
        for index in list(range(5, 12)) + list(range(55, 60)) + [64, 65, 66, 67]:
            move[index, 1] = -0.35 * eye_distance * (1.0 - abs(index - 8) / 8.0 if index < 17 else 1.0)
    elif name == "smile":
        move[48] = torch.tensor([-0.12, 0.12]) * eye_distance  # subject's right corner is at -x
        move[54] = torch.tensor([0.12, 0.12]) * eye_distance
        move[[60, 64]] = move[[48, 54]] * 0.8
    elif name == "brow_raise":
        move[17:27, 1] = 0.15 * eye_distance
    elif name == "blink":
        for upper, lower in zip(_LEFT_UPPER_LIDS, _LEFT_LOWER_LIDS, strict=True):
            move[upper] = (points[lower, :2] - points[upper, :2]).cpu()
    else:
        raise TalkingFaceError(f"unknown expression slider '{name}'; sliders are {SLIDERS}")
    return move


def expression_direction(model: MorphableModel, name: str, prior: float = 1e-2) -> torch.Tensor:
    """Expression coefficients ``[n_exp]`` for a slider at 1.

    Models with named directions (the demo face) use them; others (BFM) get the direction that moves
    the landmark vertices most like the slider's target (regularised least squares on the landmark
    rows of the expression basis), derived on the fly so any 3DMM with the 68 iBUG landmarks works."""
    named = {"blink": ("blink_left", "blink_right")}.get(name, (name,))
    if all(n in model.expression_names for n in named):
        direction = torch.zeros(model.dims.expression)
        for n in named:
            direction[model.expression_index(n)] = 1.0
        return direction
    move = _landmark_displacements(model, name)
    basis = model.expression_basis.view(-1, model.num_vertices, 3)[:, model.landmark_ids, :2].cpu()  # [E, 68, 2]
    design = basis.reshape(basis.shape[0], -1).double()  # [E, 136]
    target = move.reshape(-1).double()
    scale = (design * design).sum(1).mean()
    hessian = design @ design.T + prior * scale * torch.eye(design.shape[0], dtype=torch.float64)
    factor = torch.linalg.cholesky(hessian)
    return torch.cholesky_solve((design @ target).unsqueeze(-1), factor).squeeze(-1).float()


def edit_coefficients(
    model: MorphableModel,
    coeffs: FaceCoefficients,
    pose_degrees: tuple[float, float, float] = (0.0, 0.0, 0.0),
    sliders: dict[str, float] | None = None,
) -> FaceCoefficients:
    """Add head rotation (pitch, yaw, roll in degrees) and slider amounts to every frame."""
    model.check_coefficients(coeffs)
    expression = coeffs.expression.clone()
    for name, amount in (sliders or {}).items():
        if amount:
            expression += amount * expression_direction(model, name).to(expression)
    rotation = coeffs.rotation + torch.tensor([math.radians(a) for a in pose_degrees]).to(coeffs.rotation)
    return coeffs.replace(expression=expression, rotation=rotation)


def slider_offsets(model: MorphableModel) -> dict[str, torch.Tensor]:
    """Vertex offsets ``[N, 3]`` of each slider at 1: what Edit Expression and Pose adds to a face.
    The expression basis is linear, so the offsets are the same on every identity."""
    basis = model.expression_basis.cpu()
    return {name: (expression_direction(model, name) @ basis).view(-1, 3) for name in SLIDERS}
