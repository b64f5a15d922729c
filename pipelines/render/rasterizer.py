"""Batched z-buffer rasterization of triangle meshes in pure PyTorch, on CPU and CUDA.

Input vertices are in screen space, ``(u, v, depth)`` as :meth:`PerspectiveCamera.to_screen` gives
them: ``u`` right and ``v`` down in pixels, pixel (row i, column j) sampled at its centre
(px, py) = (j + 0.5, i + 0.5), ``depth`` the positive distance along the viewing axis.

The arithmetic is fixed, so any float32 implementation that repeats it (the brute-force
reference in the tests does) covers exactly the same pixels. Per triangle, let P0, P1, P2 be
its corners ordered by vertex id (lowest first), with coordinates (x_k, y_k, z_k):

* ``area2 = (x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0)`` and ``s = sign(area2)``. The
  triangle as given (``triangles[f]`` order) has the signed area ``parity * area2``, parity
  being +1 when the id order is a rotation of the given order, else -1. With v pointing down,
  a triangle that is counter-clockwise seen from the camera (world y up: the 3DMM's outward
  winding) has a negative signed area, and that is front-facing. Triangles with
  ``area2 == 0`` or a corner at ``depth <= DEPTH_EPSILON`` are skipped.
* Edge functions, each positive inside whatever the winding, with ``d0 = s * (P2 - P1)``,
  ``d1 = -s * (P2 - P0)``, ``d2 = s * (P1 - P0)``::

      w0 = d0x * (py - y1) - d0y * (px - x1)
      w1 = d1x * (py - y0) - d1y * (px - x0)
      w2 = d2x * (py - y0) - d2y * (px - x0)

  Every edge is measured from its lower-id end, so two triangles sharing an edge compute
  exactly opposite values along it: meshes are watertight.
* A pixel centre is inside when every ``w_k > 0``, or ``w_k == 0`` on an edge the triangle
  owns: ``dy > 0``, or ``dy == 0`` and ``dx > 0``, for its ``d_k``. Of two triangles sharing an
  edge exactly one owns it, so pixel centres on the edge are covered once. (Computed without
  booleans, which are slow on CPUs, as ``min_k(w_k + b_k) > 0`` with ``b_k`` the smallest normal
  float32 on owned edges and 0 elsewhere: the same test for every ``w`` outside ±that tiny value.)
* ``r_k = (1 / z_k) / |area2|`` and ``q = w0 * r0 + w1 * r1 + w2 * r2``, the perspective-correct
  inverse depth. The largest ``q`` (nearest surface) wins, ties going to the lowest triangle
  id. The barycentric of P_k is ``w_k * r_k / q`` and the depth is ``1 / q``.
"""
from __future__ import annotations

import itertools
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial

import torch

from ..concurrent import parts_for, run_concurrently, run_in_parts
from ..mesh_cache import LastDerived, frame_offset_ids

DEPTH_EPSILON = 1e-6
# Pixel centres this close outside a triangle's bounding box are still tested, so rounding in
# the edge functions can never make the box disagree with a brute-force z-buffer.
_BOX_MARGIN = 1.0 / 64.0
_TILE = 8
# Candidate boxes are padded to one of these widths and heights. Each group costs a few dozen
# kernel launches, which outweighs testing some padding pixels.
_SIZES = (1, 2, 4, 8)
_SIZE_INDEX = (0, 0, 1, 2, 2, 3, 3, 3, 3)  # box size 1..8 → index into _SIZES
_LARGE_GROUP = len(_SIZES) ** 2
_MAX_CANDIDATES_PER_CHUNK = 1 << 19
_MAX_TRIANGLES_PER_PASS = 1 << 20
_MAX_PIXELS_PER_PASS = 1 << 23
_TINY = torch.finfo(torch.float32).tiny


@dataclass
class Fragments:
    """What covers each pixel. Background pixels have ``triangle_ids == -1``, zero barycentrics
    and zero depth."""

    triangle_ids: torch.Tensor  # [B, H, W] int64
    barycentrics: torch.Tensor  # [B, H, W, 3] perspective-correct, in triangles[id] corner order
    depth: torch.Tensor  # [B, H, W] distance along the viewing axis

    @property
    def mask(self) -> torch.Tensor:
        return self.triangle_ids >= 0


