"""Synthetic talking clips, clip files, and a tiny accelerate training run that writes loadable checkpoints."""
import dataclasses

import pytest
import torch
from packloader import PACK_ROOT, pack_import

synthetic = pack_import("pipelines.training.audio_synthetic")
training = pack_import("pipelines.training.audio_landmarks")
loop = pack_import("pipelines.training.loop")
landmark_model = pack_import("pipelines.audio.landmark_model")
errors = pack_import("pipelines.errors")

TINY = landmark_model.LandmarkModelConfig(
    reference_sets=2, target_frames=6, width=16, heads=2, layers=1, feedforward=32, dropout=0.0,
    audio_channels=(8,), point_channels=4,
)


@pytest.fixture(scope="module")
def clips():
    face = pack_import("pipelines.morphable.demo_model").demo_face_model()
    return [synthetic.synthetic_clip(face, 2.0, seed=seed) for seed in range(3)]


def test_synthetic_audio_follows_the_mouth(clips):
    clip = clips[0]
    assert clip.audio.shape == (32000,) and clip.landmarks.shape == (50, 68, 2)
    opening = (clip.landmarks[:, 66, 1] - clip.landmarks[:, 62, 1])  # inner lips apart, px
    loudness = clip.audio[: 50 * 640].view(50, 640).square().mean(1).sqrt()
    correlation = torch.corrcoef(torch.stack([opening, loudness]))[0, 1]
    assert correlation > 0.6
    again = synthetic.synthetic_clip(pack_import("pipelines.morphable.demo_model").demo_face_model(), 2.0, seed=0)
    assert torch.equal(again.audio, clip.audio) and torch.allclose(again.landmarks, clip.landmarks)


def test_synthetic_audio_hears_smile_and_pucker():
    """Spread lips raise the second formant and rounded ones lower it (seen here in the spectral
    centroid), so the audio carries the smile and pucker weights, not only the opening."""
    import numpy as np

    def spectral_centroid(jaw: float, pucker: float, smile: float) -> float:
        weights = np.tile([jaw, pucker, smile], (16000, 1))
        audio = synthetic.formant_audio(np.random.default_rng(0), weights)
        spectrum = np.abs(np.fft.rfft(audio * np.hanning(audio.size)))
        frequency = np.fft.rfftfreq(audio.size, 1 / 16000)
        band = (frequency > 200) & (frequency < 3000)  # both formants
        return float((spectrum[band] * frequency[band]).sum() / spectrum[band].sum())

    neutral = spectral_centroid(0.6, 0.0, 0.0)
    assert spectral_centroid(0.6, 0.0, 1.0) > neutral + 200
    assert spectral_centroid(0.6, 1.0, 0.0) < neutral - 150


def test_clip_files_round_trip_and_refuse_other_files(clips, tmp_path):
    training.save_clip(clips[0], tmp_path / "clip.safetensors")
    loaded = training.load_clip(tmp_path / "clip.safetensors")
    assert torch.equal(loaded.audio, clips[0].audio) and loaded.fps == 25.0
    pack_import("pipelines.morphable.coefficients").FaceCoefficients.neutral(1).save(tmp_path / "other.safetensors")
    with pytest.raises(errors.ModelFileError, match="not a training clip"):
        training.load_clip(tmp_path / "other.safetensors")


def test_windows_and_loss(clips):
    windows = training.LandmarkWindows(clips, TINY, count=5, seed=1)
    item = windows[3]
    assert item["references"].shape == (2, 68, 2) and item["mel_windows"].shape == (6, 80, 16)
    assert item["pose"].shape == (6, 31, 2) and item["target"].shape == (6, 37, 2)
    assert torch.equal(windows[3]["target"], item["target"])  # a window is the same on every pass
    target = item["target"].unsqueeze(0)
    assert loop.velocity_l1(target, target, 1.0) == 0
    moved = target + 0.1
    assert torch.isclose(loop.velocity_l1(moved, target, 1.0), torch.tensor(0.1))  # velocity unchanged
    with pytest.raises(errors.TalkingFaceError, match="shorter than a training window"):
        training.LandmarkWindows([synthetic.TalkingClip(clips[0].audio, clips[0].landmarks[:4], 25.0)], TINY, 2)


def test_portrait_windows_repeat_one_reference_frame(clips):
    """A still portrait gives the model one mouth shape in every reference slot; training must show it
    that case (the chain check and the nodes use it), not only references from a talking clip."""
    config = dataclasses.replace(TINY, reference_sets=4)

    def repeated(item: dict) -> bool:
        references = item["references"]
        return bool((references == references[:1]).all())

    portraits = training.LandmarkWindows(clips, config, count=6, seed=2, portrait_fraction=1.0)
    talking = training.LandmarkWindows(clips, config, count=6, seed=2, portrait_fraction=0.0)
    assert all(repeated(portraits[k]) for k in range(6))
    assert not any(repeated(talking[k]) for k in range(6))
    mixed = training.LandmarkWindows(clips, config, count=40, seed=2)
    assert 5 < sum(repeated(mixed[k]) for k in range(40)) < 35
    with pytest.raises(errors.TalkingFaceError, match="portrait_fraction"):
        training.LandmarkWindows(clips, config, count=2, portrait_fraction=1.5)


