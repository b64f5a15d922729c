"""Face-swap training as same-identity reconstruction with the identity token, and the swap evaluation
on held-out synthetic people (truth: the source person with the target's motion and light)."""
import pytest
import torch
from packloader import pack_import

synthetic = pack_import("pipelines.training.synthetic_faces")
training = pack_import("pipelines.training.tgdm")
swap_evaluation = pack_import("pipelines.training.swap_evaluation")
config_module = pack_import("pipelines.generator.config")
checkpoint = pack_import("pipelines.generator.checkpoint")
sampling = pack_import("pipelines.generator.sampler")
demo_model = pack_import("pipelines.morphable.demo_model")
landmarks = pack_import("pipelines.training.synthetic_landmarks")
tgdm = pack_import("pipelines.generator.tgdm")
errors = pack_import("pipelines.errors")

SETTINGS = synthetic.SyntheticFaceSettings(image_size=32, views_per_identity=3)
FACE_MODEL = demo_model.demo_face_model(12)
TINY = dict(image_size=32, base_channels=8, channel_multipliers=(1, 2), attention_resolutions=(16,),
            attention_head_channels=8, source_base_channels=8, norm_groups=4, surface_frequencies=2)


@pytest.fixture(scope="module")
def views():
    return synthetic.render_synthetic_views(FACE_MODEL, 4, SETTINGS, seed=5)


def test_synthetic_descriptors_name_the_person_not_the_view(views):
    descriptors = views.descriptors
    assert descriptors.shape == (12, synthetic.DESCRIPTOR_DIM)
    assert torch.allclose(descriptors.norm(dim=1), torch.ones(12), atol=1e-5)
    same = descriptors @ descriptors.T
    owner = views.identities
    assert torch.allclose(same[owner[:, None] == owner[None, :]], torch.tensor(1.0), atol=1e-5)
    assert same[owner[:, None] != owner[None, :]].abs().max() < 0.5
    assert len(views.people) == 4


def test_training_batches_carry_the_source_views_descriptor(views):
    generator = torch.Generator().manual_seed(0)
    settings = training.TrainingSettings(batch_size=6)
    batch = training.pair_batch(views, 6, generator, settings, torch.device("cpu"), identity=True)
    generator = torch.Generator().manual_seed(0)
    sources, _ = views.pairs(6, generator)
    assert torch.equal(batch["identity"], views.descriptors[sources])
    assert "identity" not in training.pair_batch(views, 6, generator, settings, torch.device("cpu"))


def test_a_generator_with_an_identity_token_trains_and_uses_it(views, tmp_path):
    config = config_module.TGDMConfig(**TINY, identity_dim=synthetic.DESCRIPTOR_DIM)
    settings = training.TrainingSettings(steps=3, batch_size=2, learning_rate=1e-3, checkpoint_every=100)
    trainer = training.TGDMTrainer(config, settings, tmp_path, face_model=FACE_MODEL)
    token = trainer.denoiser.middle_attention.identity_token.weight.detach().clone()
    path = trainer.train(views, log=lambda line: None)
    assert not torch.equal(token, trainer.denoiser.middle_attention.identity_token.weight), "the token layer learns"
    assert checkpoint.load_tgdm(path).config.identity_dim == synthetic.DESCRIPTOR_DIM
    narrow = config_module.TGDMConfig(**TINY, identity_dim=16)
    with pytest.raises(errors.TalkingFaceError, match="identity token"):
        training.TGDMTrainer(narrow, settings, tmp_path / "narrow", face_model=FACE_MODEL).train(views, log=lambda line: None)


def test_swap_pairs_take_the_source_from_another_person(views):
    sources, targets = swap_evaluation.swap_pairs(views)
    assert (views.identities[sources] != views.identities[targets]).all()
    assert sorted(targets.tolist()) == list(range(len(views)))


