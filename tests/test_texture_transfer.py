"""The source photo carried onto target geometry: exact on synthetic photos where the source saw the
surface, invalid where it did not, relighting that follows the target's light, the drawn mouth, and
Render Textured Target's contract and errors."""
import logging

import pytest
import torch
from packloader import load_pack, pack_import

synthetic = pack_import("pipelines.training.synthetic_faces")
demo_model = pack_import("pipelines.morphable.demo_model")
texture_transfer = pack_import("pipelines.render.texture_transfer")
textured_target = pack_import("pipelines.render.textured_target")
mouth = pack_import("pipelines.render.mouth")
renderer_module = pack_import("pipelines.render.renderer")
camera_module = pack_import("pipelines.morphable.camera")
coefficients_module = pack_import("pipelines.morphable.coefficients")
images = pack_import("pipelines.images")
concurrent = pack_import("pipelines.concurrent")
nodes = pack_import("nodes")
base = pack_import("nodes.base")
load_pack()

SIZE = 64


@pytest.fixture(scope="module")
def scene():
    """One synthetic person in six views, photographed, and a transfer at the photos' size."""
    model = demo_model.demo_face_model()
    settings = synthetic.SyntheticFaceSettings(image_size=SIZE)
    generator = torch.Generator().manual_seed(1)
    person = synthetic.random_identity(model, settings, generator)
    coeffs = synthetic.random_view_coefficients(model, person.identity, person.texture, 6, settings, generator)
    coeffs.expression[0] = 0  # a closed-mouth source, as portraits are
    renderer = renderer_module.FaceRenderer(model, camera_module.PerspectiveCamera.deep3d(SIZE))
    photos, maps = synthetic.photograph(renderer, coeffs, [person] * 6)
    return model, coeffs, photos, maps, texture_transfer.TextureTransfer(renderer)


def _error_on(image, truth, mask):
    weight = mask.unsqueeze(-1)
    return float(((image - truth).abs() * weight).sum() / weight.sum().clamp_min(1) / 3)


def test_warp_reproduces_the_target_photo_where_the_source_saw_it(scene):
    model, coeffs, photos, maps, transfer = scene
    source = transfer.prepare_source(coeffs[0:1], photos[0:1])
    relit = transfer.warp(source, coeffs[1:], relight=True)
    plain = transfer.warp(source, coeffs[1:], relight=False)
    assert torch.equal(relit.coverage, maps.mask[1:]), "coverage is the target render's mask"
    assert float(relit.valid.sum() / relit.coverage.sum()) > 0.7
    assert (relit.valid <= relit.coverage).all()
    relit_error = _error_on(relit.image, photos[1:], relit.valid)
    plain_error = _error_on(plain.image, photos[1:], relit.valid)
    assert relit_error < 0.05, f"relit warp differs from the target photo by {relit_error:.3f} on valid pixels"
    assert plain_error > 2 * relit_error, "the views are lit differently, so relighting must matter"
    assert (relit.image[relit.valid == 0] == 0).all()


def test_warp_onto_itself_is_the_photo(scene):
    _, coeffs, photos, maps, transfer = scene
    same = transfer.warp(transfer.prepare_source(coeffs[2:3], photos[2:3]), coeffs[2:3])
    assert float(same.valid.sum() / same.coverage.sum()) > 0.85
    assert _error_on(same.image, photos[2:3], same.valid) < 0.02


