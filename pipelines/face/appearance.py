"""Texture and SH lighting of a fitted face, estimated photometrically from its crop.

With the geometry fixed, a rendered pixel is ``(A0 + Σ_k t_k A_k) ⊙ (Y(n) · γ)`` per colour channel:
linear in the albedo coefficients ``t`` for fixed lighting ``γ`` and linear in ``γ`` for fixed ``t``.
So instead of gradient steps through the (non-differentiable) rasterizer, we rasterize once and
alternate two small regularised least-squares solves over the covered pixels (Cholesky on the
normal equations): lighting per frame (9 × 9 per channel), texture for all frames together (K × K).
"""
from __future__ import annotations

import torch

from ..errors import TalkingFaceError
from ..images import erode_masks
from ..morphable.camera import PerspectiveCamera
from ..morphable.coefficients import FaceCoefficients
from ..morphable.model import AMBIENT_LIGHT, MorphableModel
from ..render.rasterizer import rasterize_covered
from ..render.shading import NUM_SH_BANDS, sh_terms

# Colour noise the texture prior assumes (0..1 units): model error, not sensor noise.
COLOUR_NOISE = 0.1
LIGHTING_PRIOR = 1e-4


def _ridge_solve(hessian: torch.Tensor, rhs: torch.Tensor, damping: torch.Tensor | float) -> torch.Tensor:
    """Solve ``(H + damping·I) x = rhs`` for batched SPD ``H`` ``[..., n, n]`` and ``rhs`` ``[..., n]``."""
    eye = torch.eye(hessian.shape[-1], dtype=hessian.dtype, device=hessian.device)
    factor = torch.linalg.cholesky(hessian + damping * eye)
    return torch.cholesky_solve(rhs.unsqueeze(-1), factor).squeeze(-1)


