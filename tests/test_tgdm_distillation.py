"""Few-step distillation: a tiny teacher → a few distillation steps → a student checkpoint with its
record → the distilled scheduler in 1 to 4 steps; the teacher paths it learns are the sampler's; the
scheduler/checkpoint mismatches; exact resume."""
import dataclasses

import pytest
import torch
from packloader import pack_import

synthetic = pack_import("pipelines.training.synthetic_faces")
training = pack_import("pipelines.training.tgdm")
distill = pack_import("pipelines.training.distill")
config_module = pack_import("pipelines.generator.config")
checkpoint = pack_import("pipelines.generator.checkpoint")
distilled = pack_import("pipelines.generator.distilled")
sampling = pack_import("pipelines.generator.sampler")
tgdm = pack_import("pipelines.generator.tgdm")
demo_model = pack_import("pipelines.morphable.demo_model")
pair_warp = pack_import("pipelines.training.pair_warp")
errors = pack_import("pipelines.errors")

SIZE = 32
FACE_MODEL = demo_model.demo_face_model(12)
TINY = dict(image_size=SIZE, base_channels=8, channel_multipliers=(1, 2), attention_resolutions=(16,),
            attention_head_channels=8, source_base_channels=8, norm_groups=4, surface_frequencies=2,
            prediction_type="sample")


@pytest.fixture(scope="module")
def views():
    return synthetic.render_synthetic_views(FACE_MODEL, 3, synthetic.SyntheticFaceSettings(image_size=SIZE, views_per_identity=3), seed=5)


@pytest.fixture(scope="module")
def teacher():
    """A teacher whose corrections of the warped source are not zero, saved and loaded as a real file."""
    torch.manual_seed(0)
    model = tgdm.TGDMDenoiser(config_module.TGDMConfig(**TINY))
    torch.nn.init.normal_(model.output.weight, std=0.05)
    return model.eval()


def settings(steps, **changes):
    return training.TrainingSettings(**{"steps": steps, "batch_size": 2, "learning_rate": 1e-3, "ema_decay": 0.9,
                                        "checkpoint_every": 100, **changes})


def inputs_for(views, frames=5):
    sources, targets = torch.arange(frames) % 3, (torch.arange(frames) + 1) % 3 + 3
    warped, valid = pair_warp.PairWarper(FACE_MODEL, SIZE)(views.photos[sources], views.coefficients[sources], views.coefficients[targets])
    return sampling.GeneratorInputs(
        source=views.photos[sources], renders=views.renders[targets], coefficients=views.coefficients[targets],
        target_surfaces=views.surfaces[targets], source_surface=views.surfaces[sources],
        warped_sources=warped, warp_masks=valid,
    )


def test_student_timesteps_are_diffusers_trailing_ones():
    assert distilled.trailing_timesteps(4, 1000) == [999, 749, 499, 249]
    assert distilled.trailing_timesteps(3, 1000) == [999, 666, 332]
    assert distilled.student_timesteps(4, 1000) == [999, 749, 666, 499, 332, 249]
    scheduler = sampling.make_scheduler(distilled.DISTILLED_SCHEDULER, config_module.TGDMConfig(**TINY))
    for steps in (1, 2, 3, 4):
        scheduler.set_timesteps(steps)
        assert scheduler.timesteps.tolist() == distilled.trailing_timesteps(steps, 1000)