def test_hidden_surface_is_invalid(scene):
    _, coeffs, photos, _, transfer = scene
    frontal = coeffs[0:1].replace(rotation=torch.zeros(1, 3))
    profile = frontal.replace(rotation=torch.tensor([[0.0, 1.3, 0.0]]))
    photo_front = torch.rand(1, SIZE, SIZE, 3)
    # A photo of a head turned far to one side saw little of the frontal face's other half.
    from_profile = transfer.warp(transfer.prepare_source(profile, photo_front), frontal)
    from_front = transfer.warp(transfer.prepare_source(frontal, photo_front), frontal)
    assert from_profile.valid.sum() < 0.75 * from_front.valid.sum()
    # Which half: the one turned away from the camera in the profile photo (image left or right of the centre line).
    columns = from_profile.valid[0].sum(0)
    assert min(columns[: SIZE // 2].sum(), columns[SIZE // 2 :].sum()) < 0.5 * max(columns[: SIZE // 2].sum(), columns[SIZE // 2 :].sum())


def test_per_frame_sources_match_one_source_at_a_time_and_any_photo_size(scene):
    _, coeffs, photos, _, transfer = scene
    together = transfer.warp(transfer.prepare_source(coeffs[0:3], photos[0:3]), coeffs[3:6])
    for k in range(3):
        alone = transfer.warp(transfer.prepare_source(coeffs[k : k + 1], photos[k : k + 1]), coeffs[3 + k : 4 + k])
        assert torch.allclose(together.image[k], alone.image[0], atol=1e-5)
        assert torch.equal(together.valid[k], alone.valid[0])
    larger = images.resize_images(photos[0:1], 2 * SIZE)
    from_large = transfer.warp(transfer.prepare_source(coeffs[0:1], larger), coeffs[1:3])
    from_small = transfer.warp(transfer.prepare_source(coeffs[0:1], photos[0:1]), coeffs[1:3])
    assert torch.equal(from_large.valid, from_small.valid)
    assert _error_on(from_large.image, from_small.image, from_small.valid) < 0.03


def test_frames_warped_concurrently_match_one_thread(scene, monkeypatch):
    """On a CPU with two threads groups of target frames are warped concurrently (here 3 + 2), with
    the render's covered pixels given or rasterized anew, from one shared source or one per frame."""
    model, coeffs, photos, maps, transfer = scene
    monkeypatch.setattr(concurrent, "MIN_ITEMS_PER_PART", 1)
    shared, per_frame = transfer.prepare_source(coeffs[0:1], photos[0:1]), transfer.prepare_source(coeffs[1:], photos[1:])

    def warps():
        render, covered, vertices = transfer.renderer.render_with_coverage(coeffs[1:])
        normals = render.normals.view(-1, 3).index_select(0, covered.pixels).T
        return [transfer.warp(shared, coeffs[1:]), transfer.warp(per_frame, coeffs[1:]),
                transfer.warp(shared, coeffs[1:], True, covered, vertices, normals)]  # fmt: skip

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one_thread = warps()
        torch.set_num_threads(2)
        split = warps()
    finally:
        torch.set_num_threads(threads)
    for ours, expected in zip(split, one_thread, strict=True):
        for name in ("image", "valid", "coverage"):
            assert torch.equal(getattr(ours, name), getattr(expected, name)), name
    assert torch.equal(split[2].image, split[0].image) and split[0].valid[4].sum() > 0


def test_source_and_target_counts_must_fit(scene):
    _, coeffs, photos, _, transfer = scene
    with pytest.raises(ValueError, match="one source or one per frame"):
        transfer.warp(transfer.prepare_source(coeffs[0:2], photos[0:2]), coeffs[0:3])
    with pytest.raises(ValueError, match="one row per image"):
        transfer.prepare_source(coeffs[0:2], photos[0:1])


def test_mouth_interior_appears_only_where_the_lips_part(scene):
    model, coeffs, _, _, transfer = scene
    jaw = model.expression_index("jaw_open")
    closed = coeffs[0:1].replace(rotation=torch.zeros(1, 3))
    opened = closed.replace(expression=closed.expression.clone())
    opened.expression[0, jaw] = 1.0
    renderer = renderer_module.FaceRenderer(model, camera_module.PerspectiveCamera.deep3d(128))
    for coeffs_, expect_open in ((closed, False), (opened, True)):
        landmarks = renderer.render(coeffs_).landmarks
        colour, coverage = mouth.draw_mouth_interior(landmarks, 128)
        if not expect_open:
            assert coverage.sum() == 0
            continue
        inner = landmarks[0, 60:68]
        assert coverage.sum() > 20
        ys, xs = torch.nonzero(coverage[0] > 0.5, as_tuple=True)
        assert inner[:, 0].min() - 1 <= xs.min() and xs.max() <= inner[:, 0].max() + 1
        assert inner[:, 1].min() - 1 <= ys.min() and ys.max() <= inner[:, 1].max() + 1
        luminance = colour[0].mean(-1)[coverage[0] > 0.5]
        assert luminance.max() > 0.7 and luminance.min() < 0.15, "teeth and a dark cavity"


def test_mouth_drawn_in_its_box_equals_every_pixel_evaluated(scene, monkeypatch):
    """The mouth is computed only in the box around the batch's open mouths: evaluating the same
    formulas at every pixel finds no coverage outside it. Inner lips collapsed onto one point draw nothing."""
    model, coeffs, _, _, _ = scene
    jaw = model.expression_index("jaw_open")
    frames = coeffs[1:].replace(expression=coeffs[1:].expression.clone())
    frames.expression[:, jaw] = torch.tensor([0.0, 0.4, 0.8, 1.0, 0.6])
    renderer = renderer_module.FaceRenderer(model, camera_module.PerspectiveCamera.deep3d(128))
    landmarks = renderer.render(frames).landmarks
    landmarks = landmarks + torch.randn(landmarks.shape, generator=torch.Generator().manual_seed(0))
    colour, coverage = mouth.draw_mouth_interior(landmarks, 128)
    monkeypatch.setattr(mouth, "_mouth_box", lambda *args: (slice(0, 128), slice(0, 128)))
    everywhere_colour, everywhere = mouth.draw_mouth_interior(landmarks, 128)
    assert coverage.sum() > 100 and torch.equal(coverage, everywhere)
    assert torch.equal(colour, everywhere_colour) and (colour[coverage == 0] == 0).all()
    monkeypatch.undo()
    collapsed = landmarks.clone()
    collapsed[:, 60:68] = collapsed[:, 60:61]
    assert not mouth.lips_apart(collapsed).any() and mouth.draw_mouth_interior(collapsed, 128)[1].sum() == 0


def test_textured_target_composes_face_mouth_and_surroundings(scene):
    model, coeffs, photos, maps, transfer = scene
    source = transfer.prepare_source(coeffs[0:1], photos[0:1])
    result = textured_target.render_textured_target(transfer, source, coeffs[1:])
    outside = result.mask == 0
    assert torch.allclose(result.image[outside], photos[0:1].expand(5, -1, -1, -1)[outside])
    assert (result.mask >= maps.mask[1:]).all()
    assert ((result.visible_fraction > 0.5) & (result.visible_fraction <= 1)).all()
    face_only = result.valid > 0
    assert torch.allclose(result.image[face_only], result.warped[face_only], atol=1e-6) or \
        _error_on(result.image, result.warped, result.valid) < 0.05  # the drawn mouth may cover a few valid pixels


def _node_inputs(scene, **changes):
    model, coeffs, photos, _, _ = scene
    inputs = dict(
        face_model=model, source_image=photos[0:1], source_coefficients=coeffs[0:1], coefficients=coeffs[1:],
        resolution=SIZE, relight=True, mouth="drawn teeth", batch_size=2,
    )
    inputs.update(changes)
    return inputs


def test_node_outputs_and_chunking(scene):
    node = nodes.NODE_CLASS_MAPPINGS["TalkingFaceRenderTexturedTarget"]()
    image, mask, warped, valid = node.execute(**_node_inputs(scene))
    assert image.shape == (5, SIZE, SIZE, 3) and mask.shape == (5, SIZE, SIZE)
    assert warped.shape == image.shape and valid.shape == mask.shape
    one_batch = node.execute(**_node_inputs(scene, batch_size=16))
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip((image, mask, warped, valid), one_batch, strict=True))
    rgba = torch.cat([scene[2][0:1], torch.ones(1, SIZE, SIZE, 1)], -1)
    assert torch.allclose(node.execute(**_node_inputs(scene, source_image=rgba))[0], image, atol=1e-5)


def test_node_errors_name_the_input_and_the_fix(scene, caplog):
    model, coeffs, photos, _, _ = scene
    node = nodes.NODE_CLASS_MAPPINGS["TalkingFaceRenderTexturedTarget"]()
    other_dims = coefficients_module.FaceCoefficients.neutral(2, coefficients_module.CoefficientDims(4, 3, 2))
    nan = coeffs[1:].replace(expression=coeffs[1:].expression.clone())
    nan.expression[2, 0] = float("nan")
    cases = [
        (dict(source_coefficients=coeffs[0:2]), "2 source_coefficients rows for 1 source images"),
        (dict(source_image=photos[0:2], source_coefficients=coeffs[0:2]), "2 source images for 5 target frames"),
        (dict(coefficients=other_dims), "coefficients were made for a face model"),
        (dict(coefficients=nan), "NaN or infinite values in frames 2"),
        (dict(source_image=photos[0:1, :, :40]), "connect the square face crops"),
        (dict(coefficients=coeffs[0:0]), "has no frames"),
    ]
    for change, message in cases:
        with pytest.raises(base.NodeInputError, match=message) as error:
            node.execute(**_node_inputs(scene, **change))
        assert str(error.value).startswith("Render Textured Target:")
    turned_away = coeffs[1:2].replace(rotation=torch.tensor([[0.0, 3.0, 0.0]]))
    with caplog.at_level(logging.WARNING):
        node.execute(**_node_inputs(scene, coefficients=turned_away))
    assert "almost none of the face in frames 0" in caplog.text


def test_unseen_pixels_take_the_colour_of_the_nearest_seen_ones():
    image = torch.zeros(1, 16, 16, 3)
    image[0, :, :8] = torch.tensor([0.8, 0.5, 0.4])
    image[0, :, 8:] = torch.tensor([0.2, 0.3, 0.9])
    valid = torch.ones(1, 16, 16)
    valid[0, 4:12, 6:10] = 0
    filled = textured_target.fill_from_valid(image * valid.unsqueeze(-1), valid)
    assert torch.equal(filled[valid > 0], image[valid > 0]), "seen pixels keep their colour"
    left, right = image[0, 8, 0], image[0, 8, 15]
    for column, nearer, farther in ((6, left, right), (9, right, left)):
        pixel = filled[0, 8, column]
        assert (pixel - nearer).norm() < 0.5 * (pixel - farther).norm(), "an unseen pixel leans to its nearer side"
    assert ((filled >= 0.2 - 1e-6) & (filled <= 0.9 + 1e-6)).all(), "blends of seen colours only"
    assert torch.allclose(textured_target.fill_from_valid(torch.full((1, 9, 9, 3), 0.3), torch.zeros(1, 9, 9) + (torch.arange(9) == 4)),
                          torch.full((1, 9, 9, 3), 0.3)), "one seen pixel colours everything"


def test_auto_mouth_keeps_an_open_mouthed_photos_own_teeth(scene):
    model, coeffs, photos, _, _ = scene
    node = nodes.NODE_CLASS_MAPPINGS["TalkingFaceRenderTexturedTarget"]()
    jaw = model.expression_index("jaw_open")
    opened = coeffs[0:1].replace(expression=coeffs[0:1].expression.clone())
    opened.expression[0, jaw] = 0.8

    def run(mouth, source_coefficients):
        return node.execute(**_node_inputs(scene, mouth=mouth, source_coefficients=source_coefficients))[0]

    assert torch.equal(run("auto", coeffs[0:1]), run("drawn teeth", coeffs[0:1])), "a closed-mouth photo gets drawn teeth"
    assert torch.equal(run("auto", opened), run("source photo", opened)), "an open-mouthed photo keeps its own"
    assert not torch.equal(run("drawn teeth", opened), run("source photo", opened))


def test_driving_frames_lend_their_own_mouth(scene):
    model, coeffs, _, _, transfer = scene
    generator = torch.Generator().manual_seed(4)
    settings = synthetic.SyntheticFaceSettings(image_size=SIZE)
    person = synthetic.random_identity(model, settings, generator)
    views = synthetic.random_view_coefficients(model, person.identity, person.texture, 3, settings, generator)
    views.expression[0] = 0
    views.expression[1:, model.expression_index("jaw_open")] = torch.tensor([0.9, 1.0])
    photos, maps = synthetic.photograph(transfer.renderer, views, [person] * 3)
    node = nodes.NODE_CLASS_MAPPINGS["TalkingFaceRenderTexturedTarget"]()
    common = dict(face_model=model, source_image=photos[0:1], source_coefficients=views[0:1], coefficients=views[1:],
                  resolution=SIZE, relight=True, mouth="drawn teeth", batch_size=1)
    drawn = node.execute(**common)[0]
    driven = node.execute(**common, driving_image=photos[1:], driving_coefficients=views[1:])[0]
    _, mouth_alpha = mouth.draw_mouth_interior(maps.landmarks[1:], SIZE)
    inside = mouth_alpha > 0.5
    assert inside.sum() > 10
    truth = photos[1:]
    assert _error_on(driven, truth, inside.float()) < 0.5 * _error_on(drawn, truth, inside.float())
    with pytest.raises(base.NodeInputError, match="driving_image and driving_coefficients go together"):
        node.execute(**common, driving_image=photos[1:])
    with pytest.raises(base.NodeInputError, match="one square crop and one row per output frame"):
        node.execute(**common, driving_image=photos[1:2], driving_coefficients=views[1:2])
