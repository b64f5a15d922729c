"""The source photo's texture carried onto the target geometry through the 3DMM's own correspondence.

Source and target are one mesh under two coefficient sets, so every covered target pixel (a
triangle and barycentrics) names a surface point whose position in the source photo is known: where
the source's fitted mesh projects that same point. Sampling the photo there moves its real texture
(skin, stubble, make-up) to the target pose and expression with no learned correspondence.

A point is *valid* when the source saw it: it projects inside the source image and the source's own
z-buffer there is not nearer (the point was not hidden by the nose, the cheek or the far side of a
turned head). Relighting divides by the source's SH irradiance at the point and multiplies by the
target's (a ratio image over the shading, the albedo cancelling), so a face lit from the left in the
photo is lit as the target coefficients say.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F

from ..concurrent import run_in_parts
from ..errors import TalkingFaceError
from ..images import dilate_masks, erode_masks
from ..morphable.coefficients import FaceCoefficients
from .rasterizer import CoveredPixels, rasterize_covered
from .renderer import FaceRenderer
from .shading import shade_planar

# A target point counts as seen by the source when it lies at most this fraction of the face
# model's width behind the source's z-buffer (a 3x3 farthest-neighbour z-buffer, so grazing
# surfaces at the silhouette are not lost to sub-pixel depth slopes).
DEPTH_TOLERANCE = 0.02
# The irradiance ratio is bounded so near-black shading in either view cannot blow up the photo.
RELIGHT_RANGE = (0.25, 4.0)


@dataclass
class SourceView:
    """What the warp needs of the source frames, computed once and shared by every target chunk."""

    images: torch.Tensor  # [S, 3, h, w] the photos, channels-first 0..1 (any square size)
    screen: torch.Tensor  # [S, N, 3] every vertex's (u, v, depth) at the renderer's size
    depth_buffer: torch.Tensor  # [S, 1, H, W] farthest depth of each 3x3 neighbourhood, 0 within a pixel of the background
    normals: torch.Tensor  # [S, N, 3]
    lighting: torch.Tensor  # [S, 27]

    @property
    def frames(self) -> int:
        return self.images.shape[0]

    def select(self, frames: slice) -> SourceView:
        """The source rows of some target frames; a single shared source stays shared."""
        if self.frames == 1:
            return self
        return SourceView(*(value[frames] for value in (self.images, self.screen, self.depth_buffer, self.normals, self.lighting)))

    def take(self, rows: torch.Tensor) -> SourceView:
        """The source frames ``rows`` ``[B]`` (one per target frame, e.g. the source photo nearest each
        target's pose); a single source stays shared."""
        if self.frames == 1:
            return self
        return SourceView(*(value[rows] for value in (self.images, self.screen, self.depth_buffer, self.normals, self.lighting)))


@dataclass
class WarpedSource:
    """Channel-last maps of one batch of target frames."""

    image: torch.Tensor  # [B, H, W, 3] the source photo's colour at each valid target pixel, 0 elsewhere
    valid: torch.Tensor  # [B, H, W] 1 where the source saw the target's surface point
    coverage: torch.Tensor  # [B, H, W] 1 where the target face covers the pixel (valid or not)


class TextureTransfer:
    """Warps source photos onto target coefficient frames with ``renderer``'s model and camera."""

    def __init__(self, renderer: FaceRenderer) -> None:
        self.renderer = renderer
        model = renderer.model
        self.depth_tolerance = DEPTH_TOLERANCE * float(model.mean_shape[:, 0].max() - model.mean_shape[:, 0].min())

    @property
    def size(self) -> int:
        return self.renderer.camera.image_size

    @torch.no_grad()
    def prepare_source(self, coeffs: FaceCoefficients, images: torch.Tensor) -> SourceView:
        """The source frames: coefficients fitted to ``images`` ``[S, h, w, 3]`` (square crops in
        0..1, the framing the coefficients were fitted in, any resolution), one row each."""
        model, camera = self.renderer.model, self.renderer.camera
        model.check_coefficients(coeffs)
        if images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] != images.shape[2]:
            raise TalkingFaceError(f"the source images must be square RGB crops [S, h, h, 3], got {tuple(images.shape)}")
        if coeffs.frames != images.shape[0]:
            raise TalkingFaceError(
                f"{coeffs.frames} source coefficient rows for {images.shape[0]} source images: give one row per image"
            )
        reference = model.mean_shape
        coeffs = coeffs.to(device=reference.device, dtype=reference.dtype)
        vertices = model.posed_vertices(coeffs)
        screen = camera.to_screen(vertices)
        covered = rasterize_covered(screen, model.triangles, self.size, self.size)
        depth = covered.scatter(covered.depth).unsqueeze(1)
        # Within a pixel of the silhouette bilinear sampling would blend in the background: not valid.
        interior = erode_masks((depth > 0).to(depth.dtype), 1)
        return SourceView(
            images=images.to(device=reference.device, dtype=reference.dtype).permute(0, 3, 1, 2).contiguous(),
            screen=screen,
            depth_buffer=dilate_masks(depth, 1) * interior,
            normals=model.vertex_normals(vertices),
            lighting=coeffs.lighting,
        )

    @torch.no_grad()
    def warp(
        self, source: SourceView, target: FaceCoefficients, relight: bool = True,
        covered: CoveredPixels | None = None, target_vertices: torch.Tensor | None = None,
        target_normals: torch.Tensor | None = None,
    ) -> WarpedSource:
        """The source's texture on every frame of ``target`` (one source frame, or one per target
        frame). ``covered``, ``target_vertices`` and the planar unit ``target_normals [3, P]`` reuse
        a render of the same targets."""
        model = self.renderer.model
        model.check_coefficients(target)
        frames = target.frames
        if source.frames not in (1, frames):
            raise TalkingFaceError(f"{source.frames} source frames for {frames} target frames: give one source or one per frame")
        reference = model.mean_shape
        target = target.to(device=reference.device, dtype=reference.dtype)
        if target_vertices is None:
            target_vertices = model.posed_vertices(target)
        warped = WarpedSource(*(reference.new_empty(frames, self.size, self.size, *channels) for channels in ((3,), (), ())))
        # As in a render: on a CPU, groups of frames are warped concurrently, each into its slice of the maps.
        run_in_parts(partial(self._warp_frames, source, target, relight, covered, target_vertices, target_normals, warped),
                     frames, reference.device, items=frames * self.size * self.size)
        return warped

    def _warp_frames(
        self, source: SourceView, target: FaceCoefficients, relight: bool, covered: CoveredPixels | None,
        target_vertices: torch.Tensor, target_normals: torch.Tensor | None, warped: WarpedSource, frames: slice,
    ) -> None:
        model, camera = self.renderer.model, self.renderer.camera
        source, target, target_vertices = source.select(frames), target[frames], target_vertices[frames]
        if covered is None:
            covered = rasterize_covered(camera.to_screen(target_vertices), model.triangles, self.size, self.size)
        else:
            covered, pixel_range = covered.select_frames(frames)
            target_normals = None if target_normals is None else target_normals[:, pixel_range]
        triangles = model.triangles
        u, v, depth = covered.interpolate(source.screen, triangles)
        frame_of_pixel = covered.pixels // (self.size * self.size)
        grid = torch.stack([u, v], dim=-1).mul_(2.0 / self.size).sub_(1.0)  # pixel centres → align_corners=False
        colour = _sample_per_frame(source.images, grid, frame_of_pixel, "bilinear")
        nearest_depth = _sample_per_frame(source.depth_buffer, grid, frame_of_pixel, "nearest")[0]
        inside = (grid.abs() <= 1.0).all(dim=-1)
        seen = (nearest_depth > 0) & (depth <= nearest_depth + self.depth_tolerance) & inside
        if relight:
            sizes = covered.frame_sizes()
            if target_normals is None:
                target_normals = _unit(covered.interpolate(model.vertex_normals(target_vertices), triangles))
            source_normals = covered.interpolate(source.normals, triangles)
            ones = torch.ones_like(target_normals)
            target_light = shade_planar(ones, target_normals, target.lighting, sizes)
            source_lighting = source.lighting.expand(target.frames, -1) if source.frames == 1 else source.lighting
            source_light = shade_planar(ones, _unit(source_normals), source_lighting, sizes)
            ratio = target_light / source_light.clamp_min(1e-3)
            colour = colour * ratio.clamp_(*RELIGHT_RANGE)
        valid = seen.to(colour.dtype)
        covered.scatter((colour * valid).clamp_(0.0, 1.0), out=warped.image[frames])
        covered.scatter(valid, out=warped.valid[frames])
        covered.scatter(torch.ones_like(valid), out=warped.coverage[frames])


def _unit(planar: torch.Tensor) -> torch.Tensor:
    return planar * (planar * planar).sum(0).clamp_min(1e-24).rsqrt()


def _sample_per_frame(images: torch.Tensor, grid: torch.Tensor, frame_of_pixel: torch.Tensor, mode: str) -> torch.Tensor:
    """Values of ``images [S, C, h, w]`` at normalised points ``grid [P, 2]``, each point read from its
    frame's image (the only image when S is 1); planar ``[C, P]``."""
    if images.shape[0] == 1:
        sampled = F.grid_sample(images, grid.view(1, 1, -1, 2), mode=mode, padding_mode="border", align_corners=False)
        return sampled[0, :, 0]
    result = images.new_zeros(images.shape[1], grid.shape[0])
    counts = torch.bincount(frame_of_pixel, minlength=images.shape[0]).tolist()
    start = 0
    for frame, count in enumerate(counts):
        if count:
            points = grid[start : start + count].view(1, 1, -1, 2)
            result[:, start : start + count] = F.grid_sample(
                images[frame : frame + 1], points, mode=mode, padding_mode="border", align_corners=False
            )[0, :, 0]
        start += count
    return result
