"""Synthetic training data, the TGDM trainer (steps, EMA, resume) and the evaluation metrics."""
import pytest
import torch
from packloader import pack_import

synthetic = pack_import("pipelines.training.synthetic_faces")
training = pack_import("pipelines.training.tgdm")
evaluation = pack_import("pipelines.training.tgdm_evaluation")
config_module = pack_import("pipelines.generator.config")
checkpoint = pack_import("pipelines.generator.checkpoint")
demo_model = pack_import("pipelines.morphable.demo_model")
errors = pack_import("pipelines.errors")

SETTINGS = synthetic.SyntheticFaceSettings(image_size=32, views_per_identity=3)


FACE_MODEL = demo_model.demo_face_model(12)


@pytest.fixture(scope="module")
def views():
    return synthetic.render_synthetic_views(FACE_MODEL, 3, SETTINGS, seed=5)


def test_synthetic_views_hold_detail_the_render_lacks(views):
    assert views.photos.shape == views.renders.shape == views.surfaces.shape == (9, 32, 32, 3)
    assert views.coefficients.shape == (9, config_module.DEFAULT_COEFFICIENT_DIM)
    assert views.identities.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    face = views.surfaces.amax(-1) > 0
    assert 0.1 < face.float().mean() < 0.9
    assert (views.renders[~face] == 0).all(), "I_3d is black off the face"
    assert views.photos[~face].mean() > 0.05, "the photos have a background"
    assert (views.photos - views.renders)[face].abs().mean() > 0.03, "the photos carry a pattern the render lacks"
    lower_half = torch.arange(32).view(32, 1).expand(32, 32) >= 16  # hair past the silhouette grows on the upper head
    off_face = ~face[0] & ~face[1] & lower_half
    unchanged = (views.photos[0] - views.photos[1]).abs().amax(-1)[off_face] < 1e-6
    assert unchanged.all(), "one person's wall stays put between views"
    again = synthetic.render_synthetic_views(demo_model.demo_face_model(12), 3, SETTINGS, seed=5)
    assert torch.equal(again.photos, views.photos)


def test_pairs_are_two_views_of_one_identity(views):
    sources, targets = views.pairs(64, torch.Generator().manual_seed(0))
    assert torch.equal(views.identities[sources], views.identities[targets])
    assert (sources != targets).all()


def test_metrics_rank_images_sensibly():
    generator = torch.Generator().manual_seed(0)
    truth = torch.rand(2, 24, 24, 3, generator=generator)
    close = (truth + 0.02 * torch.randn(truth.shape, generator=generator)).clamp(0, 1)
    far = torch.rand(truth.shape, generator=generator)
    assert torch.allclose(evaluation.ssim(truth, truth), torch.ones(2), atol=1e-5)
    assert (evaluation.psnr(close, truth) > evaluation.psnr(far, truth) + 10).all()
    assert (evaluation.ssim(close, truth) > evaluation.ssim(far, truth) + 0.5).all()
    assert torch.allclose(evaluation.psnr(torch.zeros(1, 4, 4, 3), torch.full((1, 4, 4, 3), 0.1)), torch.tensor([20.0]))


def test_trainer_learns_saves_and_resumes(views, tmp_path):
    config = config_module.TGDMConfig(image_size=32, base_channels=8, channel_multipliers=(1, 2),
                                      attention_resolutions=(16,), attention_head_channels=8, source_base_channels=8,
                                      norm_groups=4, surface_frequencies=2)
    settings = training.TrainingSettings(steps=3, batch_size=2, learning_rate=1e-3, checkpoint_every=100)
    trainer = training.TGDMTrainer(config, settings, tmp_path, face_model=FACE_MODEL)
    before = {k: v.clone() for k, v in trainer.denoiser.state_dict().items()}
    path = trainer.train(views, log=lambda line: None)
    assert trainer.step == 3 and path.name == training.EMA_FILE
    changed = [k for k, v in trainer.denoiser.state_dict().items() if not torch.equal(v, before[k])]
    assert len(changed) > len(before) // 2
    ema = checkpoint.load_tgdm(path)
    assert ema.config == config
    raw = trainer.denoiser.state_dict()
    assert any(not torch.equal(ema.state_dict()[k], raw[k]) for k in changed), "the EMA lags the raw weights"

    resumed = training.TGDMTrainer(config, training.TrainingSettings(steps=4, batch_size=2, checkpoint_every=100), tmp_path, face_model=FACE_MODEL)
    assert resumed.step == 3
    for name, value in resumed.denoiser.state_dict().items():
        assert torch.equal(value, raw[name]), f"{name} was not restored"
    assert resumed.ema.updates == 3
    resumed.train(views, log=lambda line: None)
    assert resumed.step == 4


