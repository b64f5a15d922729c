"""The model as the landmark fit sees it: only the rows of the vertices matched to landmarks (and
the jaw-contour candidates), projected through the camera, with analytic Jacobians.

Only these rows of the bases are ever used, so a step costs the same for a 1k- or a 35k-vertex
model."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..camera import PerspectiveCamera
from ..model import NUM_LANDMARKS, MorphableModel, rotation_matrices
from .contour import JAW_CONTOUR, ContourCandidates
from .parameters import ParameterLayout


@dataclass
class Rows:
    """Mean ``[1 or B, L, 3]`` and basis ``[1 or B, L, 3, K]`` rows of the vertices matched to the
    landmarks; a leading 1 means every face uses the same vertices (no per-face copy)."""

    mean: torch.Tensor
    basis: torch.Tensor

    @property
    def shared(self) -> bool:
        return self.mean.shape[0] == 1

    def take(self, index: torch.Tensor) -> Rows:
        return self if self.shared else Rows(self.mean[index], self.basis[index])


@dataclass
class Correspondence:
    """Where each landmark sits on the model, per face: at ``(1 − blend)·first + blend·second`` of
    two rows (slots ``[B, 68]``, blend ``[B, 68]``; a blend of 0 is the ``first`` vertex itself)."""

    first: torch.Tensor
    second: torch.Tensor
    blend: torch.Tensor

    @classmethod
    def at(cls, slots: torch.Tensor) -> Correspondence:
        """Every landmark on one vertex."""
        return cls(slots, slots, torch.zeros(slots.shape, device=slots.device))

    def changed(self, previous: Correspondence | None) -> torch.Tensor:
        """``[B]`` bool: faces whose correspondence moved since ``previous`` (all, without one)."""
        if previous is None:
            return torch.ones_like(self.first[:, 0], dtype=torch.bool)
        return (
            (self.first != previous.first).any(-1) | (self.second != previous.second).any(-1)
            | ((self.blend - previous.blend).abs() > 1e-3).any(-1)
        )


class LandmarkProjection:
    """Landmark positions in the camera's image (pixels, origin top-left, y down) as a function of
    the parameter vector, and their Jacobian. With ``follow_contour`` the jaw landmarks slide along
    the silhouette (:meth:`select_contour`); without, every landmark keeps its vertex."""

    def __init__(self, model: MorphableModel, camera: PerspectiveCamera, layout: ParameterLayout, follow_contour: bool) -> None:
        self.camera = camera
        self.layout = layout
        self.follow_contour = follow_contour
        device = model.mean_shape.device
        self.contour_slots = torch.tensor(JAW_CONTOUR, device=device)
        contour = ContourCandidates.for_model(model)
        self.landmark_slots, self.candidate_slots, self.candidate_sides = (
            contour.landmark_slots, contour.candidate_slots, contour.sides)
        self.middle_station = contour.middle_station
        # Only these vertices ever enter the fit: landmark vertices and jaw-contour candidates.
        self.mean_rows = model.mean_shape[contour.rows]  # [U, 3]
        bases = torch.cat([model.identity_basis, model.expression_basis], 0).view(-1, model.num_vertices, 3)
        self.basis_rows = bases[:, contour.rows].permute(1, 2, 0).contiguous()  # [U, 3, n_id + n_exp]
        # Each distinct candidate is projected once; the padded [16, S, K] layout indexes into them.
        distinct, self._candidate_layout = torch.unique(self.candidate_slots, return_inverse=True)
        self._candidate_rows = self.rows(distinct.unsqueeze(0))

    def rows(self, where: torch.Tensor | Correspondence) -> Rows:
        """Mean and basis rows for per-face slots ``[B, L]`` (shared when all faces agree) or for the
        points of a :class:`Correspondence`."""
        if isinstance(where, Correspondence):
            if not bool(where.blend.any()):
                return self.rows(where.first)
            first, second = self.rows(where.first), self.rows(where.second)
            blend = where.blend.unsqueeze(-1)
            return Rows(torch.lerp(first.mean, second.mean, blend),
                        first.basis + blend.unsqueeze(-1) * (second.basis - first.basis))
        if bool((where == where[:1]).all()):
            where = where[:1]
        return Rows(self.mean_rows[where], self.basis_rows[where])

    def landmark_rows(self) -> Rows:
        """The fixed landmark vertices, shared by all faces."""
        return self.rows(self.landmark_slots.unsqueeze(0))

    def points(self, params: torch.Tensor, rows: Rows) -> torch.Tensor:
        """Object-space points ``[B, L, 3]``."""
        coefficients = params[:, 6:]
        if rows.shared:
            return rows.mean + torch.einsum("lik,bk->bli", rows.basis[0], coefficients)
        return rows.mean + torch.einsum("blik,bk->bli", rows.basis, coefficients)

    def project(self, params: torch.Tensor, rows: Rows) -> torch.Tensor:
        """Pixel positions ``[B, L, 2]``."""
        world = self.points(params, rows) @ rotation_matrices(params[:, :3]).transpose(1, 2) + params[:, None, 3:6]
        return self.camera.project(world)

    def residuals(
        self,
        params: torch.Tensor,
        rows: Rows,
        observed: torch.Tensor,
        sqrt_weights: torch.Tensor | None,
        free: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Weighted residuals ``[B, 2L]`` and, when ``free`` is given, their Jacobian ``[B, 2L, Pf]``
        with respect to those parameter columns (analytic: faster than ``torch.func.jacfwd``)."""
        points = self.points(params, rows)
        angles = params[:, :3]
        rotation = rotation_matrices(angles)
        world = points @ rotation.transpose(1, 2) + params[:, None, 3:6]
        residual = self.camera.project(world) - observed
        if sqrt_weights is not None:
            residual = residual * sqrt_weights.unsqueeze(-1)
        residual = residual.flatten(1)
        if free is None:
            return residual, None
        # d(pixel)/d(world point): u = f·x/(d - z) + c, v = c - f·y/(d - z).
        inverse_depth = 1.0 / self.camera.depth(world)
        scale = self.camera.focal * inverse_depth
        if sqrt_weights is not None:
            scale = scale * sqrt_weights
        zero = torch.zeros_like(scale)
        d_pixel = torch.stack(
            [scale, zero, scale * world[..., 0] * inverse_depth, zero, -scale, -scale * world[..., 1] * inverse_depth],
            -1,
        ).view(*scale.shape, 2, 3)
        free_groups = self.layout.groups_of(free)
        blocks = []
        if "rotation" in free_groups:
            d_world = torch.einsum("bkij,blj->blik", rotation_derivatives(angles), points)
            blocks.append((0, d_pixel @ d_world))
        if "translation" in free_groups:
            blocks.append((3, d_pixel))
        coefficient_groups = [g for g in ("identity", "expression") if g in free_groups]
        if coefficient_groups:
            # Only the basis columns of the free groups: an expression-only fit skips the identity.
            first = self.layout.slice(coefficient_groups[0]).start
            last = self.layout.slice(coefficient_groups[-1]).stop
            d_object = d_pixel @ rotation.unsqueeze(1)  # [B, L, 2, 3]
            basis = rows.basis[..., first - 6 : last - 6]
            if rows.shared:
                blocks.append((first, torch.einsum("blpi,lik->blpk", d_object, basis[0])))
            else:
                # Per-face rows: three broadcast multiply-adds beat B·L tiny matrix products.
                block = d_object[..., 0, None] * basis[:, :, None, 0]
                for axis in (1, 2):
                    block = block.addcmul(d_object[..., axis, None], basis[:, :, None, axis])
                blocks.append((first, block))
        jacobian = torch.cat([block for _, block in blocks], -1).flatten(1, 2)
        present = torch.cat(
            [torch.arange(start, start + block.shape[-1], device=params.device) for start, block in blocks]
        )
        if present.numel() == free.numel() and bool((present == free).all()):
            return residual, jacobian
        # Where each requested column sits among the blocks that were built.
        position = torch.full((self.layout.size,), -1, dtype=torch.long, device=params.device)
        position[present] = torch.arange(present.numel(), device=params.device)
        return residual, jacobian[..., position[free]]

    def tracks(
        self, params: torch.Tensor, rows: Rows, free: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Projected landmarks ``[B, 2L]`` (x, y interleaved) and, for ``free`` columns, their
        unweighted Jacobian."""
        origin = params.new_zeros(params.shape[0], rows.mean.shape[1], 2)
        return self.residuals(params, rows, origin, None, free)

    def select_contour(self, params: torch.Tensor, observed: torch.Tensor | None = None) -> Correspondence:
        """The landmarks' places on the model with each jaw landmark moved onto the silhouette: per
        station, the candidate that projects furthest outwards (the outline at that height for the
        current pose and shape); along the outline through the stations, the point projecting nearest
        the ``observed`` landmark ``[B, 68, 2]`` (without observations, the landmark's own height)."""
        batch = params.shape[0]
        slots = self.landmark_slots.expand(batch, -1).clone()
        if not self.follow_contour:
            return Correspondence.at(slots)
        points = self.points(params, self._candidate_rows)
        rotation = rotation_matrices(params[:, :3])
        world = points @ rotation.transpose(1, 2) + params[:, None, 3:6]
        projected = self.camera.project(world)  # [B, D, 2] the distinct candidates
        # The face's own x axis as seen in the image (v points down), so roll and pitch count too.
        axis = torch.stack([rotation[:, 0, 0], -rotation[:, 1, 0]], -1)
        along_axis = (projected * axis.unsqueeze(1)).sum(-1)[:, self._candidate_layout]  # [B, 16, S, K]
        best = (along_axis * self.candidate_sides[:, None, None]).argmax(-1, keepdim=True)  # [B, 16, S, 1]
        outline_slots = self.candidate_slots.expand(batch, -1, -1, -1).gather(-1, best).squeeze(-1)  # [B, 16, S]
        second = slots.clone()
        blend = torch.zeros(slots.shape, device=slots.device)
        if observed is None:
            slots[:, self.contour_slots] = second[:, self.contour_slots] = outline_slots[..., self.middle_station]
            return Correspondence(slots, second, blend)
        chosen = self._candidate_layout.expand(batch, -1, -1, -1).gather(-1, best).flatten(1)
        outline = projected.gather(1, chosen.unsqueeze(-1).expand(-1, -1, 2)).view(*outline_slots.shape, 2)  # [B, 16, S, 2]
        # The nearest point on each segment between neighbouring stations, then the nearest segment.
        start, step = outline[:, :, :-1], outline.diff(dim=2)
        target = observed[:, self.contour_slots].unsqueeze(2)
        along = (((target - start) * step).sum(-1) / step.square().sum(-1).clamp_min(1e-12)).clamp(0.0, 1.0)
        distance = (start + along.unsqueeze(-1) * step - target).square().sum(-1)  # [B, 16, S - 1]
        segment = distance.argmin(-1, keepdim=True)
        slots[:, self.contour_slots] = outline_slots.gather(-1, segment).squeeze(-1)
        second[:, self.contour_slots] = outline_slots.gather(-1, segment + 1).squeeze(-1)
        blend[:, self.contour_slots] = along.gather(-1, segment).squeeze(-1)
        return Correspondence(slots, second, blend)

    def pixels_per_unit(self) -> torch.Tensor:
        """RMS landmark motion in px per unit of each parameter, for the mean face seen frontally
        at the origin: the scale of the pose prior."""
        params = self.mean_rows.new_zeros(1, self.layout.size)
        _, jacobian = self.tracks(params, self.landmark_rows(), torch.arange(self.layout.size, device=params.device))
        return jacobian[0].norm(dim=0) / math.sqrt(NUM_LANDMARKS)


def rotation_derivatives(angles: torch.Tensor) -> torch.Tensor:
    """dR/d(angle) ``[B, 3, 3, 3]`` for R = Rz·Ry·Rx, indexed (angle, row, column)."""
    x, y, z = angles.unbind(-1)
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    cx, sx, cy, sy, cz, sz = x.cos(), x.sin(), y.cos(), y.sin(), z.cos(), z.sin()

    def matrix(*entries: torch.Tensor) -> torch.Tensor:
        return torch.stack(entries, -1).view(-1, 3, 3)

    rot_x = matrix(one, zero, zero, zero, cx, -sx, zero, sx, cx)
    rot_y = matrix(cy, zero, sy, zero, one, zero, -sy, zero, cy)
    rot_z = matrix(cz, -sz, zero, sz, cz, zero, zero, zero, one)
    d_x = matrix(zero, zero, zero, zero, -sx, -cx, zero, cx, -sx)
    d_y = matrix(-sy, zero, cy, zero, zero, zero, -cy, zero, -sy)
    d_z = matrix(-sz, -cz, zero, cz, -sz, zero, zero, zero, zero)
    return torch.stack([rot_z @ rot_y @ d_x, rot_z @ d_y @ rot_x, d_z @ rot_y @ rot_x], 1)
