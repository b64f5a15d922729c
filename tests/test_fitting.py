"""The landmark fitter on synthetic faces of the demo model, rendered from known coefficients.

Landmarks are the projections of the model's 68 landmark vertices through the Deep3DFaceRecon
camera at 224 px (what "synthetic faces" means in the issue); the contour test moves the jaw
landmarks onto the face's outline, as a detector sees them on a turned head.
"""
from __future__ import annotations

import math

import pytest
import torch
from packloader import pack_import

fitting = pack_import("pipelines.morphable.fitting")
banded_solve = pack_import("pipelines.morphable.fitting.banded_solve")
demo_model = pack_import("pipelines.morphable.demo_model")
camera_module = pack_import("pipelines.morphable.camera")
model_module = pack_import("pipelines.morphable.model")
coefficients_module = pack_import("pipelines.morphable.coefficients")
errors = pack_import("pipelines.errors")

CAMERA = camera_module.PerspectiveCamera.deep3d(224)
DEGREE = math.pi / 180
JAW = [i for i in range(17) if i != 8]
INNER = list(range(17, 68))


@pytest.fixture(scope="module")
def model():
    return demo_model.demo_face_model()


def random_faces(model, count: int, seed: int, yaw=(0, 60), pitch=30, roll=45) -> dict[str, torch.Tensor]:
    """Coefficients of ``count`` faces (identity ~N(0, 1), expression ~N(0, 0.5²)), a pose with
    |yaw| in ``yaw`` degrees, pitch and roll up to the given degrees, placed and scaled so the
    face stays inside the 224-px image; and their 68 landmarks."""
    generator = torch.Generator().manual_seed(seed)

    def uniform(low, high, *shape):
        return low + (high - low) * torch.rand(*shape, generator=generator)

    sign = torch.where(torch.rand(count, generator=generator) < 0.5, -1.0, 1.0)
    rotation = torch.stack(
        [uniform(-pitch, pitch, count), sign * uniform(*yaw, count), uniform(-roll, roll, count)], -1
    ) * DEGREE
    translation = torch.stack([uniform(-0.2, 0.2, count), uniform(-0.2, 0.2, count), uniform(-3.0, 1.0, count)], -1)
    faces = {
        "identity": torch.randn(count, model.dims.identity, generator=generator),
        "expression": 0.5 * torch.randn(count, model.dims.expression, generator=generator),
        "rotation": rotation,
        "translation": translation,
    }
    faces["landmarks"] = project(model, faces)[:, model.landmark_ids]
    return faces


def project(model, faces: dict[str, torch.Tensor]) -> torch.Tensor:
    vertices = model.pose(model.shape(faces["identity"], faces["expression"]), faces["rotation"], faces["translation"])
    return CAMERA.project(vertices)


def outline_landmarks(model, faces: dict[str, torch.Tensor], along: float = 0.0) -> torch.Tensor:
    """The landmarks with each jaw point (but the chin) moved to the face's outline: among the
    vertices within 3 mm of its height, on its side, between it and the midline and in front of
    it, the one that projects furthest out along the face's horizontal axis. With ``along`` the
    height is taken that fraction of the way towards the next jaw point nearer the chin (a detector
    that spaces the points differently along the outline)."""
    pixels = project(model, faces)
    landmarks = pixels[:, model.landmark_ids].clone()
    mean, ids = model.mean_shape, model.landmark_ids
    rotation = model_module.rotation_matrices(faces["rotation"])
    axis = torch.stack([rotation[:, 0, 0], -rotation[:, 1, 0]], -1)
    faces_index = torch.arange(pixels.shape[0])
    for index in JAW:
        point = mean[ids[index]]
        if along:
            towards = mean[ids[index + 1 if index < 8 else index - 1]]
            point = mean[(mean - (point + along * (towards - point))).norm(dim=-1).argmin()]
        side = 1.0 if point[0] > 0 else -1.0
        nearby = (
            ((mean[:, 1] - point[1]).abs() < 0.03)
            & (side * mean[:, 0] >= 0)
            & (side * mean[:, 0] <= side * point[0] + 1e-6)
            & (mean[:, 2] >= point[2] - 1e-6)
        )
        candidates = torch.nonzero(nearby).flatten()
        outward = (pixels[:, candidates] * axis[:, None] * side).sum(-1)
        landmarks[:, index] = pixels[faces_index, candidates[outward.argmax(1)]]
    return landmarks


