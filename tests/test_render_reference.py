"""The full render pass against plain reference computations: the brute-force z-buffer of
test_rasterizer for coverage, barycentrics and depth, and per-frame area-weighted vertex normals
written the obvious way, on a closed mesh seen by two cameras."""
import pytest
import torch
from packloader import pack_import
from test_rasterizer import reference_rasterize
from test_renderer import random_coefficients, sphere_model

renderer_module = pack_import("pipelines.render.renderer")
camera_module = pack_import("pipelines.morphable.camera")


def reference_vertex_normals(vertices: torch.Tensor, triangles: torch.Tensor) -> torch.Tensor:
    """Sum of the (area-weighted) face normals around each vertex, normalised, frame by frame."""
    frames = []
    for frame in vertices:
        a, b, c = (frame[triangles[:, k]] for k in range(3))
        face_normals = torch.linalg.cross(b - a, c - a)
        summed = torch.zeros_like(frame)
        for k in range(3):
            summed.index_add_(0, triangles[:, k], face_normals)
        frames.append(torch.nn.functional.normalize(summed, dim=-1))
    return torch.stack(frames)


@pytest.fixture(scope="module")
def small_sphere():
    return sphere_model(rings=8, segments=12, seed=3)


def test_vertex_normals_match_the_reference(small_sphere):
    vertices = small_sphere.posed_vertices(random_coefficients(3, seed=5))
    normals = small_sphere.vertex_normals(vertices)
    assert normals.shape == vertices.shape
    assert torch.allclose(normals, reference_vertex_normals(vertices, small_sphere.triangles), atol=1e-6)


@pytest.mark.parametrize("size", [24, 33])
def test_render_pass_matches_the_reference(small_sphere, size):
    camera = camera_module.PerspectiveCamera.deep3d(size)
    coeffs = random_coefficients(2, seed=size)
    maps = renderer_module.FaceRenderer(small_sphere, camera).render(coeffs)
    vertices = small_sphere.posed_vertices(coeffs)
    triangles = small_sphere.triangles
    ids, barycentrics, depth = reference_rasterize(camera.to_screen(vertices), triangles, size, size, cull=True)
    assert (ids >= 0).float().mean() > 0.2
    assert torch.equal(maps.triangle_ids, ids)
    assert torch.equal(maps.mask, (ids >= 0).float())
    assert torch.allclose(maps.depth, depth, atol=0, rtol=1e-6)
    vertex_normals = reference_vertex_normals(vertices, triangles)
    covered = ids >= 0
    frame_index = torch.arange(2).view(2, 1, 1).expand_as(ids)[covered]
    corners = triangles[ids[covered]]  # [P, 3]
    interpolated = (barycentrics[covered].unsqueeze(-1) * vertex_normals[frame_index.unsqueeze(1), corners]).sum(1)
    expected = torch.nn.functional.normalize(interpolated, dim=-1)
    assert torch.allclose(maps.normals[covered], expected, atol=1e-5)
    assert torch.all(maps.normals[~covered] == 0)


def test_one_persons_frames_shape_and_albedo_like_separate_frames(small_sphere):
    """Identity and albedo shared by every frame are multiplied out once; each frame still gets
    what it would alone, and frames with their own identities still differ."""
    coeffs = random_coefficients(4, seed=9)
    shared = {name: getattr(coeffs, name)[:1].expand(4, -1).clone() for name in ("identity", "texture")}
    video = coeffs.replace(**shared)
    vertices, albedo = small_sphere.posed_vertices(video), small_sphere.albedo(video.texture)
    for frame in range(4):
        alone = video[frame : frame + 1]
        assert torch.allclose(vertices[frame], small_sphere.posed_vertices(alone)[0], atol=1e-6)
        assert torch.allclose(albedo[frame], small_sphere.albedo(alone.texture)[0], atol=1e-6)
    own = small_sphere.albedo(coeffs.texture)
    assert torch.allclose(own[0], albedo[0]) and not torch.allclose(own[1], albedo[1])
