"""Head motion for a still portrait and the lip/jaw landmark → expression fit on the demo face."""
import pytest
import torch
from packloader import pack_import

motion = pack_import("pipelines.audio.motion")
expression = pack_import("pipelines.audio.expression")
landmarks = pack_import("pipelines.audio.landmarks")
coefficients = pack_import("pipelines.morphable.coefficients")
errors = pack_import("pipelines.errors")
camera_module = pack_import("pipelines.morphable.camera")


@pytest.fixture(scope="module")
def face():
    return pack_import("pipelines.morphable.demo_model").demo_face_model()


def portrait(face):
    coeffs = coefficients.FaceCoefficients.neutral(1, face.dims)
    coeffs.identity[0] = 0.5 * torch.randn(face.dims.identity, generator=torch.Generator().manual_seed(3))
    coeffs.rotation[0] = torch.tensor([0.05, 0.2, 0.0])
    return coeffs


def test_hold_idle_and_reference_motion(face):
    still = portrait(face)
    held = motion.head_motion(face, still, 10, 25.0, "hold")
    assert held.frames == 10 and torch.equal(held.rotation, still.rotation.expand(10, 3))
    idle = motion.head_motion(face, still, 250, 25.0, "idle", seed=1)
    again = motion.head_motion(face, still, 250, 25.0, "idle", seed=1)
    other = motion.head_motion(face, still, 250, 25.0, "idle", seed=2)
    assert torch.equal(idle.rotation, again.rotation) and not torch.equal(idle.rotation, other.rotation)
    swing = (idle.rotation - still.rotation).abs().amax(0)
    assert (swing > 0.003).all() and (swing < 0.1).all()  # visible but gentle
    assert (idle.rotation.diff(dim=0).abs() < 0.01).all()  # smooth
    blink = idle.expression[:, face.expression_index("blink_left")]
    assert blink.max() > 0.9 and (blink > 0.5).float().mean() < 0.2  # 10 s: blinks, mostly open
    assert torch.equal(idle.identity, still.identity.expand(250, -1))

    reference = coefficients.FaceCoefficients.neutral(4, face.dims)
    reference.rotation[:, 1] = torch.tensor([0.5, 0.6, 0.7, 0.8])
    reference.expression[2, face.expression_index("blink_right")] = 1.0
    reference.gaze[:, 0] = 0.1
    followed = motion.head_motion(face, still, 9, 25.0, "reference", reference=reference)
    yaw = followed.rotation[:, 1] - still.rotation[0, 1]
    assert torch.allclose(yaw, torch.tensor([0.0, 0.1, 0.2, 0.3, 0.2, 0.1, 0.0, 0.1, 0.2]), atol=1e-6)  # ping-pong
    assert followed.expression[2, face.expression_index("blink_right")] == 1.0
    assert torch.allclose(followed.gaze[:, 0], torch.full((9,), 0.1))
    with pytest.raises(errors.TalkingFaceError, match="needs reference coefficients"):
        motion.head_motion(face, still, 9, 25.0, "reference")
    with pytest.raises(errors.TalkingFaceError, match="unknown head_motion"):
        motion.head_motion(face, still, 9, 25.0, "dance")


def talking_truth(face, frames=40, hertz=2.0):
    base = motion.head_motion(face, portrait(face), frames, 25.0, "idle", seed=5)
    truth = base.map(lambda value: value.clone())
    time = torch.arange(frames) / 25.0
    truth.expression[:, face.expression_index("jaw_open")] = 0.5 + 0.5 * torch.sin(2 * torch.pi * hertz * time)
    truth.expression[:, face.expression_index("lip_pucker")] = 0.4 * (1 + torch.cos(2 * torch.pi * 1.3 * time))
    truth.expression[:, face.expression_index("smile")] = 0.3
    return base, truth


def test_expression_fit_recovers_mouth_motion_and_keeps_the_rest(face):
    base, truth = talking_truth(face)
    camera = camera_module.PerspectiveCamera.deep3d()
    points = landmarks.project_landmarks(face, truth, camera)
    sequence = landmarks.TalkingLandmarks(points=points, base=base, fps=25.0, camera=camera)
    fitted, error = expression.landmarks_to_expression(face, sequence, smoothing=0.0)
    assert error.max() < 0.5  # px at 224
    refit = landmarks.project_landmarks(face, fitted, camera)
    mouth = list(pack_import("pipelines.audio.landmark_model").MOUTH_POINTS)
    assert (refit[:, mouth] - points[:, mouth]).norm(dim=-1).mean() < 0.3
    jaw = face.expression_index("jaw_open")
    assert (fitted.expression[:, jaw] - truth.expression[:, jaw]).abs().max() < 0.1
    # pose, identity and blinks are the base's: the mouth landmarks cannot see blinks
    assert torch.equal(fitted.rotation, base.rotation) and torch.equal(fitted.identity, base.identity)
    blink = face.expression_index("blink_left")
    assert not expression.mouth_directions(face)[blink]
    assert torch.equal(fitted.expression[:, blink], base.expression[:, blink])


def test_smoothing_removes_jitter_not_motion(face):
    base, truth = talking_truth(face, hertz=0.7)
    camera = camera_module.PerspectiveCamera.deep3d()
    points = landmarks.project_landmarks(face, truth, camera)
    noisy = points + 1.5 * torch.randn(points.shape, generator=torch.Generator().manual_seed(0))
    sequence = landmarks.TalkingLandmarks(points=noisy, base=base, fps=25.0, camera=camera)
    jaw = face.expression_index("jaw_open")
    raw = expression.landmarks_to_expression(face, sequence, smoothing=0.0)[0].expression[:, jaw]
    smooth = expression.landmarks_to_expression(face, sequence, smoothing=1.0)[0].expression[:, jaw]
    truth_jaw = truth.expression[:, jaw]
    inside = slice(3, -3)  # away from the ends, where any filter must guess
    assert (smooth - truth_jaw)[inside].abs().mean() < (raw - truth_jaw)[inside].abs().mean()
    assert smooth.diff(n=2).abs().mean() < raw.diff(n=2).abs().mean()
    with pytest.raises(errors.TalkingFaceError, match="smoothing"):
        expression.landmarks_to_expression(face, sequence, smoothing=-1.0)