def test_teacher_paths_end_where_the_guided_sampler_ends(views, teacher):
    """The student learns exactly what TGDM Sampler's guided DDIM gives for the same noise."""
    inputs = inputs_for(views, 3)
    guidance = distill.DistillationSettings(student_steps=4, texture_guidance=2.0, geometry_guidance=1.5, teacher_steps=12)
    sampler = sampling.TGDMSampler(teacher, sampling.SamplerSettings(
        steps=12, texture_guidance=2.0, geometry_guidance=1.5, batch_size=3, chunk_size=3, same_noise=False))
    expected = sampler.sample(inputs)
    noise = sampling.frame_noise(0, range(3), (3, SIZE, SIZE), same_noise=False)
    batch = {
        "source": sampling.to_model_images(inputs.source, "cpu", torch.float32),
        "source_surface": sampling.to_channels_first(inputs.source_surface, "cpu", torch.float32),
        "render": sampling.to_model_images(inputs.renders, "cpu", torch.float32),
        "coefficients": inputs.coefficients,
        "target_surface": sampling.to_channels_first(inputs.target_surfaces, "cpu", torch.float32),
        "warped_source": sampling.warp_condition(inputs.warped_sources, inputs.warp_masks, "cpu", torch.float32),
    }
    points, end = distill.TeacherPaths(teacher, guidance)(batch, noise)
    assert points.shape == (6, 3, 3, SIZE, SIZE)
    assert torch.equal(points[0], noise), "the path starts at the noise (t = 999)"
    assert not torch.allclose(points[1], points[0]) and not torch.allclose(points[-1], end)
    assert torch.allclose(((end + 1) / 2).permute(0, 2, 3, 1), expected, atol=1e-5)


def test_distilled_student_saves_its_record_and_samples_in_one_to_four_steps(views, teacher, tmp_path):
    guidance = distill.DistillationSettings(student_steps=4, texture_guidance=2.0, geometry_guidance=1.5, teacher_steps=12)
    trainer = distill.DistillationTrainer(teacher, settings(3), guidance, tmp_path, face_model=FACE_MODEL, teacher_name="tiny.safetensors")
    path = trainer.train(views, log=lambda line: None)
    assert path.name == distill.STUDENT_FILE and trainer.step == 3
    metadata = checkpoint.read_tgdm_metadata(path)
    assert metadata["distillation_step"] == "3" and "training_step" not in metadata
    student = checkpoint.load_tgdm(path)
    assert student.config == teacher.config, "same architecture and config as the teacher"
    assert student.distillation == distilled.Distillation(4, 2.0, 1.5, 12, "tiny.safetensors")
    assert teacher.distillation is None
    changed = [name for name, value in student.state_dict().items() if not torch.equal(value, teacher.state_dict()[name])]
    assert len(changed) > len(teacher.state_dict()) // 2, "the student moved away from the teacher's weights"
    assert all(not parameter.requires_grad for parameter in trainer.paths.teacher.parameters())

    inputs = inputs_for(views, 5)
    outputs = {}
    for steps in (1, 2, 3, 4):
        sampler = sampling.TGDMSampler(student, sampling.SamplerSettings(
            scheduler=distilled.DISTILLED_SCHEDULER, steps=steps, batch_size=2, chunk_size=5, same_noise=False))
        outputs[steps] = sampler.sample(inputs)
        assert outputs[steps].shape == (5, SIZE, SIZE, 3) and 0 <= outputs[steps].min() and outputs[steps].max() <= 1
        assert sampler.denoiser_calls == 3 * steps, "one unguided pass per batch and step (3 batches of 2, 2, 1)"
    assert not torch.allclose(outputs[1], outputs[4]), "more steps refine the jump"


