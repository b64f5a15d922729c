"""Lip and jaw landmarks → 3DMM expression, with identity and head pose held at the base motion.

With identity and pose fixed, the lip and jaw points are a linear function of the expression in
world space; only the perspective division bends them. So the fit is a small Gauss–Newton problem
that needs no line search: linearise the projected points at the base expression (the Jacobian of
the 37 projected points with respect to the expression directions that move them), factor the
normal equations with the Tikhonov prior once per frame (once per chunk when the head is held
still: every frame then shares the Jacobian, and the frames are the right-hand sides of one
solve), step, and step again with the same factorisation to take up the perspective bend. Two
steps land within ~0.02 px of the Foundation's Levenberg–Marquardt :class:`LandmarkFitter` run to
convergence with the same prior and weights (identity and pose fixed; tested with still, idling
and fast-turning heads), at a few per cent of its cost: this is what lets the audio chain run
hundreds of times faster than real time.

Temporal smoothing is a Gaussian filter over the fitted expression tracks afterwards: the fit is
so nearly linear that filtering the solutions is filtering the landmarks they explain.
Expression directions that do not move any lip or jaw landmark (blinks, brows) cannot be seen by
the fit, so they keep the base's values.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import TalkingFaceError
from ..morphable.camera import PerspectiveCamera
from ..morphable.coefficients import FaceCoefficients
from ..morphable.model import MorphableModel, rotation_matrices
from ..video import frame_chunks
from .landmark_model import MOUTH_POINTS, NUM_POINTS
from .landmarks import TalkingLandmarks

# A direction whose largest lip/jaw landmark displacement is below this fraction of the largest
# one's counts as unseen by the mouth landmarks.
UNSEEN_FRACTION = 1e-3
# Weight of the expression prior, ``prior · |e|²`` against squared pixels at the landmarks' camera
# (the Foundation fitter's convention): the MAP weight (σ / s)² for predicted lip landmarks off by
# σ ≈ 1.2 px (the audio model's validation error, at 224 px) and speech expressions of spread
# s ≈ 0.3. The Foundation's default of 1 (1 px detector noise, N(0, 1) expressions) lets the many
# weak mouth directions (lips_part, lower_lip_depress, jaw_left/right, fine detail) absorb
# prediction errors with large coefficients, and the strong ones (jaw_open, smile) lose what they
# should explain; see the learning check in scripts/train_audio_landmarks.py.
EXPRESSION_PRIOR = 16.0
# Gauss–Newton steps; the second one absorbs the perspective bend (see the module notes).
FIT_STEPS = 2
# iBUG jaw line without the chin. The audio model reads the jaw line off its pose tokens and the lips
# off its audio tokens (as IP_LAP does); its jaw-line error is about 1.7 times the lips' (L1 0.026
# against 0.015 inter-ocular units on held-out clips) and partly systematic (the jaw line lags the
# lips' opening), so those points count a quarter as much (1 / 1.7² ≈ 1/3 for the error size alone;
# the learning check's sweep over 1 … 0.1 is best at 0.25 … 0.1). The chin keeps full weight: it
# carries the jaw opening.
JAW_CONTOUR = tuple(i for i in range(17) if i != 8)
JAW_WEIGHT = 0.25
FIT_CHUNK_FRAMES = 1024


def mouth_weights(device: torch.device | str = "cpu") -> torch.Tensor:
    """``[68]``: 1 on the lip and jaw points, 0 elsewhere."""
    weights = torch.zeros(NUM_POINTS, device=device)
    weights[list(MOUTH_POINTS)] = 1.0
    return weights


def _mouth_columns(model: MorphableModel) -> torch.Tensor:
    """Basis columns (x, y, z of each lip and jaw landmark vertex) ``[37 · 3]``."""
    ids = model.landmark_ids[list(MOUTH_POINTS)]
    return (ids.unsqueeze(1) * 3 + torch.arange(3, device=ids.device)).flatten()


def mouth_directions(model: MorphableModel) -> torch.Tensor:
    """Boolean ``[n_exp]``: expression directions that move a lip or jaw landmark vertex."""
    reach = model.expression_basis[:, _mouth_columns(model)].abs().amax(1)
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


class MouthExpressionSolver:
    """Solves the seen expression directions from lip and jaw landmarks, identity and pose fixed
    (see the module notes); one instance per face model and camera, reused over chunks. The cost
    is Σ w·|projected − observed|² + prior·|e|² over the seen coefficients e, w = ``jaw_weight`` on
    the jaw line and 1 on the chin and lips."""

    def __init__(self, model: MorphableModel, camera: PerspectiveCamera, prior: float = EXPRESSION_PRIOR,
                 steps: int = FIT_STEPS, jaw_weight: float = JAW_WEIGHT) -> None:
        if not prior >= 0:
            raise TalkingFaceError(f"the expression prior must not be negative, got {prior}")
        if steps < 1:
            raise TalkingFaceError(f"the expression fit needs at least one step, got {steps}")
        self.camera, self.prior, self.steps = camera, prior, steps
        columns = _mouth_columns(model)
        self.seen = mouth_directions(model)
        self.mean = model.mean_shape[model.landmark_ids[list(MOUTH_POINTS)]]  # [37, 3]
        self.identity_basis = model.identity_basis[:, columns]  # [n_id, 111]
        self.expression_basis = model.expression_basis[:, columns]  # [n_exp, 111]
        self.directions = self.expression_basis[self.seen]  # [k, 111]
        if not jaw_weight > 0:
            raise ValueError(f"the jaw weight must be positive, got {jaw_weight}")
        weights = torch.ones(len(MOUTH_POINTS), device=self.mean.device)
        weights[[MOUTH_POINTS.index(i) for i in JAW_CONTOUR]] = jaw_weight
        self.point_weights = weights.view(-1, 1)  # [37, 1]: per squared pixel residual

    def solve(self, observed: torch.Tensor, base: FaceCoefficients) -> tuple[torch.Tensor, torch.Tensor]:
        """Seen expression coefficients ``[C, k]`` for lip and jaw points ``observed [C, 37, 2]`` (px)
        on top of ``base`` (C frames), and the RMS landmark error ``[C]`` in px."""
        seen = self.seen
        # Everything but the seen directions: object-space points that the fit moves from.
        fixed_offsets = base.identity @ self.identity_basis + base.expression.masked_fill(seen, 0.0) @ self.expression_basis
        fixed = self.mean + fixed_offsets.view(base.frames, -1, 3)
        rotation = rotation_matrices(base.rotation)
        translation = base.translation.unsqueeze(1)
        coefficients = base.expression[:, seen].clone()
        d_object, factor, scale = self._linearise(fixed, coefficients, rotation, translation)
        for _ in range(self.steps):
            residual = (self._pixels(fixed, coefficients, rotation, translation) - observed) * self.point_weights
            # Jᵀr without forming J: the residual pulled back to object space per point, then one
            # product with the directions.
            pulled = (residual.unsqueeze(-1) * d_object).sum(-2).flatten(1)  # [C, 37 · 3]
            gradient = (pulled @ self.directions.T + self.prior * coefficients) * scale
            if factor.shape[0] == 1:  # one system for every frame: the frames are its right-hand sides
                step = torch.cholesky_solve(gradient.T.unsqueeze(0), factor).squeeze(0).T
            else:
                step = torch.cholesky_solve(gradient.unsqueeze(-1), factor).squeeze(-1)
            coefficients = coefficients - scale * step
        residual = self._pixels(fixed, coefficients, rotation, translation) - observed
        return coefficients, residual.square().sum(-1).mean(-1).sqrt()

    def _world(self, fixed: torch.Tensor, coefficients: torch.Tensor, rotation: torch.Tensor,
               translation: torch.Tensor) -> torch.Tensor:
        points = fixed + (coefficients @ self.directions).view_as(fixed)
        return points @ rotation.transpose(1, 2) + translation

    def _pixels(self, fixed: torch.Tensor, coefficients: torch.Tensor, rotation: torch.Tensor,
                translation: torch.Tensor) -> torch.Tensor:
        return self.camera.project(self._world(fixed, coefficients, rotation, translation))

    def _linearise(self, fixed: torch.Tensor, coefficients: torch.Tensor, rotation: torch.Tensor,
                   translation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """At the base expression: d(pixel)/d(object point) ``[L, 37, 2, 3]``, the Cholesky factor
        ``[L, k, k]`` of JᵀJ + prior·I (J: pixels by seen coefficients) with columns scaled to a unit
        diagonal, and that column scale ``[L, k]``. L = 1 when every frame linearises at the same
        point (a held head), else one system per frame."""
        if all(bool((track == track[:1]).all()) for track in (fixed, coefficients, rotation, translation)):
            fixed, coefficients, rotation, translation = fixed[:1], coefficients[:1], rotation[:1], translation[:1]
        world = self._world(fixed, coefficients, rotation, translation)
        # u = f·x/(d - z) + c, v = c - f·y/(d - z)
        inverse_depth = 1.0 / self.camera.depth(world)
        focal = self.camera.focal * inverse_depth
        zero = torch.zeros_like(focal)
        d_pixel = torch.stack(
            [focal, zero, focal * world[..., 0] * inverse_depth, zero, -focal, -focal * world[..., 1] * inverse_depth],
            -1,
        ).view(*focal.shape, 2, 3)
        d_object = (d_pixel.flatten(1, 2) @ rotation).view_as(d_pixel)  # [L, 37, 2, 3]
        jacobian = torch.einsum("lpaj,kpj->lpak", d_object, self.directions.view(-1, *fixed.shape[1:]))
        jacobian = (jacobian * self.point_weights.sqrt().unsqueeze(-1)).flatten(1, 2)
        diagonal = jacobian.square().sum(1) + self.prior
        scale = diagonal.clamp_min(1e-12 * diagonal.amax(-1, keepdim=True)).rsqrt()
        scaled = jacobian * scale.unsqueeze(1)
        normal = scaled.transpose(1, 2) @ scaled
        # The prior, and a tiny floor for prior 0 with directions that move the points alike.
        normal.diagonal(dim1=-2, dim2=-1).add_(self.prior * scale.square() + 1e-6)
        factor, info = torch.linalg.cholesky_ex(normal)
        if bool((info != 0).any()) or not bool(torch.isfinite(factor).all()):
            raise TalkingFaceError(
                "the lip and jaw landmarks do not determine the expression for this face model and pose "
                "(the normal equations are singular): raise the expression prior"
            )
        return d_object, factor, scale


def landmarks_to_expression(
    model: MorphableModel,
    landmarks: TalkingLandmarks,
    smoothing: float = 0.5,
    prior: float = EXPRESSION_PRIOR,
    steps: int = FIT_STEPS,
    jaw_weight: float = JAW_WEIGHT,
    on_chunk: Callable[[int], None] | None = None,
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
    if landmarks.base.frames != landmarks.frames:
        raise TalkingFaceError(
            f"the landmarks have {landmarks.frames} frames but their base coefficients {landmarks.base.frames}"
        )
    solver = MouthExpressionSolver(model, landmarks.camera, prior, steps, jaw_weight)
    device = model.mean_shape.device
    base = landmarks.base.to(device, torch.float32)
    mouth = list(MOUTH_POINTS)
    fitted, errors = [], []
    for chunk in frame_chunks(landmarks.frames, FIT_CHUNK_FRAMES):
        coefficients, error = solver.solve(landmarks.points[chunk, mouth].to(device, torch.float32), base[chunk])
        fitted.append(coefficients)
        errors.append(error)
        if on_chunk is not None:
            on_chunk(chunk.stop)
    expression = base.expression.clone()
    expression[:, solver.seen] = smooth_tracks(torch.cat(fitted), smoothing)
    return base.replace(expression=expression), torch.cat(errors)
