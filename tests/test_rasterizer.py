"""The batched rasterizer against a brute-force z-buffer that repeats its documented arithmetic
triangle by triangle over every pixel, plus watertightness, culling and perspective checks."""
import math
import threading
import time

import pytest
import torch
from packloader import pack_import

rasterizer = pack_import("pipelines.render.rasterizer")
concurrent = pack_import("pipelines.concurrent")
camera_module = pack_import("pipelines.morphable.camera")
rasterize = rasterizer.rasterize


def reference_rasterize(screen: torch.Tensor, triangles: torch.Tensor, height: int, width: int, cull: bool):
    """Loop over frames and triangles; every scalar stays a float32 tensor so the arithmetic is
    the rasterizer's, step for step, as its module docstring states it."""
    frames = screen.shape[0]
    ids = torch.full((frames, height, width), -1, dtype=torch.long)
    best = torch.zeros(frames, height, width)
    barycentrics = torch.zeros(frames, height, width, 3)
    rows, columns = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    px, py = columns.float() + 0.5, rows.float() + 0.5
    for frame in range(frames):
        for index, corners in enumerate(triangles.tolist()):
            order = sorted(range(3), key=lambda k: corners[k])
            parity = 1.0 if order in ([0, 1, 2], [1, 2, 0], [2, 0, 1]) else -1.0
            (x0, y0, z0), (x1, y1, z1), (x2, y2, z2) = (screen[frame, corners[k]] for k in order)
            area2 = (x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0)
            if (cull and not area2 * parity < 0) or (not cull and area2 == 0):
                continue
            if min(z0, z1, z2) <= rasterizer.DEPTH_EPSILON:
                continue
            sign = torch.sign(area2)
            d = [((x2 - x1) * sign, (y2 - y1) * sign), ((x2 - x0) * -sign, (y2 - y0) * -sign),
                 ((x1 - x0) * sign, (y1 - y0) * sign)]  # fmt: skip
            starts = [(x1, y1), (x0, y0), (x0, y0)]
            weights, inside = [], torch.ones(height, width, dtype=torch.bool)
            for (dx, dy), (sx, sy) in zip(d, starts, strict=True):
                w = dx * (py - sy) - dy * (px - sx)
                owned = bool(dy > 0) or (bool(dy == 0) and bool(dx > 0))
                inside &= (w > 0) | ((w == 0) & owned)
                weights.append(w)
            r = [z.reciprocal() / area2.abs() for z in (z0, z1, z2)]
            q = weights[0] * r[0] + weights[1] * r[1] + weights[2] * r[2]
            wins = inside & (q > best[frame])
            best[frame][wins] = q[wins]
            ids[frame][wins] = index
            for slot, k in enumerate(order):
                barycentrics[frame, ..., k][wins] = (weights[slot] * r[slot] / q)[wins]
    depth = torch.where(ids >= 0, best.reciprocal(), torch.zeros(()))
    return ids, barycentrics, depth


def assert_matches_reference(screen, triangles, height, width, cull=True):
    fragments = rasterize(screen, triangles, height, width, cull_backfaces=cull)
    ids, barycentrics, depth = reference_rasterize(screen, triangles, height, width, cull)
    assert torch.equal(fragments.triangle_ids, ids)
    assert torch.allclose(fragments.barycentrics, barycentrics, atol=1e-6, rtol=0)
    assert torch.allclose(fragments.depth, depth, atol=0, rtol=1e-6)
    return fragments


