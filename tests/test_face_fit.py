"""Coefficients from faces: synthetic demo faces with known coefficients and landmarks come back."""
import pytest
import torch
from packloader import pack_import

coefficients = pack_import("pipelines.morphable.coefficients")
demo = pack_import("pipelines.morphable.demo_model")
renderer_module = pack_import("pipelines.render.renderer")
camera_module = pack_import("pipelines.morphable.camera")
faces_module = pack_import("pipelines.face.faces")
fit_module = pack_import("pipelines.face.fit")
appearance = pack_import("pipelines.face.appearance")
motion = pack_import("pipelines.face.motion")
gaze_module = pack_import("pipelines.face.gaze")
errors = pack_import("pipelines.errors")


@pytest.fixture(scope="module")
def model():
    return demo.demo_face_model(12)


def render(model, coeffs, size):
    return renderer_module.FaceRenderer(model, camera_module.PerspectiveCamera.deep3d(size)).render(coeffs)


def known_faces(model, frames: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    coeffs = coefficients.FaceCoefficients.neutral(frames, model.dims)
    coeffs.identity[:] = 0.8 * torch.randn(model.dims.identity, generator=generator)
    coeffs.texture[:] = torch.randn(model.dims.texture, generator=generator)
    coeffs.expression[:, model.expression_index("jaw_open")] = torch.linspace(0.0, 0.8, frames)
    coeffs.expression[:, model.expression_index("smile")] = torch.linspace(0.6, 0.0, frames)
    coeffs.rotation[:, 1] = torch.linspace(-0.25, 0.25, frames)
    coeffs.rotation[:, 0] = 0.1
    coeffs.lighting[:] = 0.05 * torch.randn(1, 27, generator=generator)
    return coeffs


def test_portrait_fit_recovers_expression_and_pose_from_landmarks(model):
    truth = known_faces(model, 1)
    maps = render(model, truth, 224)
    faces = faces_module.faces_from_landmarks(maps.image, maps.landmarks)
    fit = fit_module.fit_faces(model, faces, appearance=False)
    found = fit.coefficients
    assert float(fit.landmark_error[0]) < 1.0
    # The crop re-frames the face by a similarity, so compare what it leaves alone: expression and yaw.
    jaw, smile = model.expression_index("jaw_open"), model.expression_index("smile")
    assert float(found.expression[0, jaw]) == pytest.approx(0.0, abs=0.15)
    assert float(found.expression[0, smile]) == pytest.approx(0.6, abs=0.2)
    assert float(found.rotation[0, 1]) == pytest.approx(float(truth.rotation[0, 1]), abs=0.05)


@pytest.mark.parametrize("mode", fit_module.VIDEO_MODES)
def test_video_fit_shares_identity_and_follows_the_motion(model, mode):
    truth = known_faces(model, 4, seed=1)
    maps = render(model, truth, 224)
    faces = faces_module.faces_from_landmarks(maps.image, maps.landmarks)
    found = fit_module.fit_faces(model, faces, appearance=False, gaze=False, video_mode=mode, smoothing=0.0).coefficients
    assert torch.allclose(found.identity, found.identity[:1].expand_as(found.identity))
    jaw = model.expression_index("jaw_open")
    assert torch.corrcoef(torch.stack([found.expression[:, jaw], truth.expression[:, jaw]]))[0, 1] > 0.95
    assert (found.rotation[:, 1] - truth.rotation[:, 1]).abs().max() < 0.06


def test_appearance_recovers_lighting_for_known_texture_and_reproduces_the_image(model):
    truth = known_faces(model, 2, seed=2)
    image = render(model, truth, 96).image
    blank = truth.replace(lighting=torch.zeros_like(truth.lighting))
    lit = appearance.estimate_appearance(model, blank, image, fixed_texture=truth.texture[0])
    assert (lit.lighting - truth.lighting).abs().max() < 0.01
    both = appearance.estimate_appearance(model, blank.replace(texture=torch.zeros_like(truth.texture)), image,
                                          texture_prior=0.01)
    mask = render(model, truth, 96).mask.bool()
    error = (render(model, both, 96).image - image).abs()[mask].mean()
    neutral = (render(model, blank.replace(texture=torch.zeros_like(truth.texture)), 96).image - image).abs()[mask].mean()
    assert float(error) < 0.01 < float(neutral)
    assert torch.allclose(both.texture[0], both.texture[1])  # one person, one texture


def test_gaze_comes_from_the_eyes(model):
    coeffs = coefficients.FaceCoefficients.neutral(5, model.dims)
    coeffs.gaze[:] = torch.tensor([[0.0, 0.0], [0.0, 0.3], [0.0, -0.3], [0.2, 0.0], [-0.2, 0.0]])
    maps = render(model, coeffs, 112)  # the resolution fit_faces reads the eyes at
    found = gaze_module.estimate_gaze(maps.image, maps.landmarks)
    assert (found - coeffs.gaze).abs().max() < 0.2  # calibrated on a finer demo mesh; this one is coarse
    assert found[1, 1] > 0.15 > -0.15 > found[2, 1] and found[3, 0] > 0.1 > -0.05 > found[4, 0]


def test_unknown_video_mode_is_refused(model):
    maps = render(model, coefficients.FaceCoefficients.neutral(2, model.dims), 64)
    faces = faces_module.faces_from_landmarks(maps.image, maps.landmarks)
    with pytest.raises(errors.TalkingFaceError, match="video_mode"):
        fit_module.fit_faces(model, faces, appearance=False, video_mode="slow")


def test_appearance_checks_its_inputs(model):
    coeffs = coefficients.FaceCoefficients.neutral(2, model.dims)
    with pytest.raises(errors.TalkingFaceError, match="one square crop per coefficient frame"):
        appearance.estimate_appearance(model, coeffs, torch.zeros(3, 32, 32, 3))


def test_faces_from_landmarks_checks_the_shape():
    with pytest.raises(errors.TalkingFaceError, match="68 landmarks per frame"):
        faces_module.faces_from_landmarks(torch.zeros(2, 32, 32, 3), torch.zeros(2, 5, 2))


def test_reenact_and_swap_presets_take_each_field_from_the_right_side(model):
    source = known_faces(model, 1, seed=3)
    driver = known_faces(model, 4, seed=4)
    reenacted = motion.mix_coefficients(source, driver, motion.PRESETS["reenact"])
    assert reenacted.frames == 4
    assert torch.equal(reenacted.identity, source.identity.expand(4, -1))
    assert torch.equal(reenacted.lighting, source.lighting.expand(4, -1))
    assert torch.equal(reenacted.expression, driver.expression) and torch.equal(reenacted.rotation, driver.rotation)
    swapped = motion.mix_coefficients(source, driver, motion.PRESETS["swap"])
    assert torch.equal(swapped.lighting, driver.lighting) and torch.equal(swapped.texture, source.texture.expand(4, -1))
    with pytest.raises(errors.TalkingFaceError, match="one of them must have 1 frame"):
        motion.mix_coefficients(known_faces(model, 2), driver, motion.PRESETS["reenact"])


@pytest.mark.parametrize("named", [True, False], ids=["named_directions", "derived_directions"])
def test_expression_sliders_move_the_right_landmarks(model, named):
    if not named:  # a model without names (like BFM) gets directions derived from landmark motion
        model = demo.demo_face_model(12)
        model.expression_names = []
    neutral = coefficients.FaceCoefficients.neutral(1, model.dims)
    base = render(model, neutral, 224).landmarks[0]

    def moved(**sliders):
        edited = motion.edit_coefficients(model, neutral, sliders=sliders)
        return render(model, edited, 224).landmarks[0] - base

    jaw = moved(jaw_open=1.0)
    assert float(jaw[8, 1]) > 5.0  # chin down (pixels grow downwards)
    assert float(jaw[17:27, 1].abs().max()) < 0.5 * float(jaw[8, 1])
    brows = moved(brow_raise=1.0)
    assert float(brows[17:27, 1].mean()) < -1.0
    blink = moved(blink=1.0)
    assert float(blink[[37, 38, 43, 44], 1].mean()) > 1.0  # upper lids down
    turned = motion.edit_coefficients(model, neutral, pose_degrees=(0.0, 20.0, 0.0))
    assert float(turned.rotation[0, 1]) == pytest.approx(0.349, abs=1e-3)
