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


def test_swap_evaluation_scores_the_swap_and_the_baselines(views):
    torch.manual_seed(0)
    model = pack_import("pipelines.generator.tgdm").TGDMDenoiser(
        config_module.TGDMConfig(**TINY, identity_dim=synthetic.DESCRIPTOR_DIM)).eval()
    results = swap_evaluation.evaluate_swap(model, views, FACE_MODEL, sampling.SamplerSettings(steps=2, batch_size=12, chunk_size=12))
    names = ("swap", "target", "warped_source", "render")
    assert set(results) == {f"{metric}_{name}" for metric in ("identity_top1", "texture_cosine") for name in names} | {
        f"{metric}_{name}_face" for metric in ("psnr", "ssim") for name in names}
    # The warp carries the source person's skin: closer to the truth and retrieved as the source person.
    assert results["psnr_warped_source_face"] > results["psnr_target_face"] + 2
    assert results["identity_top1_warped_source"] > results["identity_top1_target"]
    assert results["identity_top1_render"] == 1.0, "the render's albedo is the source person's texture"
    assert results["identity_top1_target"] < 0.5, "the unchanged target shows another person"
