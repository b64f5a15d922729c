"""FaceRenderer on a synthetic sphere 3DMM (analytic silhouette and normals) and SH shading as
Deep3DFaceRecon writes it."""
import math

import pytest
import torch
from packloader import pack_import

renderer_module = pack_import("pipelines.render.renderer")
shading = pack_import("pipelines.render.shading")
rasterizer = pack_import("pipelines.render.rasterizer")
camera_module = pack_import("pipelines.morphable.camera")
model_module = pack_import("pipelines.morphable.model")
coefficients = pack_import("pipelines.morphable.coefficients")
errors = pack_import("pipelines.errors")
concurrent = pack_import("pipelines.concurrent")

RADIUS = 0.9
DIMS = coefficients.CoefficientDims(identity=4, expression=3, texture=2)


def sphere_model(rings: int = 40, segments: int = 64, seed: int = 0):
    """A UV sphere centred at the origin, outward counter-clockwise triangles, a small random
    basis and 68 landmarks on its front."""
    generator = torch.Generator().manual_seed(seed)
    polar = torch.linspace(0, math.pi, rings + 1)[1:-1]
    azimuth = torch.arange(segments) * (2 * math.pi / segments)
    p, a = torch.meshgrid(polar, azimuth, indexing="ij")
    ring_points = torch.stack([p.sin() * a.sin(), p.cos(), p.sin() * a.cos()], -1).view(-1, 3)
    vertices = torch.cat([torch.tensor([[0.0, 1.0, 0.0]]), ring_points, torch.tensor([[0.0, -1.0, 0.0]])]) * RADIUS
    south = vertices.shape[0] - 1

    def ring(r: int, s: torch.Tensor) -> torch.Tensor:
        return 1 + r * segments + s % segments

    s = torch.arange(segments)
    faces = [torch.stack([torch.zeros_like(s), ring(0, s), ring(0, s + 1)], -1)]
    for r in range(rings - 2):
        faces += [torch.stack([ring(r, s), ring(r + 1, s), ring(r + 1, s + 1)], -1),
                  torch.stack([ring(r, s), ring(r + 1, s + 1), ring(r, s + 1)], -1)]  # fmt: skip
    faces.append(torch.stack([ring(rings - 2, s), torch.full_like(s, south), ring(rings - 2, s + 1)], -1))
    triangles = torch.cat(faces)
    count = vertices.shape[0]
    front = (vertices[:, 2] > 0.5 * RADIUS).nonzero().squeeze(1)
    landmarks = front[torch.randperm(front.numel(), generator=generator)[:68]]
    return model_module.MorphableModel(
        mean_shape=vertices,
        identity_basis=torch.randn(DIMS.identity, count, 3, generator=generator) * 0.01,
        expression_basis=torch.randn(DIMS.expression, count, 3, generator=generator) * 0.01,
        mean_albedo=torch.rand(count, 3, generator=generator) * 0.5 + 0.25,
        albedo_basis=torch.randn(DIMS.texture, count, 3, generator=generator) * 0.05,
        triangles=triangles,
        landmark_ids=landmarks,
        name="test sphere",
    )


@pytest.fixture(scope="module")
def model():
    return sphere_model()


