"""Training the dubbing model: ground-truth landmarks, joint training with the landmark model, exact resume."""
import pytest
import torch
from packloader import pack_import

dubbing = pack_import("pipelines.generator.dubbing")
training = pack_import("pipelines.training.dubbing")
landmark_model = pack_import("pipelines.audio.landmark_model")
demo_model = pack_import("pipelines.morphable.demo_model")
errors = pack_import("pipelines.errors")

CONFIG = dict(image_size=16, base_channels=8, channel_multipliers=(1, 2), attention_resolutions=(8,),
              attention_head_channels=8, reference_base_channels=8, reference_frames=2, norm_groups=4, token_width=8,
              coordinate_frequencies=2)
LANDMARKS = landmark_model.LandmarkModelConfig(reference_sets=2, target_frames=4, width=16, heads=2, layers=1,
                                               feedforward=16, dropout=0.0, audio_channels=(8,), point_channels=4)


@pytest.fixture(scope="module")
def clips():
    return training.synthetic_dubbing_clips(demo_model.demo_face_model(resolution=12), clips=3, seconds=0.6, size=16, seed=1)


def denoiser():
    torch.manual_seed(0)
    return dubbing.DubbingDenoiser(dubbing.DubbingConfig(**CONFIG))


def settings(**changes):
    return training.dubbing_train_config(**{**dict(steps=4, batch_size=2, warmup_steps=1, validate_every=2,
                                                   train_windows=16, validation_windows=2), **changes})


def test_synthetic_clips_move_the_mouth_with_the_audio(clips):
    clip = clips[0]
    assert clip.frames.shape == (15, 16, 16, 3) and clip.landmarks.shape == (15, 68, 2) and clip.audio.shape == (9600,)
    opening = (clip.landmarks[:, 66, 1] - clip.landmarks[:, 62, 1])
    assert torch.corrcoef(torch.stack([opening, clip.mouth[:, 0]]))[0, 1] > 0.8


def test_detector_jitter_moves_only_the_landmarks(clips):
    jittered = training.with_detector_jitter(clips, pixels=0.5, seed=4)
    offsets = torch.cat([(noisy.landmarks - clip.landmarks).flatten() for noisy, clip in zip(jittered, clips, strict=True)])
    assert 0.45 < float(offsets.std()) < 0.55 and abs(float(offsets.mean())) < 0.05
    assert all(noisy.frames is clip.frames and noisy.audio is clip.audio and noisy.mouth is clip.mouth
               for noisy, clip in zip(jittered, clips, strict=True))
    again = training.with_detector_jitter(clips, pixels=0.5, seed=4)
    assert all(torch.equal(a.landmarks, b.landmarks) for a, b in zip(jittered, again, strict=True))


def test_windows_give_the_denoiser_and_the_landmark_model_what_they_read(clips):
    config = dubbing.DubbingConfig(**CONFIG)
    sample = training.DubbingWindows(clips, config, 4, landmark_config=LANDMARKS)[1]
    assert sample["target"].shape == (2, 16, 16, 3) and sample["references"].shape == (2, 16, 16, 3)
    assert sample["mel_windows"].shape == (4, 80, 16) and sample["pose"].shape == (4, 31, 2)
    # the masked template is the target with its lower face grey
    masked = sample["mask"].unsqueeze(-1) > 0
    assert torch.equal(sample["masked"][~masked.expand_as(sample["masked"])], sample["target"][~masked.expand_as(sample["target"])])
    assert 0.2 < sample["mask"].mean() < 0.7
    # the loss weighs up the mouth and jaw region, which lies inside the mask
    region = sample["mouth_region"]
    assert region.amax() > 0.5 and (region * sample["mask"]).sum() > 2 * (region * (1 - sample["mask"])).sum()
    # the ground-truth points in the crop are the normalised mouth points mapped back
    from_normalised = training.to_pixels(sample["mouth"][sample["picks"]], (sample["origin"], sample["axis"], sample["scale"]))
    assert torch.allclose(dubbing.crop_coordinates(from_normalised, 16), sample["landmarks"], atol=1e-4)


