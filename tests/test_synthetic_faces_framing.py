"""The synthetic TGDM training views frame faces the way the face pipeline's crops do, and a 3DMM fit of a
synthetic photo through the pipeline gives coefficients inside the range the generator was trained on."""
import pytest
import torch
from packloader import pack_import

synthetic = pack_import("pipelines.training.synthetic_faces")
alignment = pack_import("pipelines.face.alignment")
faces_module = pack_import("pipelines.face.faces")
fit_module = pack_import("pipelines.face.fit")
fitting = pack_import("pipelines.morphable.fitting")
coefficients = pack_import("pipelines.morphable.coefficients")
demo_model = pack_import("pipelines.morphable.demo_model")
camera_module = pack_import("pipelines.render.camera")
renderer_module = pack_import("pipelines.render.renderer")

SIZE = 64
MODEL = demo_model.demo_face_model(16)


def five_points(coeffs, size: int) -> torch.Tensor:
    camera = camera_module.PerspectiveCamera.deep3d(size)
    landmarks = camera.project(MODEL.posed_vertices(coeffs)[:, MODEL.landmark_ids])
    return faces_module.keypoints_from_landmarks68(landmarks)


def as_coefficients(flat: torch.Tensor):
    return coefficients.FaceCoefficients.from_flat(flat[:, :-2], flat[:, -2:], MODEL.dims)


@pytest.fixture(scope="module")
def training_views():
    return synthetic.render_synthetic_views(MODEL, 12, synthetic.SyntheticFaceSettings(image_size=SIZE), seed=3)


def test_alignment_puts_the_keypoints_on_the_pipeline_template():
    settings = synthetic.SyntheticFaceSettings(image_size=SIZE, translation_jitter=(0.0, 0.0, 0.0), roll_jitter=0.0)
    generator = torch.Generator().manual_seed(0)
    coeffs = synthetic.random_view_coefficients(
        MODEL, torch.randn(MODEL.dims.identity, generator=generator), torch.randn(MODEL.dims.texture, generator=generator),
        8, settings, generator)
    # The crop the face pipeline would cut from such a view is the view itself: the similarity is the identity.
    transforms = alignment.similarity_transforms(five_points(coeffs, SIZE), alignment.crop_template(SIZE))
    assert torch.allclose(transforms[:, :, :2], torch.eye(2).expand(8, 2, 2), atol=1e-3)
    assert transforms[:, :, 2].abs().max() < 0.05
    # ...reached by moving the head, not by leaving it where it was.
    assert coeffs.translation.abs().amax() > 0.05 and coeffs.rotation[:, 2].abs().amax() > 0.005


def test_training_views_and_pipeline_crops_frame_faces_alike(training_views):
    """A demo face anywhere in a larger photo, cropped by the pipeline from its 68 landmarks, shows its eyes
    and mouth where the training views show them (within the framing jitter the training adds)."""
    views = five_points(as_coefficients(training_views.coefficients), SIZE)
    eyes, mouths = views[:, :2].mean(1), views[:, 3:].mean(1)
    generator = torch.Generator().manual_seed(1)
    photo = coefficients.FaceCoefficients.neutral(4, MODEL.dims)
    photo.identity[:] = torch.randn(4, MODEL.dims.identity, generator=generator)
    photo.rotation[:] = torch.tensor([[0.0, 0.0, 0.0], [0.1, 0.3, 0.05], [-0.1, -0.25, -0.08], [0.05, 0.1, 0.1]])
    photo.translation[:] = torch.tensor([[0.0, 0.0, -7.0], [0.6, -0.4, -5.0], [-0.5, 0.3, -8.0], [0.2, 0.5, -3.0]])
    maps = renderer_module.FaceRenderer(MODEL, camera_module.PerspectiveCamera.deep3d(256)).render(photo)
    faces = faces_module.faces_from_landmarks(maps.image, maps.landmarks, crop_size=SIZE)
    crops = faces_module.keypoints_from_landmarks68(alignment.apply_transforms(faces.crop_transforms, maps.landmarks))
    crop_eyes, crop_mouths = crops[:, :2].mean(1), crops[:, 3:].mean(1)
    assert (crop_eyes.mean(0) - eyes.mean(0)).norm() < 1.0, "eye centre in px of the 64-px crop"
    assert (crop_mouths.mean(0) - mouths.mean(0)).norm() < 1.0, "mouth centre"
    size, crop_size = (mouths - eyes).norm(dim=1), (crop_mouths - crop_eyes).norm(dim=1)
    assert abs(crop_size.mean() / size.mean() - 1) < 0.05, "face size: eye-to-mouth distance"
    # Every pipeline crop lies inside the spread of the training views.
    for crop, train in ((crop_eyes, eyes), (crop_mouths, mouths)):
        assert ((crop >= train.amin(0) - 0.5) & (crop <= train.amax(0) + 0.5)).all()


def test_fitted_coefficients_of_a_synthetic_photo_lie_in_the_training_range(training_views):
    """The chain's Fit 3DMM (landmarks, then texture and lighting from the crop) on synthetic photos: every
    coefficient group stays within the training distribution the generator's coefficient input saw."""
    settings = synthetic.SyntheticFaceSettings(image_size=224)
    generator = torch.Generator().manual_seed(2)
    person = synthetic.random_identity(MODEL, synthetic.SyntheticFaceSettings(image_size=224), generator)
    coeffs = synthetic.random_view_coefficients(MODEL, person.identity, person.texture, 2, settings, generator)
    # A photo as a camera frames it: the head farther away and off centre, not in the crop's framing.
    coeffs.translation[:] = coeffs.translation + torch.tensor([0.4, -0.3, -4.0])
    renderer = renderer_module.FaceRenderer(MODEL, camera_module.PerspectiveCamera.deep3d(224))
    photos, maps = synthetic.photograph(renderer, coeffs, [person, person], settings.pattern_strength)
    faces = faces_module.faces_from_landmarks(photos, maps.landmarks, crop_size=SIZE)
    fitted = fit_module.fit_faces(MODEL, faces, fitting.FitConfig(temporal_smoothing=2.0, expression_prior=1.0),
                                  appearance=True, gaze=True).coefficients
    train = as_coefficients(training_views.coefficients)
    for name in ("identity", "expression", "texture", "rotation", "lighting", "translation", "gaze"):
        values, reference = getattr(fitted, name), getattr(train, name)
        mean, spread = reference.mean(0), reference.std(0).clamp_min(1e-6)
        z = ((values - mean) / spread).abs().mean()
        assert z < 2.0, f"{name}: fitted values lie {z:.1f} training standard deviations from the mean on average"
        size, largest = values.pow(2).mean(1).sqrt().max(), reference.pow(2).mean(1).sqrt().max()
        assert size <= 1.25 * largest, f"{name}: fitted RMS {size:.2f}, the largest in training {largest:.2f}"