TINY = dict(image_size=32, base_channels=8, channel_multipliers=(1, 2), attention_resolutions=(16,),
            attention_head_channels=8, source_base_channels=8, norm_groups=4, surface_frequencies=2)


def test_resuming_continues_exactly_from_a_pickle_free_state(views, tmp_path):
    config = config_module.TGDMConfig(**TINY)

    def settings(steps):
        return training.TrainingSettings(steps=steps, batch_size=2, learning_rate=1e-3, ema_decay=0.9, checkpoint_every=100)

    straight = training.TGDMTrainer(config, settings(4), tmp_path / "straight", face_model=FACE_MODEL)
    straight.train(views, log=lambda line: None)
    training.TGDMTrainer(config, settings(2), tmp_path / "split", face_model=FACE_MODEL).train(views, log=lambda line: None)
    state = tmp_path / "split" / training.STATE_FOLDER
    assert {path.suffix for path in state.iterdir()} == {".safetensors", ".json"}, "nothing pickled"
    assert not (tmp_path / "split" / (training.STATE_FOLDER + ".partial")).exists()
    resumed = training.TGDMTrainer(config, settings(4), tmp_path / "split", face_model=FACE_MODEL)
    assert resumed.step == 2 and resumed.ema.updates == 2
    resumed.train(views, log=lambda line: None)
    for name, value in straight.denoiser.state_dict().items():
        assert torch.equal(resumed.denoiser.state_dict()[name], value), f"raw weight {name} differs"
        assert torch.equal(resumed.ema.shadow[name], straight.ema.shadow[name]), f"EMA weight {name} differs"
    assert torch.equal(resumed.generator.get_state(), straight.generator.get_state())

    with pytest.raises(errors.TalkingFaceError, match="different model config"):
        training.TGDMTrainer(config_module.TGDMConfig(**{**TINY, "base_channels": 16}), settings(5), tmp_path / "split", face_model=FACE_MODEL)
    old = tmp_path / "old" / training.STATE_FOLDER
    old.mkdir(parents=True)
    (old / "custom_checkpoint_0.pkl").write_bytes(b"")
    with pytest.raises(errors.TalkingFaceError, match="no trainer_state.json .*pickled state from an older version"):
        training.TGDMTrainer(config, settings(5), tmp_path / "old", face_model=FACE_MODEL)


def test_evaluation_compares_with_the_trivial_baselines(views):
    torch.manual_seed(0)
    config = config_module.TGDMConfig(image_size=32, base_channels=8, channel_multipliers=(1, 2),
                                      attention_resolutions=(16,), attention_head_channels=8, source_base_channels=8,
                                      norm_groups=4, surface_frequencies=2)
    model = pack_import("pipelines.generator.tgdm").TGDMDenoiser(config).eval()
    sampler_settings = pack_import("pipelines.generator.sampler").SamplerSettings(steps=2, batch_size=9, chunk_size=9)
    results = evaluation.evaluate_generator(model, views, sampler_settings, face_model=FACE_MODEL)
    names = ("tgdm", "tgdm_composited", "render", "source", "warp_relit", "warp_plain")
    expected = {f"{metric}_{name}{region}" for metric in ("psnr", "ssim") for name in names for region in ("", "_face")}
    assert set(results) == expected | {f"psnr_{name}_unseen" for name in names}
    assert results["psnr_warp_relit_face"] > results["psnr_source_face"] + 3, "the warp carries the face's texture"
    assert results["psnr_warp_relit_face"] > results["psnr_warp_plain_face"], "relighting helps"
    with pytest.raises(errors.TalkingFaceError, match="warped sources"):
        evaluation.evaluate_generator(model, views, sampler_settings)


def test_region_metrics_count_only_the_region():
    generator = torch.Generator().manual_seed(1)
    truth = torch.rand(1, 24, 24, 3, generator=generator)
    broken = truth.clone()
    broken[:, :12] = 1 - broken[:, :12]
    top = torch.zeros(1, 24, 24, dtype=torch.bool)
    top[:, :12] = True
    assert evaluation.psnr(broken, truth, ~top).item() == pytest.approx(100.0)
    assert evaluation.psnr(broken, truth, top) < evaluation.psnr(broken, truth)
    assert evaluation.ssim(broken, truth, ~top).item() > evaluation.ssim(broken, truth).item() > evaluation.ssim(broken, truth, top).item()