class _Pixels:
    """The covered pixels of a batch of fitted faces and what the linear model needs there."""

    def __init__(self, model: MorphableModel, coeffs: FaceCoefficients, crops: torch.Tensor, erode: int) -> None:
        size = crops.shape[1]
        camera = PerspectiveCamera.deep3d(size)
        with torch.no_grad():
            vertices = model.posed_vertices(coeffs)
            covered = rasterize_covered(camera.to_screen(vertices), model.triangles, size, size)
            normals = covered.interpolate(model.vertex_normals(vertices), model.triangles)
        normals = normals * normals.pow(2).sum(0).clamp_min(1e-24).rsqrt()
        # Pixels at the silhouette mix face and background; drop a rim of ``erode`` px.
        mask = covered.scatter(torch.ones_like(covered.depth)).unsqueeze(1)
        if erode > 0:
            mask = erode_masks(mask, erode)
        observed = crops.reshape(-1, 3).index_select(0, covered.pixels).T.to(normals)  # [3, P]
        # Crops reaching outside the frame are black there: those pixels say nothing about the face.
        keep = (mask.view(-1).index_select(0, covered.pixels) > 0.5) & (observed.sum(0) > 1e-4)
        self.frame = (covered.pixels // (size * size))[keep]
        self.frames = crops.shape[0]
        self.observed = observed[:, keep]
        self.sh_basis = torch.stack(sh_terms(*normals[:, keep]))  # [9, P]
        triangles = model.triangles
        self.mean_albedo = covered.interpolate(model.mean_albedo.unsqueeze(0), triangles)[:, keep]  # [3, P]
        basis = model.albedo_basis.view(-1, model.num_vertices, 3).permute(1, 0, 2).reshape(1, model.num_vertices, -1)
        planes = covered.interpolate(basis, triangles)[:, keep]  # [K·3, P]
        self.albedo_basis = planes.view(-1, 3, planes.shape[-1])  # [K, 3, P]

    def albedo(self, texture: torch.Tensor) -> torch.Tensor:
        """``[3, P]`` for texture ``[T, K]`` (row per frame)."""
        per_pixel = texture[self.frame]  # [P, K]
        return self.mean_albedo + torch.einsum("pk,kcp->cp", per_pixel, self.albedo_basis)

    def solve_lighting(self, albedo: torch.Tensor) -> torch.Tensor:
        """Per-frame lighting ``[T, 27]`` for a fixed albedo."""
        gamma = []
        for channel in range(3):
            design = albedo[channel] * self.sh_basis  # [9, P]
            outer = (design.unsqueeze(0) * design.unsqueeze(1)).reshape(NUM_SH_BANDS ** 2, -1).T  # [P, 81]
            hessian = torch.zeros(self.frames, NUM_SH_BANDS ** 2, dtype=design.dtype, device=design.device)
            hessian.index_add_(0, self.frame, outer)
            rhs = torch.zeros(self.frames, NUM_SH_BANDS, dtype=design.dtype, device=design.device)
            rhs.index_add_(0, self.frame, (design * self.observed[channel]).T)
            hessian = hessian.view(-1, NUM_SH_BANDS, NUM_SH_BANDS)
            # Solve for the offset from ambient light, pulled gently towards it.
            ambient = torch.zeros(NUM_SH_BANDS, dtype=design.dtype, device=design.device)
            ambient[0] = AMBIENT_LIGHT
            offset = _ridge_solve(hessian, rhs - hessian @ ambient, LIGHTING_PRIOR * hessian[:, 0, 0].clamp_min(1.0).unsqueeze(-1).unsqueeze(-1))
            gamma.append(offset)
        return torch.stack(gamma, 1).reshape(self.frames, 3 * NUM_SH_BANDS)

    def irradiance(self, lighting: torch.Tensor) -> torch.Tensor:
        gamma = lighting.view(-1, 3, NUM_SH_BANDS).clone()
        gamma[:, :, 0] += AMBIENT_LIGHT
        return torch.einsum("pcb,bp->cp", gamma[self.frame], self.sh_basis)  # [3, P]

    def solve_texture(self, lighting: torch.Tensor, prior: float, shared: bool) -> torch.Tensor:
        irradiance = self.irradiance(lighting)
        design = self.albedo_basis * irradiance.unsqueeze(0)  # [K, 3, P]
        residual = self.observed - self.mean_albedo * irradiance  # [3, P]
        count = design.shape[0]
        if shared:
            flat = design.reshape(count, -1)
            hessian = flat @ flat.T
            rhs = flat @ residual.reshape(-1)
            return _ridge_solve(hessian, rhs, prior * COLOUR_NOISE ** 2).expand(self.frames, -1)
        hessian = torch.zeros(self.frames, count * count, dtype=design.dtype, device=design.device)
        rhs = torch.zeros(self.frames, count, dtype=design.dtype, device=design.device)
        for channel in range(3):
            d = design[:, channel]  # [K, P]
            hessian.index_add_(0, self.frame, (d.unsqueeze(0) * d.unsqueeze(1)).reshape(count * count, -1).T)
            rhs.index_add_(0, self.frame, (d * residual[channel]).T)
        return _ridge_solve(hessian.view(-1, count, count), rhs, prior * COLOUR_NOISE ** 2)


def estimate_appearance(
    model: MorphableModel,
    coeffs: FaceCoefficients,
    crops: torch.Tensor,
    iterations: int = 4,
    texture_prior: float = 1.0,
    shared_texture: bool = True,
    fixed_texture: torch.Tensor | None = None,
    erode: int = 1,
) -> FaceCoefficients:
    """Texture and lighting for fitted ``coeffs`` from the crops ``[T, S, S, 3]`` they were fitted in
    (the Deep3DFaceRecon camera scaled to S). ``shared_texture`` gives all frames one texture (one
    person); ``fixed_texture`` ``[K]`` skips the texture and solves lighting only."""
    model.check_coefficients(coeffs)
    if crops.ndim != 4 or crops.shape[0] != coeffs.frames or crops.shape[1] != crops.shape[2]:
        raise TalkingFaceError(
            f"appearance needs one square crop per coefficient frame: {coeffs.frames} frames, crops {tuple(crops.shape)}"
        )
    device = model.mean_shape.device
    coeffs = coeffs.to(device=device, dtype=torch.float32)
    pixels = _Pixels(model, coeffs, crops.to(device=device, dtype=torch.float32), erode)
    if pixels.frame.numel() == 0:
        raise TalkingFaceError("the fitted face covers no pixel of its crop, so the fit failed: check the faces (Preview Face Landmarks) and use a larger, more frontal face")
    frames = coeffs.frames
    texture = (fixed_texture.to(device).view(1, -1).expand(frames, -1) if fixed_texture is not None
               else torch.zeros(frames, model.dims.texture, device=device))
    lighting = coeffs.lighting.new_zeros(frames, 3 * NUM_SH_BANDS)
    for _ in range(max(1, iterations)):
        lighting = pixels.solve_lighting(pixels.albedo(texture))
        if fixed_texture is not None:
            break
        texture = pixels.solve_texture(lighting, texture_prior, shared_texture)
    lighting = pixels.solve_lighting(pixels.albedo(texture))
    return coeffs.replace(texture=texture.contiguous(), lighting=lighting)