def test_joint_training_teaches_the_landmark_model_through_the_held_denoiser(clips):
    config = dubbing.DubbingConfig(**CONFIG)
    model = training.DubbingTrainee(denoiser(), landmark_model.LandmarkCompletionTransformer(LANDMARKS))
    for name, parameter in model.denoiser.named_parameters():  # zero-initialised outputs block gradients at step 0
        if name.endswith(("output.weight", "landmark_out.weight", "warp_out.weight")):
            torch.nn.init.normal_(parameter, std=0.1)
    for head in (model.landmark_model.lip_head, model.landmark_model.jaw_head):  # so are the landmark heads
        torch.nn.init.normal_(head.weight, std=0.1)
    batch = torch.utils.data.default_collate([training.DubbingWindows(clips, config, 2, landmark_config=LANDMARKS)[i] for i in range(2)])
    objective = training.DubbingObjective(config, landmark_drop=0.0)
    losses = objective(model, batch)
    # the diffusion loss from the predicted points reaches the landmark model and nothing else
    losses.through_landmark_model.backward(retain_graph=True)
    assert model.landmark_model.lip_head.weight.grad.abs().sum() > 0
    assert model.landmark_model.audio_encoder.project.weight.grad.abs().sum() > 0
    assert all(parameter.grad is None for parameter in model.denoiser.parameters())
    assert all(parameter.requires_grad for parameter in model.denoiser.parameters())  # held only for that pass
    # the denoiser learns from the training landmarks, which the landmark model does not touch
    model.landmark_model.zero_grad()
    losses.diffusion.backward()
    assert model.denoiser.output.weight.grad.abs().sum() > 0
    assert all(parameter.grad is None or not parameter.grad.any() for parameter in model.landmark_model.parameters())
    assert losses.as_used is losses.through_landmark_model


def test_ground_truth_stage_resumes_exactly(clips, tmp_path):
    whole, _ = training.train_dubbing(denoiser(), clips[:2], clips[2:], settings(), tmp_path / "whole", log=lambda _: None)
    training.train_dubbing(denoiser(), clips[:2], clips[2:], settings(), tmp_path / "split", log=lambda _: None, until_step=2)
    resumed, history = training.train_dubbing(denoiser(), clips[:2], clips[2:], settings(), tmp_path / "split",
                                              log=lambda _: None)
    assert [step for step, _ in history] == [4]
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    loaded = dubbing.load_dubbing(tmp_path / "whole" / "last.safetensors")
    assert loaded.config == whole.denoiser.config


def test_joint_stage_writes_a_dubbing_and_a_landmark_checkpoint(clips, tmp_path):
    model, history = training.train_dubbing(
        denoiser(), clips[:2], clips[2:], settings(steps=2), tmp_path,
        landmark_model=landmark_model.LandmarkCompletionTransformer(LANDMARKS), log=lambda _: None)
    result = history[-1][1]
    assert result.landmark_l1 == result.landmark_l1 and result.no_landmarks > 0
    dubbing.load_dubbing(tmp_path / "last.safetensors")
    fine_tuned = landmark_model.load_landmark_model(tmp_path / "last_landmarks.safetensors")
    assert fine_tuned.config == LANDMARKS


def test_joint_training_needs_audio(clips):
    silent = [training.DubbingClip(clip.frames, clip.landmarks, clip.fps) for clip in clips]
    with pytest.raises(errors.TalkingFaceError, match="joint training needs clips with audio"):
        training.DubbingWindows(silent, dubbing.DubbingConfig(**CONFIG), 2, landmark_config=LANDMARKS)


def test_training_script_runs_both_stages(tmp_path, monkeypatch, capsys):
    import json
    import sys

    from packloader import PACK_ROOT

    monkeypatch.syspath_prepend(str(PACK_ROOT))
    from scripts.train_dubbing import main

    tiny = ["--image-size", "16", "--base-channels", "8", "--channel-multipliers", "1", "2", "--attention-resolutions", "8",
            "--attention-head-channels", "8", "--reference-base-channels", "8", "--reference-frames", "2",
            "--norm-groups", "4", "--token-width", "8", "--coordinate-frequencies", "2"]
    run = ["--synthetic", "2", "--synthetic-validation", "1", "--clip-seconds", "0.8", "--steps", "2", "--batch-size", "2",
           "--validate-every", "2", "--validation-windows", "2", "--warmup-steps", "1"]
    monkeypatch.setattr(sys, "argv", ["train_dubbing", *run, *tiny, "--out", str(tmp_path / "stage1")])
    main()
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 2
    landmark_model.save_landmark_model(landmark_model.LandmarkCompletionTransformer(LANDMARKS), tmp_path / "lm.safetensors")
    monkeypatch.setattr(sys, "argv", ["train_dubbing", *run, "--init", str(tmp_path / "stage1" / "last.safetensors"),
                                      "--landmark-model", str(tmp_path / "lm.safetensors"), "--out", str(tmp_path / "joint")])
    main()
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["joint"] and summary["landmark_l1"] is not None
    assert (tmp_path / "joint" / "last_landmarks.safetensors").is_file()