def rms(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """RMS of the 2-D distances per face."""
    return (a - b).square().sum(-1).mean(-1).sqrt()


def rotation_error_degrees(fitted: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Angle of the relative rotation per face."""
    relative = model_module.rotation_matrices(fitted).transpose(1, 2) @ model_module.rotation_matrices(true)
    cosine = ((relative.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1)
    return torch.acos(cosine) / DEGREE


def fixed_vertex_fitter(model, **settings):
    """These landmarks come from fixed vertices, so the contour must not slide."""
    return fitting.LandmarkFitter(model, CAMERA, fitting.FitConfig(contour=False, **settings))


def test_jacobian_matches_autograd(model):
    fitter = fixed_vertex_fitter(model)
    faces = random_faces(model, 2, seed=1)
    params = torch.cat([faces["rotation"], faces["translation"], faces["identity"], faces["expression"]], 1)
    rows = fitter.projection.landmark_rows()
    weights = torch.rand(2, 68).sqrt()
    observed = faces["landmarks"] + 3.0
    everything = torch.arange(fitter.num_params)
    _, jacobian = fitter.projection.residuals(params, rows, observed, weights, everything)
    for face in range(2):
        def residual(p, face=face):
            return fitter.projection.residuals(p[None], rows, observed[face : face + 1], weights[face : face + 1], None)[0][0]

        expected = torch.autograd.functional.jacobian(residual, params[face])
        torch.testing.assert_close(jacobian[face], expected, atol=2e-3, rtol=1e-4)
    subset = fitter.layout.columns(["expression", "rotation"])
    _, partial = fitter.projection.residuals(params, rows, observed, weights, subset)
    torch.testing.assert_close(partial, jacobian[..., subset])


@pytest.mark.parametrize("frames, skip", [(7, True), (8, True), (6, False)])
def test_video_normal_equations_are_solved_exactly(frames, skip):
    """The block-pentadiagonal solver with an identity border against a dense Cholesky solve."""
    generator = torch.Generator().manual_seed(frames)
    n, m = 4, 3
    size = frames * n + m
    band = torch.zeros(size, size, dtype=torch.bool)
    for row in range(frames):
        for column in range(frames):
            band[row * n : (row + 1) * n, column * n : (column + 1) * n] = abs(row - column) <= (2 if skip else 1)
    band[-m:], band[:, -m:] = True, True
    factor = torch.randn(size + 5, size, generator=generator, dtype=torch.float64)
    matrix = (factor.T @ factor) * band + 3 * size * torch.eye(size, dtype=torch.float64)
    gradient = torch.randn(size, generator=generator, dtype=torch.float64)

    def block(row, column):
        return matrix[row * n : (row + 1) * n, column * n : (column + 1) * n]

    frame_step, identity_step = banded_solve.bordered_banded_solve(
        torch.stack([block(t, t) for t in range(frames)]),
        torch.stack([block(t, t + 1) for t in range(frames - 1)]),
        torch.stack([block(t, t + 2) for t in range(frames - 2)]),
        gradient[:-m].view(frames, n),
        torch.stack([matrix[t * n : (t + 1) * n, -m:] for t in range(frames)]),
        matrix[-m:, -m:],
        gradient[-m:],
        0.0,
    )
    expected = -torch.cholesky_solve(gradient[:, None], torch.linalg.cholesky(matrix))[:, 0]
    torch.testing.assert_close(torch.cat([frame_step.flatten(), identity_step]), expected)


def test_recovers_clean_faces_in_any_reasonable_pose(model):
    faces = random_faces(model, 6, seed=2)
    result = fixed_vertex_fitter(model).fit(faces["landmarks"])
    assert (result.landmark_error < 1.0).all(), result.landmark_error
    torch.testing.assert_close(result.landmark_error, rms(result.fitted_landmarks, faces["landmarks"]))
    assert (rotation_error_degrees(result.coefficients.rotation, faces["rotation"]) < 4.0).all()
    assert (result.coefficients.translation[:, :2] - faces["translation"][:, :2]).abs().max() < 0.05
    coefficients = result.coefficients
    assert coefficients.frames == 6 and coefficients.dims == model.dims
    for untouched in (coefficients.texture, coefficients.lighting, coefficients.gaze):
        assert not untouched.any()


def test_noisy_landmarks_fit_within_a_pixel_of_the_clean_ones(model):
    faces = random_faces(model, 6, seed=3)
    noise = torch.randn(faces["landmarks"].shape, generator=torch.Generator().manual_seed(4))
    result = fixed_vertex_fitter(model).fit(faces["landmarks"] + noise)
    assert (rms(result.fitted_landmarks, faces["landmarks"]) < 1.0).all()
    assert (rotation_error_degrees(result.coefficients.rotation, faces["rotation"]) < 5.0).all()


def test_a_batch_gives_each_face_its_own_fit(model):
    faces = random_faces(model, 3, seed=5)
    fitter = fitting.LandmarkFitter(model, CAMERA)
    batch = fitter.fit(faces["landmarks"])
    for face in range(3):
        single = fitter.fit(faces["landmarks"][face : face + 1])
        torch.testing.assert_close(batch.fitted_landmarks[face : face + 1], single.fitted_landmarks, atol=2e-2, rtol=0)
        torch.testing.assert_close(
            batch.coefficients[face].to_flat(), single.coefficients.to_flat(), atol=2e-2, rtol=0
        )


def test_expression_alone_with_identity_and_pose_fixed(model):
    """What the audio-driven lip and jaw fit needs: expression from the mouth and jaw landmarks."""
    faces = random_faces(model, 3, seed=6, yaw=(0, 30))
    neutral = coefficients_module.FaceCoefficients.neutral(3, model.dims)
    init = neutral.replace(
        identity=faces["identity"], rotation=faces["rotation"], translation=faces["translation"],
        texture=torch.full((3, model.dims.texture), 0.25),
    )
    weights = torch.zeros(68)
    weights[list(range(17)) + list(range(48, 68))] = 1.0
    result = fixed_vertex_fitter(model).fit(faces["landmarks"], weights=weights, optimize={"expression"}, init=init)
    for group in ("identity", "rotation", "translation", "texture"):
        assert torch.equal(getattr(result.coefficients, group), getattr(init, group))
    mouth_and_jaw = list(range(17)) + list(range(48, 68))
    assert (rms(result.fitted_landmarks[:, mouth_and_jaw], faces["landmarks"][:, mouth_and_jaw]) < 0.5).all()
    assert (result.landmark_error < 0.5).all()


def test_zero_weight_ignores_a_corrupted_landmark(model):
    faces = random_faces(model, 2, seed=7)
    corrupted = faces["landmarks"].clone()
    corrupted[:, 30] += torch.tensor([25.0, -30.0])
    weights = torch.ones(68)
    weights[30] = 0.0
    fitter = fixed_vertex_fitter(model)
    ignored = fitter.fit(corrupted, weights=weights)
    trusted = fitter.fit(corrupted, weights=torch.ones(68))
    assert (rms(ignored.fitted_landmarks, faces["landmarks"]) < 1.0).all()
    assert (rms(trusted.fitted_landmarks, faces["landmarks"]) > 2.0).all()
    # The reported error leaves the ignored landmark out.
    others = [i for i in range(68) if i != 30]
    torch.testing.assert_close(ignored.landmark_error, rms(ignored.fitted_landmarks[:, others], corrupted[:, others]))


def test_contour_reselection_follows_the_outline_of_a_turned_head(model):
    faces = random_faces(model, 6, seed=8, yaw=(45, 60), pitch=15, roll=15)
    landmarks = outline_landmarks(model, faces)
    assert (landmarks - faces["landmarks"]).norm(dim=-1)[:, JAW].mean() > 3.0  # the outline really moved
    sliding = fitting.LandmarkFitter(model, CAMERA).fit(landmarks)
    fixed = fixed_vertex_fitter(model).fit(landmarks)  # same landmark weights, vertices never move

    def errors_of(result):
        return (
            result.landmark_error.mean(),
            rms(result.fitted_landmarks[:, INNER], landmarks[:, INNER]).mean(),
            rotation_error_degrees(result.coefficients.rotation, faces["rotation"]),
        )

    sliding_error, sliding_inner, sliding_rotation = errors_of(sliding)
    fixed_error, fixed_inner, fixed_rotation = errors_of(fixed)
    assert sliding_error < 0.7 * fixed_error
    assert sliding_inner < 0.7 * fixed_inner
    assert sliding_rotation.mean() < 0.5 * fixed_rotation.mean()
    assert (sliding_rotation < 5.0).all()


def test_jaw_landmarks_slide_along_the_outline_to_where_the_detector_put_them(model):
    """A detector spacing the jaw points differently along the outline (each halfway to its
    neighbour nearer the chin) changes no shape: the fit finds the face as if it had not."""
    faces = random_faces(model, 6, seed=12, yaw=(0, 20), pitch=10, roll=10)
    landmarks = outline_landmarks(model, faces, along=0.5)
    assert (landmarks - faces["landmarks"]).norm(dim=-1)[:, JAW].mean() > 4.0  # the points really moved
    fit = fitting.LandmarkFitter(model, CAMERA).fit(landmarks)
    assert (fit.landmark_error < 0.5).all()  # fixed heights on the outline: 1.4–1.8 px
    assert (rms(fit.fitted_landmarks[:, INNER], faces["landmarks"][:, INNER]) < 0.4).all()
    rotation_error = rotation_error_degrees(fit.coefficients.rotation, faces["rotation"])
    assert (rotation_error < 4.5).all() and rotation_error.mean() < 3.0  # fixed heights: 3.8–5.5°


def video_faces(model, frames: int) -> dict[str, torch.Tensor]:
    """One face turning (up to ±35°), nodding and talking smoothly; a second has 48 frames."""
    generator = torch.Generator().manual_seed(9)
    time = torch.linspace(0, (frames - 1) / 47, frames).unsqueeze(1)
    frequency = 2 * torch.rand(1, model.dims.expression, generator=generator)
    phase = torch.rand(1, model.dims.expression, generator=generator)
    wave = 2 * math.pi * time
    faces = {
        "identity": torch.randn(1, model.dims.identity, generator=generator).expand(frames, -1),
        "expression": 0.5 * torch.sin(2 * math.pi * (frequency * time + phase)),
        "rotation": torch.cat([0.2 * torch.sin(wave), 0.6 * torch.sin(0.7 * wave + 0.3), 0.15 * torch.cos(wave)], 1),
        "translation": torch.cat([0.1 * torch.sin(wave), 0.05 * time, -0.5 + 0.3 * time], 1),
    }
    faces["landmarks"] = project(model, faces)[:, model.landmark_ids]
    return faces


def jitter(tracks: torch.Tensor) -> float:
    """RMS acceleration of the landmark tracks, px per frame²."""
    return tracks.diff(n=2, dim=0).norm(dim=-1).square().mean().sqrt().item()


def test_video_shares_identity_and_smooths_jitter(model):
    faces = video_faces(model, 32)
    noisy = faces["landmarks"] + torch.randn(faces["landmarks"].shape, generator=torch.Generator().manual_seed(10))
    fitter = fixed_vertex_fitter(model)
    independent = fitter.fit(noisy)
    video = fitter.fit_video(noisy)
    identity = video.coefficients.identity
    assert torch.equal(identity, identity[:1].expand_as(identity))
    assert jitter(video.fitted_landmarks) < 0.6 * jitter(independent.fitted_landmarks)
    assert rms(video.fitted_landmarks, faces["landmarks"]).mean() < rms(independent.fitted_landmarks, faces["landmarks"]).mean()
    assert (rotation_error_degrees(video.coefficients.rotation, faces["rotation"]) < 4.0).all()


def test_long_video_is_solved_in_windows_that_join_smoothly(model):
    faces = video_faces(model, 32)
    noisy = faces["landmarks"] + torch.randn(faces["landmarks"].shape, generator=torch.Generator().manual_seed(11))
    whole = fixed_vertex_fitter(model).fit_video(noisy)
    windows = fixed_vertex_fitter(model, chunk_frames=16, chunk_overlap=4, identity_frames=12).fit_video(noisy)
    identity = windows.coefficients.identity
    assert torch.equal(identity, identity[:1].expand_as(identity))
    assert abs(jitter(windows.fitted_landmarks) - jitter(whole.fitted_landmarks)) < 0.15
    assert (rms(windows.fitted_landmarks, faces["landmarks"]) < 1.0).all()


def test_bad_input_is_rejected_with_a_clear_error(model):
    fitter = fitting.LandmarkFitter(model, CAMERA)
    landmarks = random_faces(model, 2, seed=12)["landmarks"]
    cases = [
        (lambda: fitter.fit(landmarks[:, :60]), "68"),
        (lambda: fitter.fit(landmarks.clone().index_fill_(1, torch.tensor([3]), float("nan"))), "NaN"),
        (lambda: fitter.fit(landmarks, weights=torch.ones(5)), "weights"),
        (lambda: fitter.fit(landmarks, weights=torch.zeros(68)), "at least 4"),
        (lambda: fitter.fit(landmarks, optimize={"expression"}), "init"),
        (lambda: fitter.fit(landmarks, optimize={"shape"}), "cannot optimise"),
        (lambda: fitter.fit(landmarks, init=coefficients_module.FaceCoefficients.neutral(3, model.dims)), "frames"),
    ]
    cases.append((lambda: fitting.FitConfig(chunk_frames=0), "chunk_frames"))
    for call, message in cases:
        with pytest.raises(errors.TalkingFaceError, match=message):
            call()