def test_tiny_training_run_writes_loadable_checkpoints(clips, tmp_path):
    config = training.TrainConfig(steps=4, batch_size=4, validate_every=2, validation_windows=8, train_windows=64,
                                  warmup_steps=1)
    model, history = training.train_landmark_model(TINY, clips[:2], clips[2:], config, tmp_path, log=lambda _: None)
    assert [step for step, _ in history] == [2, 4]
    assert all(torch.isfinite(torch.tensor(e.model_l1)) for _, e in history)
    for name in ("best.safetensors", "last.safetensors"):
        loaded = landmark_model.load_landmark_model(tmp_path / name)
        assert loaded.config == TINY
    last = landmark_model.load_landmark_model(tmp_path / "last.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(last.state_dict().values(), model.state_dict().values(), strict=True))


def test_resuming_continues_exactly_from_a_pickle_free_state(clips, tmp_path):
    """A run stopped after 2 of 4 steps and continued ends with the very weights of an uninterrupted
    run (across an epoch boundary, with dropout), from a state folder holding no pickle."""
    config = dataclasses.replace(TINY, dropout=0.1)
    settings = training.TrainConfig(steps=4, batch_size=4, validate_every=2, validation_windows=4, train_windows=12,
                                    warmup_steps=1)
    straight, _ = training.train_landmark_model(config, clips[:2], clips[2:], settings, tmp_path / "straight",
                                                log=lambda _: None)
    _, first = training.train_landmark_model(config, clips[:2], clips[2:], settings, tmp_path / "split",
                                             log=lambda _: None, until_step=2)
    state = tmp_path / "split" / "training_state"
    assert [step for step, _ in first] == [2]
    assert {path.suffix for path in state.iterdir()} == {".safetensors", ".json"}, "nothing pickled"
    assert not (tmp_path / "split" / "training_state.partial").exists()
    messages = []
    resumed, second = training.train_landmark_model(config, clips[:2], clips[2:], settings, tmp_path / "split",
                                                    log=messages.append)
    assert messages[0] == "resumed at step 2" and [step for step, _ in second] == [4]
    for name, value in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), f"{name} differs"
    with pytest.raises(errors.TalkingFaceError, match="different landmark model config"):
        training.train_landmark_model(dataclasses.replace(config, width=8), clips[:2], clips[2:], settings,
                                      tmp_path / "split", log=lambda _: None)
    old = tmp_path / "old" / "training_state"
    old.mkdir(parents=True)
    (old / "custom_checkpoint_0.pkl").write_bytes(b"")
    with pytest.raises(errors.TalkingFaceError, match="pickled state from an older version"):
        training.train_landmark_model(config, clips[:2], clips[2:], settings, tmp_path / "old", log=lambda _: None)


def test_expression_chain_check_runs_on_clips_with_known_coefficients(clips):
    face = pack_import("pipelines.morphable.demo_model").demo_face_model()
    model = landmark_model.LandmarkCompletionTransformer(TINY).eval()
    check = training.check_expression_chain(model, face, clips[:1], synthetic.MOUTH_DIRECTIONS)
    assert set(check.correlation) == set(synthetic.MOUTH_DIRECTIONS)
    assert all(value >= 0 for value in check.mean_abs_error.values())
    # the fit alone, on the true landmarks, recovers every mouth weight far better than a constant
    for name in synthetic.MOUTH_DIRECTIONS:
        assert check.true_landmarks_error[name] < 0.5 * check.constant_baseline_error[name]
    with pytest.raises(errors.TalkingFaceError, match="true coefficients"):
        training.check_expression_chain(model, face, [synthetic.TalkingClip(clips[0].audio, clips[0].landmarks, 25.0)],
                                        synthetic.MOUTH_DIRECTIONS)


def test_training_script_writes_clips_then_trains_on_them(tmp_path, monkeypatch, capsys):
    import json
    import sys

    monkeypatch.syspath_prepend(str(PACK_ROOT))
    from scripts.train_audio_landmarks import main

    tiny = ["--width", "16", "--heads", "2", "--layers", "1", "--feedforward", "16", "--target-frames", "8"]
    monkeypatch.setattr(sys, "argv", ["train_audio_landmarks", "--synthetic", "2", "--synthetic-validation", "1",
                                      "--clip-seconds", "1.5", "--write-clips", str(tmp_path / "clips")])
    main()
    monkeypatch.setattr(sys, "argv", [
        "train_audio_landmarks", "--train", str(tmp_path / "clips" / "train"), "--validation",
        str(tmp_path / "clips" / "validation"), "--steps", "2", "--validate-every", "2", "--batch-size", "2",
        "--validation-windows", "4", "--warmup-steps", "1", *tiny, "--out", str(tmp_path / "run"),
    ])
    main()
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 2 and summary["train_clips"] == 2 and summary["validation_clips"] == 1
    assert landmark_model.load_landmark_model(tmp_path / "run" / "best.safetensors").config.width == 16