@dataclass
class CoveredPixels:
    """The same information for the covered pixels only: the compact form to compute on.
    Per-pixel quantities with channels are planar, ``[C, P]``."""

    pixels: torch.Tensor  # [P] int64 flat index frame * H * W + row * W + column, ascending
    triangle_ids: torch.Tensor  # [P]
    barycentrics: torch.Tensor  # [3, P] in triangles[id] corner order, or sorted_mesh's when it is set
    depth: torch.Tensor  # [P]
    batch: int
    height: int
    width: int
    # The rasterizer leaves barycentrics in its own corner order (vertex ids ascending):
    # interpolation reads the corners in that order too, and only Fragments reorder them.
    sorted_mesh: _SortedMesh | None = None
    _corner_cache: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def of(cls, fragments: Fragments) -> CoveredPixels:
        batch, height, width = fragments.triangle_ids.shape
        flat_ids = fragments.triangle_ids.view(-1)
        pixels = (flat_ids >= 0).nonzero().squeeze(1)
        flat_barycentrics = fragments.barycentrics.view(-1, 3)
        return cls(
            pixels=pixels,
            triangle_ids=flat_ids.index_select(0, pixels),
            barycentrics=torch.stack([flat_barycentrics[:, k].index_select(0, pixels) for k in range(3)]),
            depth=fragments.depth.view(-1).index_select(0, pixels),
            batch=batch,
            height=height,
            width=width,
        )

    def frame_sizes(self) -> list[int]:
        """Covered pixels per frame; each frame's are consecutive."""
        frame_ends = torch.arange(1, self.batch + 1, device=self.pixels.device) * (self.height * self.width)
        ends = torch.searchsorted(self.pixels, frame_ends).tolist()
        return [end - start for start, end in zip([0, *ends][:-1], ends, strict=True)]

    def scatter(self, values: torch.Tensor, background: float = 0.0, out: torch.Tensor | None = None) -> torch.Tensor:
        """Per-pixel ``values``, ``[P]`` or planar ``[C, P]``, to a ``[B, H, W]`` or channel-last
        ``[B, H, W, C]`` map filled with ``background``: a new one, or ``out`` (contiguous, of
        that shape and of ``values``' dtype) overwritten."""
        # Whole rows from the transposed view: faster than one strided column per channel.
        rows = values if values.ndim == 1 else values.t()
        shape = (self.batch, self.height, self.width, *rows.shape[1:])
        if out is None:
            out = values.new_empty(shape)
        elif out.shape != shape or not out.is_contiguous() or out.dtype != values.dtype:
            raise ValueError(f"out must be a contiguous {values.dtype} map of shape {shape}, got {out.dtype} {tuple(out.shape)}")
        dense = out.view(-1, *rows.shape[1:]).fill_(background)
        # index_copy_ runs on one thread: on a CPU the parts' disjoint pixels are copied concurrently.
        run_in_parts(lambda part: dense.index_copy_(0, self.pixels[part], rows[part]), rows.shape[0], self.pixels.device)
        return out

    def select_frames(self, frames: slice) -> tuple[CoveredPixels, slice]:
        """The covered pixels of consecutive ``frames`` as a batch of their own, and where they lie
        in this batch's per-pixel arrays."""
        first, stop, _ = frames.indices(self.batch)
        sizes = self.frame_sizes()
        start = sum(sizes[:first])
        pixel_range = slice(start, start + sum(sizes[first:stop]))
        part = CoveredPixels(
            pixels=self.pixels[pixel_range] - first * self.height * self.width,
            triangle_ids=self.triangle_ids[pixel_range],
            barycentrics=self.barycentrics[:, pixel_range],
            depth=self.depth[pixel_range],
            batch=max(0, stop - first),
            height=self.height,
            width=self.width,
            sorted_mesh=self.sorted_mesh,
        )
        return part, pixel_range

    @classmethod
    def concatenate(cls, parts: Sequence[CoveredPixels]) -> CoveredPixels:
        """The covered pixels of consecutive batches of frames (of one size and one mesh), as one batch."""
        if len(parts) == 1:
            return parts[0]
        first = parts[0]
        if any((part.height, part.width) != (first.height, first.width) or part.sorted_mesh is not first.sorted_mesh
               for part in parts):  # fmt: skip
            raise ValueError("only renders of one frame size and one rasterized mesh can be joined")
        frame_pixels = first.height * first.width
        frame_starts = itertools.accumulate((part.batch for part in parts[:-1]), initial=0)
        return cls(
            pixels=torch.cat([part.pixels + start * frame_pixels for part, start in zip(parts, frame_starts, strict=True)]),
            triangle_ids=torch.cat([part.triangle_ids for part in parts]),
            barycentrics=torch.cat([part.barycentrics for part in parts], dim=1),
            depth=torch.cat([part.depth for part in parts]),
            batch=sum(part.batch for part in parts),
            height=first.height,
            width=first.width,
            sorted_mesh=first.sorted_mesh,
        )

    def to_fragments(self) -> Fragments:
        barycentrics = self.barycentrics
        if self.sorted_mesh is not None:
            # To the given corner order through 1-D gathers (torch.gather on [3, P] is slow).
            flat_sorted, count = barycentrics.reshape(-1), self.pixels.numel()
            within = torch.arange(count, device=flat_sorted.device)
            barycentrics = torch.stack([
                flat_sorted.index_select(0, slot.index_select(0, self.triangle_ids).mul_(count).add_(within))
                for slot in self.sorted_mesh.slots
            ])  # fmt: skip
        return Fragments(self.scatter(self.triangle_ids, -1), self.scatter(barycentrics), self.scatter(self.depth))

    def interpolate(self, vertex_attributes: torch.Tensor, triangles: torch.Tensor) -> torch.Tensor:
        """Per-vertex attributes ``[B, N, C]`` (or ``[1, N, C]``, shared by all frames) at the
        covered pixels, planar ``[C, P]``."""
        shared = vertex_attributes.ndim == 3 and vertex_attributes.shape[0] == 1
        if vertex_attributes.ndim != 3 or not (shared or vertex_attributes.shape[0] == self.batch):
            raise ValueError(
                f"vertex_attributes must be [{self.batch} or 1, N, C], got {tuple(vertex_attributes.shape)}"
            )
        num_vertices, channels = vertex_attributes.shape[1:]
        corners = self._corner_vertices(triangles, 0 if shared else num_vertices)
        # One contiguous plane per channel, all channels of a corner gathered by one 2-D gather
        # (fewer, longer passes than a 1-D gather per channel) and weighted in place.
        planes = vertex_attributes.permute(2, 0, 1).reshape(channels, -1).contiguous()
        barycentrics = self.barycentrics.to(planes.dtype)
        result = planes.new_empty(channels, self.pixels.numel())

        def interpolate_columns(part: slice) -> None:
            columns = result[:, part]
            torch.mul(planes.index_select(1, corners[0][part]), barycentrics[0][part], out=columns)
            columns.addcmul_(planes.index_select(1, corners[1][part]), barycentrics[1][part])
            columns.addcmul_(planes.index_select(1, corners[2][part]), barycentrics[2][part])

        # The gathers run on one thread: on a CPU, parts of the pixels are interpolated concurrently.
        run_in_parts(interpolate_columns, self.pixels.numel(), planes.device)
        return result

    def _corner_vertices(self, triangles: torch.Tensor, frame_stride: int) -> torch.Tensor:
        """Per corner, the vertex of each covered pixel's triangle plus ``frame * frame_stride``
        (the rows of per-frame attributes of ``frame_stride`` vertices; 0 for shared ones), kept
        for the next attribute."""
        cached = self._corner_cache.get(frame_stride)
        if cached is not None and cached[0] is triangles:
            return cached[1]
        if frame_stride:
            frame_starts = _frames_of(self.pixels, self.batch, self.height * self.width).mul_(frame_stride)
            corners = self._corner_vertices(triangles, 0) + frame_starts
        else:
            if self.sorted_mesh is None:
                table = triangles.t().int()
            elif self.sorted_mesh.parity.numel() == triangles.shape[0]:
                table = self.sorted_mesh.corner_table
            else:
                raise ValueError(f"{triangles.shape[0]} triangles given, {self.sorted_mesh.parity.numel()} rasterized")
            # int32 [3, P]: the gathers of every channel read half the index bytes. One 1-D gather
            # per corner: a 2-D gather along the columns into a slice of columns is twenty times
            # slower on a CPU. The gathers run on one thread: on a CPU, parts of the pixels are
            # gathered concurrently.
            corners = table.new_empty(3, self.pixels.numel())

            def gather_corners(part: slice) -> None:
                for corner_row, table_row in zip(corners, table, strict=True):
                    torch.index_select(table_row, 0, self.triangle_ids[part], out=corner_row[part])

            run_in_parts(gather_corners, self.pixels.numel(), table.device)
        self._corner_cache[frame_stride] = (triangles, corners)
        return corners