def test_distillation_brings_the_student_to_the_teacher_paths(views, teacher, tmp_path):
    """The loss is the student's distance to the guided teacher's path ends: on a fixed batch of pairs
    and noise it falls with training."""
    guidance = distill.DistillationSettings(student_steps=2, texture_guidance=3.0, geometry_guidance=1.0, teacher_steps=4)
    trainer = distill.DistillationTrainer(teacher, settings(40, learning_rate=3e-3, batch_size=4), guidance, tmp_path,
                                          face_model=FACE_MODEL)
    fixed = training.pair_batch(views, 8, torch.Generator().manual_seed(1), trainer.settings, torch.device("cpu"),
                                warper=trainer.warper)
    noise = torch.randn(fixed["target"].shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = trainer.loss(fixed, noise).item()
    jumps_before = distill.jump_psnr(teacher, trainer.paths, fixed, noise)
    for _ in range(40):
        trainer.training_step(views)
    with torch.no_grad():
        after = trainer.loss(fixed, noise).item()
    assert after < 0.8 * before, (before, after)
    student = trainer.ema.copy_to(tgdm.TGDMDenoiser(teacher.config)).eval()
    jumps_after = distill.jump_psnr(student, trainer.paths, fixed, noise)
    assert list(jumps_after) == [999, 499], "the timesteps of 1- and 2-step runs"
    assert sum(jumps_after.values()) > sum(jumps_before.values()) + 1.0, (jumps_before, jumps_after)


def test_schedulers_and_checkpoints_that_do_not_fit_are_refused(views, teacher, tmp_path):
    distilled_settings = sampling.SamplerSettings(scheduler=distilled.DISTILLED_SCHEDULER, steps=4)
    with pytest.raises(errors.TalkingFaceError, match="runs few-step students .*scripts.distill_tgdm.*pick ddim"):
        sampling.TGDMSampler(teacher, distilled_settings)
    student = tgdm.TGDMDenoiser(teacher.config)
    student.distillation = distilled.Distillation(4, 1.5, 1.5, 12)
    path = tmp_path / "student.safetensors"
    checkpoint.save_tgdm(student, path)
    student = checkpoint.load_tgdm(path)
    with pytest.raises(errors.TalkingFaceError, match="1-4 step student .*pick the 'distilled' sampler"):
        sampling.TGDMSampler(student, sampling.SamplerSettings(scheduler="ddim", steps=25))
    with pytest.raises(errors.TalkingFaceError, match="steps to at most 4"):
        sampling.TGDMSampler(student, dataclasses.replace(distilled_settings, steps=8))
    with pytest.raises(errors.TalkingFaceError, match="guidance texture 1.5, geometry 1.5 built in: set texture_guidance"):
        sampling.TGDMSampler(student, dataclasses.replace(distilled_settings, texture_guidance=2.0))
    sampling.TGDMSampler(student, distilled_settings)  # fits
    with pytest.raises(errors.TalkingFaceError, match="already a 1-4 step student"):
        distill.DistillationTrainer(student, settings(1), distill.DistillationSettings(), tmp_path / "again", face_model=FACE_MODEL)
    with pytest.raises(errors.TalkingFaceError, match="multiple of"):
        distill.DistillationSettings(student_steps=4, teacher_steps=10).record()
    broken = tmp_path / "broken.safetensors"
    checkpoint.save_tgdm(teacher, broken, {"distillation": '{"student_steps": 4}'})
    with pytest.raises(errors.ModelFileError, match="broken.safetensors has an unusable 'distillation' record"):
        checkpoint.load_tgdm(broken)


def test_resuming_a_distillation_continues_exactly(views, teacher, tmp_path):
    guidance = distill.DistillationSettings(student_steps=2, teacher_steps=4)

    def trainer(folder, steps, distillation=guidance):
        return distill.DistillationTrainer(teacher, settings(steps), distillation, tmp_path / folder, face_model=FACE_MODEL)

    straight = trainer("straight", 4)
    straight.train(views, log=lambda line: None)
    trainer("split", 2).train(views, log=lambda line: None)
    state = tmp_path / "split" / training.STATE_FOLDER
    assert {path.suffix for path in state.iterdir()} == {".safetensors", ".json"}, "nothing pickled"
    resumed = trainer("split", 4)
    assert resumed.step == 2 and resumed.ema.updates == 2
    resumed.train(views, log=lambda line: None)
    for name, value in straight.denoiser.state_dict().items():
        assert torch.equal(resumed.denoiser.state_dict()[name], value), f"raw weight {name} differs"
        assert torch.equal(resumed.ema.shadow[name], straight.ema.shadow[name]), f"EMA weight {name} differs"

    with pytest.raises(errors.TalkingFaceError, match="distilled with .*use the same student steps, guidance"):
        trainer("split", 6, dataclasses.replace(guidance, texture_guidance=3.0))
    training.TGDMTrainer(teacher.config, settings(1), tmp_path / "plain", face_model=FACE_MODEL).train(views, log=lambda line: None)
    with pytest.raises(errors.TalkingFaceError, match="not a TGDM distillation training state"):
        trainer("plain", 2)