def triangle_soup(frames: int, count: int, height: int, width: int, seed: int):
    """Triangles of many sizes (sub-pixel to several times the image), intersecting in depth,
    partly off-screen, both windings, some duplicated (equal depths: ties)."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.rand(count, 1, 2, generator=generator) * torch.tensor([width + 20.0, height + 20.0]) - 10
    small = torch.empty(count - count // 4, 1, 1).uniform_(math.log(0.2), math.log(4.0), generator=generator)
    large = torch.empty(count // 4, 1, 1).uniform_(math.log(4.0), math.log(3.0 * width), generator=generator)
    scales = torch.exp(torch.cat([small, large]))
    corners = centres + scales * torch.randn(count, 3, 2, generator=generator)
    # every third triangle on pixel centres: edges through centres, exact zeros of edge functions
    corners[::3] = torch.floor(corners[::3]) + 0.5
    depths = torch.empty(frames, count, 3, 1).uniform_(1.0, 3.0, generator=generator)
    depths[:, : len(small)] *= 0.5  # small triangles mostly in front, so they show
    depths = depths.view(frames, count * 3, 1)
    jitter = torch.randn(frames, count * 3, 2, generator=generator) * 0.3 * torch.arange(frames).view(-1, 1, 1)
    screen = torch.cat([corners.view(1, -1, 2) + jitter, depths], dim=-1)
    triangles = torch.arange(count * 3).view(count, 3)
    duplicates = triangles[:10][:, [1, 2, 0]]  # the same triangle again, later id
    mirrored = triangles[10:20][:, [0, 2, 1]]  # reversed winding, same plane
    return screen, torch.cat([triangles, duplicates, mirrored])


def test_known_triangle_winding_and_coverage():
    camera = camera_module.PerspectiveCamera.deep3d(16)
    # counter-clockwise seen from the camera (world y up): front-facing, the 3DMM's outward winding
    world = torch.tensor([[[-0.5, -0.5, 0.0], [0.5, -0.5, 0.0], [0.0, 0.5, 0.0]]])
    screen = camera.to_screen(world)
    front = rasterize(screen, torch.tensor([[0, 1, 2]]), 16, 16)
    back = rasterize(screen, torch.tensor([[0, 2, 1]]), 16, 16)
    unculled = rasterize(screen, torch.tensor([[0, 2, 1]]), 16, 16, cull_backfaces=False)
    assert front.mask.sum() > 20 and not back.mask.any()
    assert torch.equal(front.mask, unculled.mask)
    assert front.mask[0, 11, 7] and not front.mask[0, 2, 7]  # wide at the bottom (world y down)
    assert torch.all(front.triangle_ids[front.mask] == 0) and torch.all(front.triangle_ids[~front.mask] == -1)
    assert torch.all(front.depth[~front.mask] == 0) and torch.allclose(front.depth[front.mask], torch.tensor(10.0))
    assert torch.allclose(front.barycentrics.sum(-1)[front.mask], torch.tensor(1.0), atol=1e-6)


@pytest.mark.parametrize("cull", [True, False])
def test_matches_brute_force_on_a_triangle_soup(cull):
    screen, triangles = triangle_soup(frames=2, count=100, height=30, width=36, seed=1)
    fragments = assert_matches_reference(screen, triangles, 30, 36, cull)
    assert fragments.mask.float().mean() > 0.5
    assert len(torch.unique(fragments.triangle_ids)) > 20


def test_matches_brute_force_in_tiny_images_and_across_chunks(monkeypatch):
    screen, triangles = triangle_soup(frames=3, count=40, height=7, width=5, seed=2)
    assert_matches_reference(screen, triangles, 7, 5)
    screen, triangles = triangle_soup(frames=3, count=40, height=24, width=20, seed=3)
    monkeypatch.setattr(rasterizer, "_MAX_CANDIDATES_PER_CHUNK", 50)
    monkeypatch.setattr(rasterizer, "_MAX_TRIANGLES_PER_PASS", 100)  # one frame per pass
    assert_matches_reference(screen, triangles, 24, 20)


def test_concurrent_parts_match_one_thread_and_brute_force(monkeypatch):
    """On a CPU with two threads the batch is rasterized as concurrent passes (here 2 + 1 frames),
    and interpolation and scattering split the pixels in two."""
    monkeypatch.setattr(concurrent, "MIN_ITEMS_PER_PART", 1)
    screen, triangles = triangle_soup(frames=3, count=60, height=20, width=24, seed=4)
    attributes = torch.randn(3, screen.shape[1], 4)

    def run():
        covered = rasterizer.rasterize_covered(screen, triangles, 20, 24)
        values = covered.interpolate(attributes, triangles)
        return covered, values, covered.scatter(values), covered.scatter(covered.triangle_ids, -1)

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one_thread = run()
        torch.set_num_threads(2)
        assert rasterizer._pass_frames(3, triangles.shape[0], 20 * 24, screen.device) == [(0, 2), (2, 3)]
        split = run()
        with torch.inference_mode():  # per thread in torch: the parts must run in the caller's mode
            in_inference_mode = run()
        assert_matches_reference(screen, triangles, 20, 24)
    finally:
        torch.set_num_threads(threads)
    assert torch.get_num_threads() == threads
    for result in (split, in_inference_mode):
        for name in ("pixels", "triangle_ids", "barycentrics", "depth"):
            assert torch.equal(getattr(result[0], name), getattr(one_thread[0], name)), name
        for ours, expected in zip(result[1:], one_thread[1:], strict=True):
            assert torch.equal(ours, expected)
    assert in_inference_mode[2].is_inference() and not split[2].is_inference()


def grid_mesh(columns: int, rows: int, origin: float, step: float, jitter: float, seed: int):
    generator = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(rows + 1.0), torch.arange(columns + 1.0), indexing="ij")
    points = torch.stack([xs, ys], -1).view(-1, 2) * step + origin
    inner = ((xs > 0) & (xs < columns) & (ys > 0) & (ys < rows)).reshape(-1, 1)
    points = points + inner * jitter * (torch.rand(points.shape, generator=generator) - 0.5)
    depth = 2.0 + torch.rand(points.shape[0], 1, generator=generator)
    index = torch.arange((rows + 1) * (columns + 1)).view(rows + 1, columns + 1)
    a, b, c, d = index[:-1, :-1], index[:-1, 1:], index[1:, 1:], index[1:, :-1]
    # v points down on screen, so (a, d, c) is counter-clockwise seen from the camera.
    triangles = torch.cat([torch.stack([a, d, c], -1).view(-1, 3), torch.stack([a, c, b], -1).view(-1, 3)])
    return torch.cat([points, depth], -1).unsqueeze(0), triangles


def coverage_counts(screen, triangles, height, width, cull=True):
    counts = torch.zeros(height, width, dtype=torch.long)
    for triangle in triangles:
        counts += rasterize(screen, triangle.view(1, 3), height, width, cull).mask[0].long()
    return counts


def test_shared_edges_through_pixel_centres_are_covered_exactly_once():
    # vertices on pixel centres: the diagonals, verticals and horizontals pass through centres
    screen, triangles = grid_mesh(3, 3, origin=2.5, step=5.0, jitter=0.0, seed=0)
    counts = coverage_counts(screen, triangles, 20, 20)
    inside = torch.zeros(20, 20, dtype=torch.bool)
    inside[2:18, 2:18] = True  # centres 2.5 … 17.5, the closed square
    assert counts.max() == 1
    assert torch.all(counts[3:17, 3:17] == 1)  # every interior centre, shared edges and vertices included
    assert torch.all(counts[~inside] == 0)
    both_windings = coverage_counts(screen, triangles[:, [0, 2, 1]], 20, 20, cull=False)
    assert torch.equal(both_windings, counts)
    assert_matches_reference(screen, triangles, 20, 20)


def test_a_jittered_mesh_is_watertight_and_matches_brute_force():
    screen, triangles = grid_mesh(4, 3, origin=1.3, step=4.0, jitter=3.0, seed=4)
    counts = coverage_counts(screen, triangles, 16, 20)
    assert counts.max() == 1
    assert torch.all(counts[3:12, 3:15] == 1)
    assert_matches_reference(screen, triangles, 16, 20)


def test_a_fan_around_a_pixel_centre_covers_it_once():
    angles = torch.arange(7) * (2 * math.pi / 7)
    rim = torch.stack([5.5 + 4 * angles.cos(), 5.5 + 4 * angles.sin(), torch.full_like(angles, 2.0)], -1)
    screen = torch.cat([torch.tensor([[5.5, 5.5, 2.0]]), rim]).unsqueeze(0)
    triangles = torch.tensor([[0, 1 + (k + 1) % 7, 1 + k] for k in range(7)])
    counts = coverage_counts(screen, triangles, 11, 11)
    assert counts[5, 5] == 1 and counts.max() == 1
    assert_matches_reference(screen, triangles, 11, 11)


def test_skips_triangles_behind_the_camera_and_off_screen():
    screen = torch.tensor([[[2.0, 2.0, 1.0], [30.0, 2.0, 1.0], [2.0, 30.0, 0.0],
                            [-50.0, -50.0, 1.0], [-40.0, -50.0, 1.0], [-50.0, -40.0, 1.0]]])  # fmt: skip
    triangles = torch.tensor([[0, 2, 1], [3, 5, 4]])
    fragments = rasterize(screen, triangles, 16, 16, cull_backfaces=False)
    assert not fragments.mask.any()
    broken = torch.tensor([[[2.0, 2.0, 1.0], [30.0, 2.0, 1.0], [2.0, float("nan"), 1.0], [3.0, 3.0, 1.0]]])
    assert not rasterize(broken, torch.tensor([[0, 2, 1], [0, 1, 2], [3, 2, 1]]), 16, 16, False).mask.any()
    empty = rasterize(screen, torch.zeros(0, 3, dtype=torch.long), 16, 16)
    assert empty.triangle_ids.shape == (1, 16, 16) and not empty.mask.any()


def test_barycentrics_and_depth_are_perspective_correct():
    camera = camera_module.PerspectiveCamera.deep3d(48)
    world = torch.tensor([[-1.2, -1.0, 1.5], [1.4, -0.8, -2.0], [0.1, 1.3, 0.5]])  # steep in depth
    fragments = rasterize(camera.to_screen(world.unsqueeze(0)), torch.tensor([[0, 1, 2]]), 48, 48)
    rows, columns = fragments.mask[0].nonzero().unbind(1)
    assert rows.numel() > 100
    # ray from the eye through each pixel centre, intersected with the triangle's plane
    directions = torch.stack(
        [(columns + 0.5 - camera.center) / camera.focal, (camera.center - rows - 0.5) / camera.focal,
         -torch.ones(rows.shape)], -1
    ).double()  # fmt: skip
    eye = torch.tensor([0.0, 0.0, camera.distance], dtype=torch.float64)
    a, b, c = world.double()
    normal = torch.linalg.cross(b - a, c - a)
    t = ((a - eye) @ normal) / (directions @ normal)
    points = eye + t.unsqueeze(1) * directions
    # barycentrics of the intersection points, solved in the triangle's plane
    basis = torch.stack([b - a, c - a], 1)
    solution = torch.linalg.lstsq(basis.expand(len(points), 3, 2), (points - a).unsqueeze(-1)).solution.squeeze(-1)
    expected = torch.cat([1 - solution.sum(1, keepdim=True), solution], 1)
    assert torch.allclose(fragments.barycentrics[0, rows, columns].double(), expected, atol=2e-4)
    assert torch.allclose(fragments.depth[0, rows, columns].double(), camera.distance - points[:, 2], rtol=1e-5)
    interpolated = rasterizer.interpolate(world.unsqueeze(0), fragments, torch.tensor([[0, 1, 2]]))
    assert torch.allclose(interpolated[0, rows, columns].double(), points, atol=2e-4)
    assert torch.all(interpolated[0][~fragments.mask[0]] == 0)


def test_interpolate_per_frame_and_shared_attributes():
    screen, triangles = triangle_soup(frames=2, count=30, height=12, width=14, seed=5)
    fragments = rasterize(screen, triangles, 12, 14)
    per_frame = torch.randn(2, screen.shape[1], 4)
    values = rasterizer.interpolate(per_frame, fragments, triangles)
    frame, row, column = fragments.mask.nonzero()[7]
    corners = triangles[fragments.triangle_ids[frame, row, column]]
    expected = fragments.barycentrics[frame, row, column] @ per_frame[frame, corners]
    assert torch.allclose(values[frame, row, column], expected, atol=1e-6)
    shared = rasterizer.interpolate(per_frame[:1], fragments, triangles)
    assert torch.allclose(shared[0], values[0]) and not torch.allclose(shared[1], values[1])
    with pytest.raises(ValueError):
        rasterizer.interpolate(per_frame[:, :, 0], fragments, triangles)


def test_covered_pixels_are_the_compact_form_of_the_fragments():
    screen, triangles = triangle_soup(frames=3, count=40, height=18, width=22, seed=6)
    covered = rasterizer.rasterize_covered(screen, triangles, 18, 22)
    fragments = rasterize(screen, triangles, 18, 22)
    assert torch.equal(covered.pixels, fragments.mask.view(-1).nonzero().squeeze(1))
    assert covered.frame_sizes() == fragments.mask.sum((1, 2)).tolist()
    again = rasterizer.CoveredPixels.of(fragments)
    for name in ("pixels", "triangle_ids", "depth"):
        assert torch.equal(getattr(again, name), getattr(covered, name)), name
    back = covered.to_fragments()
    for name in ("triangle_ids", "barycentrics", "depth"):
        assert torch.equal(getattr(back, name), getattr(fragments, name)), name


def test_covered_pixels_of_consecutive_batches_join_into_one():
    screen, triangles = triangle_soup(frames=3, count=40, height=18, width=22, seed=8)
    whole = rasterizer.rasterize_covered(screen, triangles, 18, 22)
    parts = [rasterizer.rasterize_covered(screen[frames], triangles, 18, 22) for frames in (slice(0, 1), slice(1, 3))]
    joined = rasterizer.CoveredPixels.concatenate(parts)
    assert joined.batch == 3 and joined.frame_sizes() == whole.frame_sizes()
    for name in ("pixels", "triangle_ids", "barycentrics", "depth"):
        assert torch.equal(getattr(joined, name), getattr(whole, name)), name
    assert rasterizer.CoveredPixels.concatenate(parts[:1]) is parts[0]
    last_two, pixel_range = whole.select_frames(slice(1, 3))
    assert last_two.batch == 2 and pixel_range == slice(whole.frame_sizes()[0], whole.pixels.numel())
    for name in ("pixels", "triangle_ids", "barycentrics", "depth"):
        assert torch.equal(getattr(last_two, name), getattr(parts[1], name)), name
    other_size = rasterizer.rasterize_covered(screen[:1], triangles, 18, 20)
    with pytest.raises(ValueError, match="one frame size"):
        rasterizer.CoveredPixels.concatenate([parts[0], other_size])


def test_what_a_mesh_derives_is_built_once_for_concurrent_requests():
    """The parts of one render ask for the sorted mesh from two threads at once."""
    cache = pack_import("pipelines.mesh_cache").LastDerived()
    triangles, builds = torch.arange(6).view(2, 3), []

    def build() -> object:
        builds.append(threading.get_ident())
        time.sleep(0.05)  # both requests arrive while the first is building
        return object()

    first, second = concurrent.run_concurrently([lambda: cache.get(triangles, "key", build)] * 2, 2)
    assert len(builds) == 1 and first is second


def test_scatter_into_a_given_map_overwrites_all_of_it():
    screen, triangles = triangle_soup(frames=2, count=30, height=12, width=14, seed=9)
    covered = rasterizer.rasterize_covered(screen, triangles, 12, 14)
    values = torch.randn(3, covered.pixels.numel())
    out = torch.full((2, 12, 14, 3), float("nan"))
    assert covered.scatter(values, -1.0, out=out) is out
    assert torch.equal(out, covered.scatter(values, -1.0))
    with pytest.raises(ValueError, match="contiguous"):
        covered.scatter(values, out=torch.zeros(2, 12, 14, 4)[..., :3])


def test_covered_pixels_interpolate_whatever_the_corner_order():
    """The rasterizer keeps barycentrics in its own corner order (vertex ids ascending): with
    corners given in any order, interpolating agrees with the Fragments, which are in the given
    order and match the brute force."""
    screen, triangles = triangle_soup(frames=2, count=40, height=16, width=20, seed=7)
    rotations = torch.tensor([[0, 1, 2], [1, 2, 0], [2, 0, 1]])[torch.arange(triangles.shape[0]) % 3]
    triangles = triangles.gather(1, rotations)  # the same windings, lowest id at any corner
    covered = rasterizer.rasterize_covered(screen, triangles, 16, 20)
    fragments = covered.to_fragments()
    ids, barycentrics, depth = reference_rasterize(screen, triangles, 16, 20, cull=True)
    assert torch.equal(fragments.triangle_ids, ids) and torch.equal(fragments.barycentrics, barycentrics)
    attributes = torch.randn(2, screen.shape[1], 5)
    expected = rasterizer.CoveredPixels.of(fragments).interpolate(attributes, triangles)
    assert torch.allclose(covered.interpolate(attributes, triangles), expected, atol=1e-6)
    shared = attributes[:1]
    expected_shared = rasterizer.CoveredPixels.of(fragments).interpolate(shared, triangles)
    assert torch.allclose(covered.interpolate(shared, triangles), expected_shared, atol=1e-6)
    with pytest.raises(ValueError):
        covered.interpolate(attributes, triangles[:-1])