def test_a_swap_generator_starts_from_a_reenactment_base_with_a_silent_token():
    torch.manual_seed(0)
    base = tgdm.TGDMDenoiser(config_module.TGDMConfig(**TINY))
    swap = tgdm.TGDMDenoiser(config_module.TGDMConfig(**TINY, identity_dim=synthetic.DESCRIPTOR_DIM))
    training.start_from_base(swap, base)
    swap_weights = swap.state_dict()
    for name, value in base.state_dict().items():
        assert torch.equal(swap_weights[name], value), name
    tokens = [name for name in swap_weights if ".identity_token." in name]
    assert tokens and all(not swap_weights[name].any() for name in tokens)

    wider = tgdm.TGDMDenoiser(config_module.TGDMConfig(**{**TINY, "base_channels": 16}))
    with pytest.raises(errors.TalkingFaceError, match="base_channels"):
        training.start_from_base(wider, base)
    narrow_base = tgdm.TGDMDenoiser(config_module.TGDMConfig(**TINY, identity_dim=16))
    with pytest.raises(errors.TalkingFaceError, match="16 values"):
        training.start_from_base(swap, narrow_base)


def test_the_synthetic_landmark_detector_trains_saves_and_loads(tmp_path):
    detector = landmarks.train_landmark_detector(FACE_MODEL, identities=2, steps=3, batch_size=4, image_size=32)
    path = tmp_path / "detector.safetensors"
    landmarks.save_landmark_detector(detector, path)
    loaded = landmarks.load_landmark_detector(path)
    images = torch.rand(2, 32, 32, 3)
    assert loaded(images).shape == (2, 68, 2)
    assert torch.equal(loaded(images), detector(images))
    with pytest.raises(errors.ModelFileError, match="not a synthetic landmark detector"):
        landmarks.load_landmark_detector(_tiny_tgdm_file(tmp_path))


def _tiny_tgdm_file(folder):
    path = folder / "tgdm.safetensors"
    checkpoint.save_tgdm(tgdm.TGDMDenoiser(config_module.TGDMConfig(**TINY)), path)
    return path


class TrueLandmarks(torch.nn.Module):
    """A perfect detector for the test: returns the landmarks of the given coefficients."""

    def __init__(self, coefficients, size):
        super().__init__()
        camera = pack_import("pipelines.morphable.camera").PerspectiveCamera.deep3d(size)
        self.points = camera.project(FACE_MODEL.posed_vertices(coefficients)[:, FACE_MODEL.landmark_ids])

    def forward(self, images):
        return self.points[: len(images)]


def test_motion_error_is_near_zero_for_the_truth_and_grows_for_other_motion(views):
    rows = pack_import("pipelines.generator.inputs").generator_rows_to_coefficients(views.coefficients, FACE_MODEL.dims)
    exact = landmarks.motion_error(TrueLandmarks(rows, 32), FACE_MODEL, views.photos, rows)
    assert float(exact.landmark_nme.max()) < 1e-4
    assert float(exact.rotation_degrees.mean()) < 1.5, "the fit's own floor (expression priors trade against pose)"
    other = rows[torch.roll(torch.arange(len(views)), 1)]
    wrong = landmarks.motion_error(TrueLandmarks(other, 32), FACE_MODEL, views.photos, rows)
    assert float(wrong.landmark_nme.mean()) > 0.05
    assert float(wrong.rotation_degrees.mean()) > 3 * float(exact.rotation_degrees.mean())
    assert float(wrong.expression.mean()) > float(exact.expression.mean())


def test_swap_evaluation_scores_the_swap_and_the_baselines(views):
    torch.manual_seed(0)
    model = tgdm.TGDMDenoiser(config_module.TGDMConfig(**TINY, identity_dim=synthetic.DESCRIPTOR_DIM)).eval()
    detector = landmarks.train_landmark_detector(FACE_MODEL, identities=2, steps=2, batch_size=4, image_size=32)
    results = swap_evaluation.evaluate_swap(
        model, views, FACE_MODEL, sampling.SamplerSettings(steps=2, batch_size=12, chunk_size=12), detector=detector)
    names = ("swap", "target", "warped_source", "render")
    motion = ("landmark_nme", "rotation_error_deg", "expression_error")
    assert set(results) == {f"{metric}_{name}" for metric in ("identity_top1", "albedo_top1", "texture_cosine")
                            for name in names} | {f"{metric}_{name}_face" for metric in ("psnr", "ssim") for name in names} | {
        f"{metric}_{name}" for metric in motion for name in (*names, "truth", "reenact")}
    # The warp carries the source person's skin: closer to the truth and retrieved as the source person.
    assert results["psnr_warped_source_face"] > results["psnr_target_face"] + 2
    assert results["identity_top1_warped_source"] > results["identity_top1_target"]
    assert results["albedo_top1_render"] == 1.0, "the render's albedo is the source person's texture"
    assert results["identity_top1_target"] < 0.5, "the unchanged target shows another person"