def test_held_out_evaluation_scores_every_method_against_the_truth():
    evaluation = pack_import("pipelines.training.dubbing_evaluation")
    sampler = pack_import("pipelines.generator.dubbing_sampler")
    pairs = training.synthetic_dubbing_clips(demo_model.demo_face_model(resolution=12), clips=1, seconds=1.2, size=32,
                                             seed=3, with_templates=True)
    target, template = pairs[0]
    upper = list(range(17, 27)) + list(range(36, 48))  # brows and eyes: the same head, another mouth
    assert torch.allclose(target.landmarks[:, upper], template.landmarks[:, upper], atol=0.01)
    assert not torch.allclose(target.landmarks[:, 48:], template.landmarks[:, 48:])
    torch.manual_seed(0)
    model = dubbing.DubbingDenoiser(dubbing.DubbingConfig(**{**CONFIG, "image_size": 32}))
    scores = evaluation.evaluate_dubbing(pairs, {"model": (model, None)}, ablation=model,
                                         settings=sampler.DubbingSettings(steps=1))
    assert set(scores) == {"model", "no_landmarks", "copy_template", "copy_reference", "copy_nearest_reference", "truth"}
    assert scores["truth"]["mouth_ssim"] == 1.0 and scores["truth"]["lip_sync_r"] > 0.7  # the measure sees the mouth
    assert scores["copy_template"]["mouth_psnr"] < 60 and scores["copy_template"]["lip_sync_r"] < 0.8
    # a reference_base model is also scored against its base alone, which an untrained one reproduces exactly
    torch.manual_seed(0)
    based = dubbing.DubbingDenoiser(dubbing.DubbingConfig(**{**CONFIG, "image_size": 32, "prediction_type": "sample",
                                                              "reference_base": True}))
    scores = evaluation.evaluate_dubbing(pairs, {"model": (based, None)}, ablation=based,
                                         settings=sampler.DubbingSettings(steps=1))
    for measure in ("mouth_psnr", "mouth_ssim"):
        assert scores["model"][measure] == scores["warped_nearest_reference"][measure]
    assert scores["model"]["mouth_psnr"] > scores["copy_template"]["mouth_psnr"]
    assert scores["truth"]["lip_sync_r_per_pair"] == [scores["truth"]["lip_sync_r"]]  # one pair: its r is the pooled r


def test_landmark_evaluation_scores_points_before_any_image(monkeypatch):
    evaluation = pack_import("pipelines.training.dubbing_evaluation")
    pairs = training.synthetic_dubbing_clips(demo_model.demo_face_model(resolution=12), clips=2, seconds=1.2, size=32,
                                             seed=3, with_templates=True)
    torch.manual_seed(0)
    untrained = landmark_model.LandmarkCompletionTransformer(LANDMARKS)
    scores = evaluation.evaluate_landmarks(pairs, {"untrained": untrained}, reference_frames=2)
    assert scores["untrained"]["point_error_px"] > 0.1
    # a landmark model that gave the target's own points: no error, and the true opening's correlation
    monkeypatch.setattr(evaluation, "predicted_mouth",
                        lambda model, target, template, references: target.landmarks[:, list(landmark_model.MOUTH_POINTS)])
    perfect = evaluation.evaluate_landmarks(pairs, {"truth": untrained}, reference_frames=2)["truth"]
    assert perfect["point_error_px"] == 0.0 and perfect["opening_r"] > 0.9


def test_latent_mode_trains_on_the_frozen_vae_latents(tmp_path):
    vae_module = pack_import("pipelines.generator.vae")
    torch.manual_seed(0)
    vae_config = {**vae_module.vae_config("sd15"), "block_out_channels": [8, 8, 8, 8], "norm_num_groups": 4,
                  "layers_per_block": 1, "sample_size": 64}
    codec = vae_module.DiffusersVAECodec(vae_module.build_autoencoder(vae_config).eval())
    config = dubbing.DubbingConfig(**{**CONFIG, "space": "latent", "image_size": 8, "attention_resolutions": (4,)})
    clips = training.synthetic_dubbing_clips(demo_model.demo_face_model(resolution=12), clips=2, seconds=0.6, size=64, seed=4)
    model, history = training.train_dubbing(dubbing.DubbingDenoiser(config), clips[:1], clips[1:], settings(steps=1),
                                            tmp_path, vae=codec, log=lambda _: None)
    assert history[-1][1].model_l1 > 0 and dubbing.load_dubbing(tmp_path / "last.safetensors").config.latent
    with pytest.raises(errors.TalkingFaceError, match="give the VAE"):
        training.train_dubbing(dubbing.DubbingDenoiser(config), clips[:1], clips[1:], settings(steps=1), log=lambda _: None)