def rasterize(
    screen_vertices: torch.Tensor,
    triangles: torch.Tensor,
    height: int,
    width: int,
    cull_backfaces: bool = True,
) -> Fragments:
    """Z-buffer ``screen_vertices [B, N, 3]`` (u px, v px, depth) with ``triangles [F, 3]`` into
    ``height × width`` fragments. No gradients flow through the result."""
    return rasterize_covered(screen_vertices, triangles, height, width, cull_backfaces).to_fragments()


def interpolate(vertex_attributes: torch.Tensor, fragments: Fragments, triangles: torch.Tensor) -> torch.Tensor:
    """Per-vertex attributes ``[B, N, C]`` (or ``[1, N, C]``, shared by all frames) at every pixel,
    ``[B, H, W, C]``, zero on the background."""
    covered = CoveredPixels.of(fragments)
    return covered.scatter(covered.interpolate(vertex_attributes, triangles))


def rasterize_covered(
    screen_vertices: torch.Tensor,
    triangles: torch.Tensor,
    height: int,
    width: int,
    cull_backfaces: bool = True,
) -> CoveredPixels:
    """:func:`rasterize`, returning the covered pixels only."""
    if screen_vertices.ndim != 3 or screen_vertices.shape[-1] != 3:
        raise ValueError(f"screen_vertices must be [B, N, 3], got {tuple(screen_vertices.shape)}")
    if triangles.ndim != 2 or triangles.shape[-1] != 3:
        raise ValueError(f"triangles must be [F, 3], got {tuple(triangles.shape)}")
    batch = screen_vertices.shape[0]
    device = screen_vertices.device
    screen_vertices = screen_vertices.detach().float()
    passes: list[tuple[torch.Tensor, ...]] = []
    if batch and triangles.shape[0] and height and width:
        mesh = _sorted_mesh(triangles, device)
        frame_ranges = _pass_frames(batch, triangles.shape[0], height * width, device)
        mesh.batch_corner_ids(max(stop - start for start, stop in frame_ranges), screen_vertices.shape[1])
        passes = run_concurrently(
            [partial(_rasterize_pass, screen_vertices[start:stop], mesh, cull_backfaces, height, width, start)
             for start, stop in frame_ranges],
            parts_for(device, batch * triangles.shape[0]),
        )  # fmt: skip
    if len(passes) == 1:
        pixels, triangle_ids, barycentrics, depth = passes[0]
    elif passes:
        pixels, triangle_ids, barycentrics, depth = (
            torch.cat(parts, dim=-1) for parts in zip(*passes, strict=True)
        )
    else:
        pixels = triangle_ids = torch.zeros(0, dtype=torch.long, device=device)
        barycentrics, depth = torch.zeros(3, 0, device=device), torch.zeros(0, device=device)
    return CoveredPixels(pixels, triangle_ids, barycentrics, depth, batch, height, width, mesh if passes else None)


