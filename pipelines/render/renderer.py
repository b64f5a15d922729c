"""Coefficients to TGDM's render target I_3d and the maps rasterized with it."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property, partial

import torch
from torch import nn

from ..concurrent import run_in_parts
from ..morphable.camera import PerspectiveCamera
from ..morphable.coefficients import FaceCoefficients
from ..morphable.model import MorphableModel
from .rasterizer import CoveredPixels, rasterize_covered
from .shading import shade_planar


@dataclass
class RenderMaps:
    """Channel-last maps of one batch of frames; all but ``triangle_ids`` are zero on the background.
    ``depth``, ``albedo`` and ``triangle_ids`` become maps when first read: no node reads them, and
    scattering them into maps cost 4% of a render at 256². So are the covered pixels joined from
    the groups of frames rendered concurrently (3% of a render)."""

    image: torch.Tensor  # [B, H, W, 3] SH-lit albedo on black, clamped to 0..1 (TGDM's I_3d)
    mask: torch.Tensor  # [B, H, W] 1 on the face
    normals: torch.Tensor  # [B, H, W, 3] unit normals, world = camera axes (x right, y up, z to the camera)
    surface: torch.Tensor  # [B, H, W, 3] the model's surface coordinates (0..1) of the visible point
    landmarks: torch.Tensor  # [B, 68, 2] the model's landmark vertices projected to pixels
    # Per group of consecutive frames: its covered pixels and the unlit albedo [3, P] there.
    covered_parts: list[tuple[CoveredPixels, torch.Tensor]] = field(repr=False)

    @cached_property
    def covered(self) -> CoveredPixels:
        return CoveredPixels.concatenate([part[0] for part in self.covered_parts])

    @cached_property
    def covered_albedo(self) -> torch.Tensor:
        """[3, P] unlit albedo at the covered pixels."""
        return torch.cat([part[1] for part in self.covered_parts], dim=1)

    @cached_property
    def depth(self) -> torch.Tensor:
        """[B, H, W] distance along the viewing axis."""
        return self.covered.scatter(self.covered.depth.to(self.image.dtype))

    @cached_property
    def albedo(self) -> torch.Tensor:
        """[B, H, W, 3] unlit albedo, clamped to 0..1."""
        return self.covered.scatter(self.covered_albedo.clamp(0.0, 1.0))

    @cached_property
    def triangle_ids(self) -> torch.Tensor:
        """[B, H, W] int64, -1 on the background."""
        return self.covered.scatter(self.covered.triangle_ids, -1)


def normals_to_image(normals: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A displayable IMAGE of unit normals: each component mapped from -1..1 to 0..1, black background."""
    return (normals + 1.0) * 0.5 * mask.unsqueeze(-1)


class FaceRenderer(nn.Module):
    """Renders a 3DMM through a camera; moves with the model under ``.to()``."""

    def __init__(self, model: MorphableModel, camera: PerspectiveCamera) -> None:
        super().__init__()
        self.model = model
        self.camera = camera

    def render(self, coeffs: FaceCoefficients) -> RenderMaps:
        """Render every frame of ``coeffs``; they are moved to the model's device and dtype."""
        return self._render(coeffs)[0]

    def render_with_coverage(self, coeffs: FaceCoefficients) -> tuple[RenderMaps, CoveredPixels, torch.Tensor]:
        """:meth:`render`, plus the covered pixels and the posed vertices it rasterized, for work
        that reuses them (the texture transfer onto the same targets)."""
        maps, vertices = self._render(coeffs)
        return maps, maps.covered, vertices

    def _render(self, coeffs: FaceCoefficients) -> tuple[RenderMaps, torch.Tensor]:
        self.model.check_coefficients(coeffs)
        reference = self.model.mean_shape
        coeffs = coeffs.to(device=reference.device, dtype=reference.dtype)
        size = self.camera.image_size
        with torch.no_grad():
            vertices = self.model.posed_vertices(coeffs)
            albedo = self.model.albedo(coeffs.texture)
            maps = {name: reference.new_empty(coeffs.frames, size, size, *channels)
                    for name, channels in (("image", (3,)), ("mask", ()), ("normals", (3,)), ("surface", (3,)))}
            # Most of a render is operations that run on one thread or are too small to split:
            # on a CPU, groups of frames are rendered concurrently, each into its slice of the maps.
            parts = run_in_parts(partial(self._render_frames, coeffs.lighting, vertices, albedo, maps),
                                 coeffs.frames, reference.device, items=coeffs.frames * size * size)
            render_maps = RenderMaps(
                **maps, landmarks=self.camera.project(vertices[:, self.model.landmark_ids]), covered_parts=parts
            )
            return render_maps, vertices

    def _render_frames(self, lighting: torch.Tensor, vertices: torch.Tensor, vertex_albedo: torch.Tensor,
                       maps: dict[str, torch.Tensor], frames: slice) -> tuple[CoveredPixels, torch.Tensor]:
        """Rasterize and shade ``frames`` into their slice of ``maps``; their covered pixels and
        unlit albedo there."""
        size, triangles = self.camera.image_size, self.model.triangles
        vertices = vertices[frames]
        covered = rasterize_covered(self.camera.to_screen(vertices), triangles, size, size)
        # Stacked as planes [6, B, N] and passed as a [B, N, 6] view, which interpolation reads
        # without a copy (the vertex normals already are planar).
        planes = torch.cat([
            self.model.vertex_normals(vertices).permute(2, 0, 1), vertex_albedo[frames].permute(2, 0, 1)
        ])  # fmt: skip
        normals, albedo = covered.interpolate(planes.permute(1, 2, 0), triangles).split(3)
        surface = covered.interpolate(self.model.surface_coords.unsqueeze(0), triangles)
        # Interpolated unit normals are shorter than 1 inside a triangle.
        normals = normals * (normals * normals).sum(0).clamp_min_(1e-24).rsqrt_()
        image = shade_planar(albedo, normals, lighting[frames], covered.frame_sizes())
        covered.scatter(image.clamp_(0.0, 1.0), out=maps["image"][frames])
        covered.scatter(albedo.new_ones(covered.pixels.numel()), out=maps["mask"][frames])
        covered.scatter(normals, out=maps["normals"][frames])
        covered.scatter(surface, out=maps["surface"][frames])
        return covered, albedo
