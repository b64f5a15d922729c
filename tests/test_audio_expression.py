"""The fast lip/jaw → expression solver against the Foundation's Levenberg–Marquardt fitter."""
import pytest
import torch
from packloader import pack_import

expression = pack_import("pipelines.audio.expression")
landmarks = pack_import("pipelines.audio.landmarks")
motion = pack_import("pipelines.audio.motion")
fitting = pack_import("pipelines.morphable.fitting")
coefficients = pack_import("pipelines.morphable.coefficients")
camera_module = pack_import("pipelines.morphable.camera")
errors = pack_import("pipelines.errors")
MOUTH = list(pack_import("pipelines.audio.landmark_model").MOUTH_POINTS)
FRAMES = 16


@pytest.fixture(scope="module")
def face():
    return pack_import("pipelines.morphable.demo_model").demo_face_model()


def talking(face, mode, seed=0):
    """Base head motion and noisy landmarks of a face talking on top of it: every mouth-visible
    direction moves (far more than speech does), 0.7 px landmark noise."""
    generator = torch.Generator().manual_seed(seed)
    portrait = coefficients.FaceCoefficients.neutral(1, face.dims)
    portrait.identity[0] = 0.7 * torch.randn(face.dims.identity, generator=generator)
    portrait.rotation[0] = torch.tensor([0.08, 0.3, 0.05])
    if mode == "turning":  # a head that turns fast and far, as a reference video may
        base = motion.head_motion(face, portrait, FRAMES, 25.0, "hold")
        base.rotation[:, 1] += 0.5 * torch.sin(torch.arange(FRAMES) / 3.0)
        base.rotation[:, 0] += 0.2 * torch.cos(torch.arange(FRAMES) / 2.0)
    else:
        base = motion.head_motion(face, portrait, FRAMES, 25.0, mode, seed=seed, strength=2.0)
    seen = expression.mouth_directions(face)
    truth = base.map(lambda value: value.clone())
    truth.expression[:, seen] = 0.3 * torch.randn(FRAMES, int(seen.sum()), generator=generator)
    truth.expression[:, face.expression_index("jaw_open")] = torch.rand(FRAMES, generator=generator)
    camera = camera_module.PerspectiveCamera.deep3d()
    points = landmarks.project_landmarks(face, truth, camera) + 0.7 * torch.randn(FRAMES, 68, 2, generator=generator)
    return landmarks.TalkingLandmarks(points=points, base=base, fps=25.0, camera=camera)


def levenberg_marquardt(face, sequence, prior, jaw_weight):
    """The full fit, run to convergence, with the same prior and point weights."""
    config = fitting.FitConfig(contour=False, pose_iterations=0, rounds=1, iterations=10, tolerance=1e-12,
                               expression_prior=prior)
    weights = expression.mouth_weights()
    weights[list(expression.JAW_CONTOUR)] = jaw_weight
    fitter = fitting.LandmarkFitter(face, sequence.camera, config)
    result = fitter.fit(sequence.points, weights, optimize={"expression"}, init=sequence.base)
    # Directions the mouth cannot see keep the base's values in the fast fit; the LM fit moves them
    # by a hair (their reach is below the threshold, not exactly zero).
    seen = expression.mouth_directions(face)
    fitted = torch.where(seen, result.coefficients.expression, sequence.base.expression)
    return result.coefficients.replace(expression=fitted), result.landmark_error


DEFAULTS = (expression.EXPRESSION_PRIOR, expression.JAW_WEIGHT)


@pytest.mark.parametrize(
    ("mode", "prior", "jaw_weight"),
    [("hold", *DEFAULTS), ("idle", *DEFAULTS), ("turning", *DEFAULTS), ("turning", 0.5, 1.0)],
)
def test_fast_fit_matches_levenberg_marquardt(face, mode, prior, jaw_weight):
    sequence = talking(face, mode)
    fast, error = expression.landmarks_to_expression(face, sequence, smoothing=0.0, prior=prior, jaw_weight=jaw_weight)
    reference, reference_error = levenberg_marquardt(face, sequence, prior, jaw_weight)
    camera = sequence.camera
    fast_points = landmarks.project_landmarks(face, fast, camera)[:, MOUTH]
    reference_points = landmarks.project_landmarks(face, reference, camera)[:, MOUTH]
    gap = (fast_points - reference_points).square().sum(-1).mean(-1).sqrt()  # RMS px per frame at 224
    assert gap.max() < 0.05
    assert gap.max() < 0.05 * reference_error.mean()
    # the same optimum: the fast fit's own landmark error is the converged fit's, to a hair
    assert torch.allclose(error, reference_error, atol=0.01)
    assert torch.equal(fast.rotation, sequence.base.rotation) and torch.equal(fast.identity, sequence.base.identity)


def test_held_head_shares_one_system_with_the_same_result(face):
    sequence = talking(face, "hold", seed=1)
    solver = expression.MouthExpressionSolver(face, sequence.camera)
    base = sequence.base
    observed = sequence.points[:, MOUTH]
    held, held_error = solver.solve(observed, base)
    # A pose change far below anything visible forces one system per frame.
    nudged = base.replace(rotation=base.rotation + 1e-7 * torch.arange(FRAMES).unsqueeze(1))
    per_frame, per_frame_error = solver.solve(observed, nudged)
    assert torch.allclose(held, per_frame, atol=1e-3) and torch.allclose(held_error, per_frame_error, atol=1e-4)


def test_long_sequences_fit_in_chunks_with_progress(face, monkeypatch):
    sequence = talking(face, "idle", seed=2)
    whole, whole_error = expression.landmarks_to_expression(face, sequence, smoothing=0.5)
    monkeypatch.setattr(expression, "FIT_CHUNK_FRAMES", 7)
    done = []
    chunked, chunked_error = expression.landmarks_to_expression(face, sequence, smoothing=0.5, on_chunk=done.append)
    assert done == [7, 14, 16]
    assert torch.allclose(chunked.expression, whole.expression, atol=1e-5)
    assert torch.allclose(chunked_error, whole_error, atol=1e-5)


def test_bad_settings_are_refused(face):
    sequence = talking(face, "hold")
    for settings, message in (({"prior": -1.0}, "prior"), ({"steps": 0}, "step"), ({"jaw_weight": 0.0}, "jaw weight")):
        with pytest.raises((errors.TalkingFaceError, ValueError), match=message):  # jaw_weight is no node input
            expression.landmarks_to_expression(face, sequence, **settings)
    short = landmarks.TalkingLandmarks(points=sequence.points[:5], base=sequence.base, fps=25.0, camera=sequence.camera)
    with pytest.raises(errors.TalkingFaceError, match="base coefficients"):
        expression.landmarks_to_expression(face, short)