def random_coefficients(frames: int, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    flat = torch.randn(frames, DIMS.flat_size, generator=generator) * 0.3
    coeffs = coefficients.FaceCoefficients.from_flat(flat, dims=DIMS)
    return coeffs.replace(translation=coeffs.translation * 0.5, rotation=coeffs.rotation * 0.5)


def test_outward_winding_is_front_facing(model):
    a, b, c = (model.mean_shape[model.triangles[:, k]] for k in range(3))
    centroids = (a + b + c) / 3
    assert torch.all((torch.linalg.cross(b - a, c - a) * centroids).sum(-1) > 0)


def test_sphere_silhouette_normals_and_maps(model):
    camera = camera_module.PerspectiveCamera.deep3d(64)
    maps = renderer_module.FaceRenderer(model, camera).render(coefficients.FaceCoefficients.neutral(1, DIMS))
    expected_radius = camera.focal * RADIUS / math.sqrt(camera.distance**2 - RADIUS**2)
    measured_radius = math.sqrt(maps.mask.sum().item() / math.pi)
    assert measured_radius == pytest.approx(expected_radius, rel=0.02)
    centre = maps.normals[0, 31:33, 31:33].reshape(-1, 3)
    assert torch.allclose(centre, torch.tensor([0.0, 0.0, 1.0]).expand(4, 3), atol=0.05)
    covered = maps.mask.bool()
    assert torch.allclose(maps.normals[covered].norm(dim=-1), torch.tensor(1.0), atol=1e-5)
    nearest = camera.distance - RADIUS
    assert maps.depth[covered].min() == pytest.approx(nearest, abs=0.01) and maps.depth[covered].max() < camera.distance
    surface = maps.surface[covered]
    assert surface.min() >= 0 and surface.max() <= 1
    assert surface[:, 0].min() < 0.15 and surface[:, 0].max() > 0.85  # the full width of the sphere is seen
    assert surface[:, 2].min() > 0.45  # only the front half
    for name in ("image", "depth", "normals", "albedo", "surface"):
        value = getattr(maps, name)
        assert torch.all(value[~covered] == 0), name
    assert maps.image.shape == (1, 64, 64, 3) and maps.mask.shape == (1, 64, 64)
    assert maps.image.min() >= 0 and maps.image.max() <= 1 and maps.image[covered].mean() > 0.1
    image = renderer_module.normals_to_image(maps.normals, maps.mask)
    assert torch.allclose(image[0, 32, 32], torch.tensor([0.5, 0.5, 1.0]), atol=0.03)
    assert torch.all(image[~covered] == 0)


def test_mask_landmarks_and_ambient_image_follow_the_geometry(model):
    camera = camera_module.PerspectiveCamera.deep3d(48)
    coeffs = random_coefficients(2).replace(lighting=torch.zeros(2, 27))
    maps = renderer_module.FaceRenderer(model, camera).render(coeffs)
    vertices = model.posed_vertices(coeffs)
    fragments = rasterizer.rasterize(camera.to_screen(vertices), model.triangles, 48, 48)
    assert torch.equal(maps.mask.bool(), fragments.mask)
    assert torch.equal(maps.triangle_ids, fragments.triangle_ids)
    assert torch.allclose(maps.landmarks, camera.project(vertices[:, model.landmark_ids]))
    assert maps.landmarks.shape == (2, 68, 2)
    ambient = 0.8 * math.sqrt(math.pi) / 2  # AMBIENT_LIGHT · a0 · c0
    albedo = rasterizer.interpolate(model.albedo(coeffs.texture), fragments, model.triangles)
    assert torch.allclose(maps.image, (albedo * ambient).clamp(0, 1), atol=1e-6)
    assert torch.allclose(maps.albedo, albedo.clamp(0, 1), atol=1e-6)


def test_batched_rendering_equals_frame_by_frame(model):
    renderer = renderer_module.FaceRenderer(model, camera_module.PerspectiveCamera.deep3d(40))
    coeffs = random_coefficients(3, seed=2)
    batched = renderer.render(coeffs)
    assert not torch.equal(batched.image[0], batched.image[1])
    for frame in range(3):
        single = renderer.render(coeffs[frame])
        same = single.triangle_ids[0] == batched.triangle_ids[frame]
        assert same.float().mean() > 0.995  # basis products may round differently per batch size
        for name in ("image", "normals", "depth", "surface", "albedo"):
            assert torch.allclose(getattr(single, name)[0][same], getattr(batched, name)[frame][same], atol=1e-4)
        assert torch.allclose(single.landmarks[0], batched.landmarks[frame], atol=1e-4)


def test_frames_rendered_concurrently_match_one_thread(model, monkeypatch):
    """On a CPU with two threads groups of frames are rendered concurrently, each into its slice of
    the maps (here 2 + 1 frames): every map and the joined covered pixels are bit for bit the same."""
    monkeypatch.setattr(concurrent, "MIN_ITEMS_PER_PART", 1)
    renderer = renderer_module.FaceRenderer(model, camera_module.PerspectiveCamera.deep3d(36))
    coeffs = random_coefficients(3, seed=5)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one_thread = renderer.render_with_coverage(coeffs)
        torch.set_num_threads(2)
        split = renderer.render_with_coverage(coeffs)
    finally:
        torch.set_num_threads(threads)
    names = ("image", "mask", "normals", "surface", "landmarks", "depth", "albedo", "triangle_ids", "covered_albedo")
    for name in names:
        assert torch.equal(getattr(split[0], name), getattr(one_thread[0], name)), name
    for name in ("pixels", "triangle_ids", "barycentrics", "depth"):
        assert torch.equal(getattr(split[1], name), getattr(one_thread[1], name)), name
    assert split[1].batch == 3 and torch.equal(split[2], one_thread[2])
    assert split[0].mask.sum() > 0 and split[0].mask[2].sum() > 0


def test_deterministic_and_dtype_device_handling(model):
    renderer = renderer_module.FaceRenderer(model, camera_module.PerspectiveCamera.deep3d(32))
    coeffs = random_coefficients(2, seed=3)
    first, second = renderer.render(coeffs), renderer.render(coeffs)
    for name in ("image", "mask", "depth", "normals", "albedo", "surface", "triangle_ids", "landmarks"):
        assert torch.equal(getattr(first, name), getattr(second, name)), name
    with torch.inference_mode():
        from_double = renderer.render(coeffs.to(dtype=torch.float64))
    assert from_double.image.dtype == torch.float32 and torch.equal(from_double.image, first.image)
    assert renderer.to("cpu").model is model
    with pytest.raises(errors.ModelFileError):
        renderer.render(coefficients.FaceCoefficients.neutral(1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    model = sphere_model(rings=20, segments=32)
    camera = camera_module.PerspectiveCamera.deep3d(64)
    coeffs = random_coefficients(2, seed=4)
    on_cpu = renderer_module.FaceRenderer(model, camera).render(coeffs)
    on_gpu = renderer_module.FaceRenderer(sphere_model(rings=20, segments=32), camera).to("cuda").render(coeffs)
    same = on_gpu.triangle_ids.cpu() == on_cpu.triangle_ids
    assert on_gpu.image.is_cuda and same.float().mean() > 0.995
    assert torch.allclose(on_gpu.image.cpu()[same], on_cpu.image[same], atol=1e-4)


def deep3d_shading(face_texture, face_norm, gamma):
    """Deep3DFaceRecon's ParametricFaceModel.compute_color, transcribed."""
    a = [math.pi, 2 * math.pi / math.sqrt(3.0), 2 * math.pi / math.sqrt(8.0)]
    c = [1 / math.sqrt(4 * math.pi), math.sqrt(3.0) / math.sqrt(4 * math.pi), 3 * math.sqrt(5.0) / math.sqrt(12 * math.pi)]
    batch_size = gamma.shape[0]
    gamma = gamma.reshape([batch_size, 3, 9])
    init_lit = torch.tensor([0.8, 0, 0, 0, 0, 0, 0, 0, 0]).reshape([1, 1, -1])
    gamma = (gamma + init_lit).permute(0, 2, 1)
    n = face_norm
    y = torch.cat([
        a[0] * c[0] * torch.ones_like(n[..., :1]),
        -a[1] * c[1] * n[..., 1:2],
        a[1] * c[1] * n[..., 2:],
        -a[1] * c[1] * n[..., :1],
        a[2] * c[2] * n[..., :1] * n[..., 1:2],
        -a[2] * c[2] * n[..., 1:2] * n[..., 2:],
        0.5 * a[2] * c[2] / math.sqrt(3.0) * (3 * n[..., 2:] ** 2 - 1),
        -a[2] * c[2] * n[..., :1] * n[..., 2:],
        0.5 * a[2] * c[2] * (n[..., :1] ** 2 - n[..., 1:2] ** 2),
    ], dim=-1)  # fmt: skip
    r, g, b = y @ gamma[..., :1], y @ gamma[..., 1:2], y @ gamma[..., 2:]
    return torch.cat([r, g, b], dim=-1) * face_texture


def test_shading_matches_deep3dfacerecon():
    generator = torch.Generator().manual_seed(0)
    normals = torch.nn.functional.normalize(torch.randn(2, 50, 3, generator=generator), dim=-1)
    albedo = torch.rand(2, 50, 3, generator=generator)
    lighting = torch.randn(2, 27, generator=generator) * 0.3
    expected = deep3d_shading(albedo, normals, lighting)
    assert torch.allclose(shading.shade(albedo, normals, lighting), expected, atol=1e-6)
    per_pixel = shading.shade(albedo.view(2, 5, 10, 3), normals.view(2, 5, 10, 3), lighting)
    assert torch.allclose(per_pixel, expected.view(2, 5, 10, 3), atol=1e-6)
    planar = shading.shade_planar(albedo.reshape(-1, 3).t(), normals.reshape(-1, 3).t(), lighting, [50, 50])
    assert torch.allclose(planar.t(), expected.reshape(-1, 3), atol=1e-6)


def test_shading_ambient_and_directional_light():
    albedo = torch.full((1, 3, 3), 0.5)
    normals = torch.eye(3).unsqueeze(0)  # +x, +y, +z
    base = 0.8 * math.pi / math.sqrt(4 * math.pi)
    assert torch.allclose(shading.shade(albedo, normals, torch.zeros(1, 27)), torch.tensor(0.5 * base))
    band1 = math.sqrt(math.pi)  # a1 · c1
    lighting = torch.zeros(1, 27)
    lighting[0, 2] = 0.4  # red, the z (towards the camera) term
    lighting[0, 9 + 1] = 0.4  # green, the y term enters with a minus sign
    lit = shading.shade(albedo, normals, lighting)[0]
    expected = torch.full((3, 3), 0.5 * base)
    expected[2, 0] += 0.5 * 0.4 * band1
    expected[1, 1] -= 0.5 * 0.4 * band1
    assert torch.allclose(lit, expected, atol=1e-6)
    with pytest.raises(ValueError):
        shading.shade(albedo, normals, torch.zeros(1, 9))


def test_subnormal_basis_values_are_zeroed_without_changing_the_shape():
    """Subnormal basis values make every CPU product with the basis several times slower; the model
    drops them, and the shapes it builds stay what the full basis gives."""
    sphere = sphere_model(rings=6, segments=8, seed=2)
    identity = sphere.identity_basis.view(DIMS.identity, -1, 3).clone()

    def with_identity(basis):
        return model_module.MorphableModel(
            mean_shape=sphere.mean_shape, identity_basis=basis,
            expression_basis=sphere.expression_basis.view(DIMS.expression, -1, 3),
            mean_albedo=sphere.mean_albedo, albedo_basis=sphere.albedo_basis.view(DIMS.texture, -1, 3),
            triangles=sphere.triangles, landmark_ids=sphere.landmark_ids,
        )  # fmt: skip

    identity[0, :5] = 0.0
    zeroed = with_identity(identity.clone())
    identity[0, :5] = 1e-39
    model = with_identity(identity)
    assert torch.count_nonzero(model.identity_basis[0, :15]) == 0
    assert identity[0, 0, 0] == 1e-39, "the caller's tensor is left alone"
    coeffs = random_coefficients(2, seed=1)
    assert torch.equal(model.posed_vertices(coeffs), zeroed.posed_vertices(coeffs))



def test_one_persons_identity_and_albedo_products_carry_over_to_the_next_batch():
    """Through a video every batch has the same identity and albedo row: its products with the
    bases are kept for the next batch, and a new row, an edited basis or a row that needs gradients
    computes them anew."""
    model = sphere_model(rings=6, segments=8, seed=3)
    person = random_coefficients(1, seed=7)

    def expected_shape(identity_row, expression):
        offsets = (identity_row @ model.identity_basis).expand(expression.shape[0], -1) + expression @ model.expression_basis
        return offsets.view(expression.shape[0], -1, 3) + model.mean_shape

    for frames, seed, identity_row in ((3, 8, person.identity), (2, 9, person.identity), (2, 9, 2 * person.identity)):
        expression = random_coefficients(frames, seed=seed).expression
        assert torch.equal(model.shape(identity_row.expand(frames, -1), expression), expected_shape(identity_row, expression))
        albedo = model.albedo(person.texture.expand(frames, -1))
        assert torch.equal(albedo[-1], model.mean_albedo + (person.texture @ model.albedo_basis).view(-1, 3))
    with torch.no_grad():
        model.identity_basis.mul_(2.0)
    assert torch.equal(model.shape(2 * person.identity, expression), expected_shape(2 * person.identity, expression))
    identity = person.identity.clone().requires_grad_()
    model.shape(identity, expression[:1]).square().sum().backward()
    assert identity.grad is not None and identity.grad.abs().sum() > 0