def _pass_frames(batch: int, num_triangles: int, pixels_per_frame: int, device: torch.device) -> list[tuple[int, int]]:
    """The (start, stop) frames of each pass: at most what keeps the pass's index arithmetic in int32,
    and on a multi-core CPU at least one pass per thread, of equal size where the batch allows: the
    passes run concurrently (most of a pass is operations torch runs on one thread, so one pass on
    two threads takes about as long as on one)."""
    most = max(1, min(_MAX_TRIANGLES_PER_PASS // num_triangles, _MAX_PIXELS_PER_PASS // pixels_per_frame))
    count = max(-(-batch // most), min(batch, parts_for(device, batch * num_triangles)))
    size = -(-batch // count)
    return [(start, min(start + size, batch)) for start in range(0, batch, size)]


@dataclass
class _SortedMesh:
    corner_ids: tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # vertex ids of P0, P1, P2, each [F]
    parity: torch.Tensor  # [F] ±1
    slots: tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # position in P0..P2 of given corner k, each [F]
    corner_table: torch.Tensor  # corner_ids as one int32 [3, F] table
    # Corner ids offset by frame * vertex count for the most frames of one vertex count asked for.
    _batch_corner_ids: tuple[int, int, list[torch.Tensor]] | None = None

    def batch_corner_ids(self, frames: int, num_vertices: int) -> list[torch.Tensor]:
        """:func:`~..mesh_cache.frame_offset_ids` of P0, P1, P2; a renderer asks for the same every
        batch. Fewer frames read a prefix, so the passes of one batch share them (and concurrent
        passes only read them once the largest was built)."""
        cached = self._batch_corner_ids
        if cached is None or cached[1] != num_vertices or cached[0] < frames:
            cached = (frames, num_vertices, frame_offset_ids(self.corner_ids, frames, num_vertices))
            self._batch_corner_ids = cached
        return [ids[: frames * self.parity.numel()] for ids in cached[2]]

    @classmethod
    def of(cls, triangles: torch.Tensor) -> _SortedMesh:
        sorted_ids, order = triangles.sort(dim=1)
        a, b, c = order.unbind(1)
        parity = torch.sign((b - a) * (c - a) * (c - b)).float()
        corner_ids = sorted_ids.t().contiguous()
        return cls(tuple(corner_ids), parity, tuple(order.argsort(dim=1).t().contiguous()), corner_ids.int())


# A renderer rasterizes the same triangles batch after batch, and sorting them costs a millisecond
# per frame at batch 8.
_sorted_meshes: LastDerived[_SortedMesh] = LastDerived()


def _sorted_mesh(triangles: torch.Tensor, device: torch.device) -> _SortedMesh:
    return _sorted_meshes.get(triangles, device,
                              lambda: _SortedMesh.of(triangles.detach().to(device=device, dtype=torch.long)))


class _Rows:
    """Per-triangle quantities as the rows of one ``values [K, T]`` matrix: each a contiguous vector
    over the triangles (the layout CPUs compute on fastest), and one 2-D gather selects them all
    (for scattered indices faster than a gather per vector, and one call instead of 13)."""

    NAMES: tuple[str, ...] = ()

    def __init__(self, values: torch.Tensor) -> None:
        self.values = values
        for name, row in zip(self.NAMES, values.unbind(0), strict=True):
            setattr(self, name, row)

    @classmethod
    def empty(cls, count: int, like: torch.Tensor) -> _Rows:
        return cls(like.new_empty(len(cls.NAMES), count))

    def select(self, index: torch.Tensor | slice) -> _Rows:
        if isinstance(index, slice):
            if index.start in (0, None) and (index.stop is None or index.stop >= self.values.shape[1]):
                return self  # the whole (a group in one chunk): no new views
            return type(self)(self.values[:, index])
        return type(self)(self.values.index_select(1, index))


class _Triangles(_Rows):
    """Coverage constants (see :func:`_coverage_constants`)."""

    NAMES = ("p0x", "p0y", "p1x", "p1y", "d0x", "d0y", "d1x", "d1y", "d2x", "d2y", "r0", "r1", "r2")

    def edge_functions_(
        self, px: torch.Tensor, py: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``w0, w1, w2`` at the pixel centres; ``px`` and ``py`` (tensors of their own, the
        result's size) are overwritten. The documented float32 operations, in place: most of
        the rasterizer's time is these [candidates × triangles] passes over memory."""
        ux1, uy1 = px - self.p1x, py - self.p1y
        ux0, uy0 = px.sub_(self.p0x), py.sub_(self.p0y)
        w0 = uy1.mul_(self.d0x).sub_(ux1.mul_(self.d0y))
        w1 = (uy0 * self.d1x).sub_(torch.mul(ux0, self.d1y, out=ux1))
        w2 = uy0.mul_(self.d2x).sub_(ux0.mul_(self.d2y))
        return w0, w1, w2

    def box_edge_functions(
        self, columns: torch.Tensor, rows: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``w0, w1, w2`` at every pixel centre of boxes, ``[height * width, T]`` in row-major
        order, from the centres' ``columns [width, T]`` (px) and ``rows [height, T]`` (py), which
        are overwritten. Each product in ``w = dx * (py - y) - dy * (px - x)`` depends on the row or
        on the column only, so it is computed once per row or column and only the difference per
        pixel: the same float32 operations, a third of the passes over the candidates."""
        ux1, uy1 = columns - self.p1x, rows - self.p1y
        ux0, uy0 = columns.sub_(self.p0x), rows.sub_(self.p0y)
        row_terms = (uy1.mul_(self.d0x), uy0 * self.d1x, uy0.mul_(self.d2x))
        column_terms = (ux1.mul_(self.d0y), ux0 * self.d1y, ux0.mul_(self.d2y))
        return tuple(
            torch.sub(row.unsqueeze(1), column.unsqueeze(0)).view(-1, row.shape[-1])
            for row, column in zip(row_terms, column_terms, strict=True)
        )


class _EdgeBiases(_Rows):
    """Per edge, ``tiny`` where the triangle owns it (so ``w == 0`` counts as inside), else 0."""

    NAMES = ("edge0", "edge1", "edge2")

    def inside_margin(self, w0: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
        """Positive where the pixel centre is inside."""
        margin, other = w0 + self.edge0, w1 + self.edge1
        torch.minimum(margin, other, out=margin)
        return torch.minimum(margin, torch.add(w2, self.edge2, out=other), out=margin)


class _SetUp(_Rows):
    """What the coverage constants and the boxes are built from: the corners (sorted mesh order)
    and ``area2``, ``left``, ``top``; gathered together for the triangles that survive culling."""

    NAMES = ("x0", "y0", "z0", "x1", "y1", "z1", "x2", "y2", "z2", "area2", "left", "top")


def _rasterize_pass(
    screen_vertices: torch.Tensor, mesh: _SortedMesh, cull_backfaces: bool, height: int, width: int, first_frame: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Covered pixels (flat, offset by ``first_frame``), triangle ids, barycentrics (in the
    sorted mesh's corner order), depth."""
    frames, num_vertices = screen_vertices.shape[:2]
    num_triangles = mesh.parity.numel()
    device = screen_vertices.device
    # Everything per triangle is a contiguous [frames * F] vector (a row of a _Rows matrix), and
    # masks are float margins (positive = yes) rather than booleans: that is what CPUs do fast.
    planes = screen_vertices.permute(2, 0, 1).reshape(3, -1)
    setup = _SetUp.empty(frames * num_triangles, planes)
    for corner, ids in enumerate(mesh.batch_corner_ids(frames, num_vertices)):
        # One 1-D gather per plane: the ids ascend almost everywhere, which these read in order.
        for axis, plane in enumerate(planes):
            torch.index_select(plane, 0, ids, out=setup.values[3 * corner + axis])
    x0, y0, z0, x1, y1, z1, x2, y2, z2 = setup.values[:9]
    area2, left, top = setup.area2, setup.left, setup.top
    torch.sub((x1 - x0) * (y2 - y0), (y1 - y0) * (x2 - x0), out=area2)
    facing = (area2.view(frames, -1) * -mesh.parity).view(-1) if cull_backfaces else area2.abs()
    torch.minimum(torch.minimum(x0, x1, out=left), x2, out=left).sub_(0.5 + _BOX_MARGIN).ceil_().clamp_(min=0)
    right = torch.floor(torch.maximum(torch.maximum(x0, x1), x2) - (0.5 - _BOX_MARGIN)).clamp_(max=width - 1)
    torch.minimum(torch.minimum(y0, y1, out=top), y2, out=top).sub_(0.5 + _BOX_MARGIN).ceil_().clamp_(min=0)
    bottom = torch.floor(torch.maximum(torch.maximum(y0, y1), y2) - (0.5 - _BOX_MARGIN)).clamp_(max=height - 1)
    box_width = right - left + 1
    box_height = bottom - top + 1
    # Positive for triangles to draw (NaN anywhere propagates and fails every test below).
    keep = torch.minimum(
        torch.minimum(facing, torch.minimum(torch.minimum(z0, z1), z2) - DEPTH_EPSILON),
        torch.minimum(box_width, box_height),
    )
    # Fewer than half the triangles survive at render sizes (back faces, boxes without a pixel
    # centre): everything from here on runs on those only, in ascending order, so a position in
    # the compact arrays orders like the triangle id and the z-buffer's tie-break stays the same.
    rows = (keep > 0).nonzero().squeeze(1)
    row_frames = _frames_of(rows, frames, num_triangles)
    # Grouped by padded box size before anything else is gathered, so every per-triangle value
    # is gathered once, straight into group order. Stable: within a group rows stay ascending
    # and the gathers read memory in order.
    box_width, box_height = box_width.index_select(0, rows), box_height.index_select(0, rows)
    size_index = torch.tensor(_SIZE_INDEX, dtype=torch.uint8, device=device)
    group = size_index.index_select(0, box_width.clamp(1, _TILE).long()) * len(_SIZES)
    group += size_index.index_select(0, box_height.clamp(1, _TILE).long())
    group.masked_fill_((box_width > _TILE) | (box_height > _TILE), _LARGE_GROUP)
    order = torch.argsort(group, stable=True)
    counts = torch.bincount(group, minlength=_LARGE_GROUP + 1).tolist()
    grouped = setup.select(rows.index_select(0, order).int())
    triangles, biases = _coverage_constants(grouped)
    zbuffer = torch.full((frames * height * width,), -1, dtype=torch.long, device=device)
    # The z-buffer breaks depth ties by rank, the position in ``rows``, which orders like the id.
    # Pixel numbers within a pass fit int32, whose arithmetic is much faster than int64's.
    boxes = [value.int() for value in (grouped.left, grouped.top, box_width.index_select(0, order),
                                       box_height.index_select(0, order))]  # fmt: skip
    _splat_groups(
        triangles, biases, order.int(), row_frames.index_select(0, order).mul_(height * width), boxes, counts,
        zbuffer, width, height,
    )  # fmt: skip

    pixels = (zbuffer >= 0).nonzero().squeeze(1)
    # The winning keys' words: the low one -1 - rank, the high one the float32 bits of q, the
    # very inverse depth the splat computed (q >= 0 inside a triangle, so its sign was kept).
    words = zbuffer.index_select(0, pixels).view(torch.int32).view(-1, 2).unbind(1)
    low_word, high_word = words if sys.byteorder == "little" else words[::-1]
    winners = torch.bitwise_not(low_word)  # ranks
    pixel_frames = _frames_of(pixels, frames, height * width)
    triangle_ids = rows.index_select(0, winners) - pixel_frames * num_triangles
    grouped_position = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(), device=device))
    constants = triangles.select(grouped_position.index_select(0, winners).int())
    flat_pixels = pixels.int()  # within a pass, as above
    image_rows = flat_pixels.div(width, rounding_mode="floor")
    px = flat_pixels.sub_(image_rows * width).float().add_(0.5)
    py = image_rows.sub_(pixel_frames.mul_(height)).float().add_(0.5)
    weights = constants.edge_functions_(px, py)
    inverse_depth = high_word.contiguous().view(torch.float32)
    sorted_barycentrics = torch.stack(
        [w * r for w, r in zip(weights, (constants.r0, constants.r1, constants.r2), strict=True)]
    ).div_(inverse_depth)
    return pixels + first_frame * height * width, triangle_ids, sorted_barycentrics, inverse_depth.reciprocal_()


def _frames_of(indices: torch.Tensor, frames: int, per_frame: int) -> torch.Tensor:
    """``indices // per_frame`` for ascending ``indices``, int32, from the frame boundaries (int64
    division is slow on CPUs)."""
    boundaries = torch.arange(1, frames + 1, device=indices.device) * per_frame
    ends = torch.searchsorted(indices, boundaries)
    counts = torch.diff(ends, prepend=ends.new_zeros(1))
    frame_numbers = torch.arange(frames, dtype=torch.int32, device=indices.device)
    return torch.repeat_interleave(frame_numbers, counts, output_size=indices.numel())


def _low_bits(ranks: torch.Tensor) -> torch.Tensor:
    """The key's low word for int32 ids: ``2**32 - 1 - id`` as a bit pattern, so the larger key
    is the lower id."""
    return -1 - ranks


def _pack_keys(signed_inverse_depth: torch.Tensor, low_bits: torch.Tensor) -> torch.Tensor:
    """int64 keys, high word the float32 bits of ``signed_inverse_depth``, low word ``low_bits``.
    Two int32 words stacked and viewed as one int64: faster than shifting on CPUs."""
    high = signed_inverse_depth.view(torch.int32)
    low = low_bits.expand_as(high)
    words = (low, high) if sys.byteorder == "little" else (high, low)
    return torch.stack(words, dim=-1).view(torch.int64).squeeze(-1)


def _coverage_constants(setup: _SetUp) -> tuple[_Triangles, _EdgeBiases]:
    x0, y0, z0, x1, y1, z1, x2, y2, z2 = setup.values[:9]
    count = x0.numel()
    triangles, biases = _Triangles.empty(count, x0), _EdgeBiases.empty(count, x0)
    for source, target in ((x0, triangles.p0x), (y0, triangles.p0y), (x1, triangles.p1x), (y1, triangles.p1y)):
        target.copy_(source)
    sign = torch.sign(setup.area2)
    negative_sign = -sign
    torch.mul(x2 - x1, sign, out=triangles.d0x)
    torch.mul(y2 - y1, sign, out=triangles.d0y)
    torch.mul(x2 - x0, negative_sign, out=triangles.d1x)
    torch.mul(y2 - y0, negative_sign, out=triangles.d1y)
    torch.mul(x1 - x0, sign, out=triangles.d2x)
    torch.mul(y1 - y0, sign, out=triangles.d2y)
    for dx, dy, bias in ((triangles.d0x, triangles.d0y, biases.edge0), (triangles.d1x, triangles.d1y, biases.edge1),
                         (triangles.d2x, triangles.d2y, biases.edge2)):
        # Owned (dy > 0, or dy == 0 and dx > 0) exactly when 2 sign(dy) + sign(dx) >= 1.
        torch.sign(dy, out=bias).mul_(2.0).add_(torch.sign(dx)).clamp_(0.0, 1.0).mul_(_TINY)
    scale = setup.area2.abs()
    for z, r in ((z0, triangles.r0), (z1, triangles.r1), (z2, triangles.r2)):
        torch.div(z.reciprocal(), scale, out=r)
    return triangles, biases


def _tiles(left: torch.Tensor, top: torch.Tensor, box_width: torch.Tensor, box_height: torch.Tensor) -> tuple[
    torch.Tensor, torch.Tensor, torch.Tensor
]:
    """Cover boxes with ``_TILE × _TILE`` tiles: (box index, tile left, tile top) per tile."""
    tiles_x = (box_width + _TILE - 1) // _TILE
    counts = tiles_x * ((box_height + _TILE - 1) // _TILE)
    owner = torch.repeat_interleave(torch.arange(counts.numel(), device=counts.device), counts)
    local = torch.arange(owner.numel(), device=counts.device) - (torch.cumsum(counts, 0) - counts)[owner]
    tiles_x = tiles_x[owner]
    return owner, left[owner] + (local % tiles_x) * _TILE, top[owner] + (local // tiles_x) * _TILE


def _splat_groups(
    triangles: _Triangles,
    biases: _EdgeBiases,
    ranks: torch.Tensor,
    frame_offsets: torch.Tensor,
    boxes: list[torch.Tensor],
    counts: list[int],
    zbuffer: torch.Tensor,
    width: int,
    height: int,
) -> None:
    """Test the candidate pixel centres of every group of equally sized boxes."""
    start = 0
    for group, count in enumerate(counts):
        if count == 0:
            continue
        members = slice(start, start + count)
        start += count
        if group == _LARGE_GROUP:
            # Whole tiles even at the edges: one group, and few triangles are this large.
            owner, left, top = _tiles(*(value[members] for value in boxes))
            owner += members.start
            _splat_boxes(
                triangles.select(owner), biases.select(owner), ranks.index_select(0, owner),
                frame_offsets.index_select(0, owner), left, top, _TILE, _TILE, zbuffer, width, height,
            )  # fmt: skip
            continue
        _splat_boxes(
            triangles.select(members), biases.select(members), ranks[members], frame_offsets[members],
            boxes[0][members], boxes[1][members], _SIZES[group // len(_SIZES)], _SIZES[group % len(_SIZES)],
            zbuffer, width, height,
        )  # fmt: skip


def _splat_boxes(
    triangles: _Triangles,
    biases: _EdgeBiases,
    ranks: torch.Tensor,
    frame_offsets: torch.Tensor,
    left: torch.Tensor,
    top: torch.Tensor,
    box_width: int,
    box_height: int,
    zbuffer: torch.Tensor,
    width: int,
    height: int,
) -> None:
    """Test the ``box_width × box_height`` pixel centres from column ``left``, row ``top`` of each triangle."""
    box_width, box_height = min(box_width, width), min(box_height, height)
    # A padded box slides left/up to stay inside the image; the extra pixels fail the edge test.
    left = left.clamp(max=width - box_width)
    top = top.clamp(max=height - box_height)
    device = zbuffer.device
    rows = torch.arange(box_height, device=device)
    columns = torch.arange(box_width, device=device)
    pixel_offsets = (rows.unsqueeze(1) * width + columns).view(-1, 1)
    rows, columns = rows.float().unsqueeze(1), columns.float().unsqueeze(1)
    first_pixels = frame_offsets + top * width + left
    corner_x = left.float().add_(0.5)
    corner_y = top.float().add_(0.5)
    low_bits = _low_bits(ranks)
    step = max(1, _MAX_CANDIDATES_PER_CHUNK // pixel_offsets.numel())
    for chunk_start in range(0, left.numel(), step):
        chunk = slice(chunk_start, chunk_start + step)
        # Candidates as [K, T]: per-triangle vectors broadcast over the outer dimension, so every
        # elementwise op runs along contiguous triangles (a short inner K would not vectorize).
        _splat(
            triangles.select(chunk),
            biases.select(chunk),
            corner_x[chunk] + columns,
            corner_y[chunk] + rows,
            low_bits[chunk],
            first_pixels[chunk] + pixel_offsets,
            zbuffer,
        )


def _splat(
    triangles: _Triangles,
    biases: _EdgeBiases,
    columns: torch.Tensor,
    rows: torch.Tensor,
    low_bits: torch.Tensor,
    pixels: torch.Tensor,
    zbuffer: torch.Tensor,
) -> None:
    """Keep, per pixel, the maximum packed (q, -id) of the pixel centres in the boxes of
    ``columns`` (px) × ``rows`` (py) that the triangles cover."""
    w0, w1, w2 = triangles.box_edge_functions(columns, rows)
    margin = biases.inside_margin(w0, w1, w2).nan_to_num_(nan=-1.0)  # non-finite vertices cover nothing
    # Float arithmetic instead of booleans: q gets a negative sign unless the centre is inside
    # (a margin of exactly tiny, an owned edge, is inside), and negative keys lose to the
    # background's -1. Positive float32 bits order like the floats, so one int64 max picks the
    # nearest surface and, among equal depths, the lowest id.
    # q = w0 r0 + w1 r1 + w2 r2, summed in that order, in place.
    signed_q = w0.mul_(triangles.r0).add_(w1.mul_(triangles.r1)).add_(w2.mul_(triangles.r2))
    signed_q.copysign_(margin.sub_(_TINY))
    keys = _pack_keys(signed_q, low_bits)
    zbuffer.scatter_reduce_(0, pixels.reshape(-1), keys.reshape(-1), reduce="amax")
