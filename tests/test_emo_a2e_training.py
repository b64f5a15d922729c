"""Emo-A2E training: synthetic emotional clips, clip files, windows, baselines, a tiny accelerate run with resume."""
import dataclasses
import json
import sys

import pytest
import torch
from packloader import PACK_ROOT, pack_import

synthetic = pack_import("pipelines.training.emo_synthetic")
training = pack_import("pipelines.training.emo_a2e")
emo = pack_import("pipelines.audio.emo_a2e")
errors = pack_import("pipelines.errors")
audio_training = pack_import("pipelines.training.audio_landmarks")
emotion = pack_import("pipelines.emotion.emotion")
MEAD_EMOTIONS = emotion.MEAD_EMOTIONS

ENCODER = synthetic.HashedPromptEncoder(dim=12)
TINY = emo.EmoA2EConfig(expression_dim=64, emotion_dim=12, encoder=emotion.emotion_encoder_id(ENCODER.name, 12), target_frames=6, width=16, heads=2,
                        layers=1, feedforward=32, dropout=0.0, audio_channels=(8,))


@pytest.fixture(scope="module")
def face():
    return pack_import("pipelines.morphable.demo_model").demo_face_model()


@pytest.fixture(scope="module")
def clips(face):
    return synthetic.synthetic_emotion_clips(face, speakers=2, clips_per_speaker=3, seconds=1.0, first_seed=0)


def test_synthetic_clips_show_the_emotion_and_follow_the_audio(face, clips):
    assert len(clips) == 6 and [clip.emotion for clip in clips[:3]] == list(MEAD_EMOTIONS[:3])
    clip = synthetic.synthetic_emotion_clip(face, synthetic.synthetic_speaker(face, 5), "happy", 3, 2.0, seed=1)
    assert clip.audio.shape == (32000,) and clip.expression.shape == (50, 64) and clip.intensity == 1.0
    smile, frown = face.expression_index("smile"), face.expression_index("frown")
    resting = clip.expression - clip.neutral
    assert resting[:, smile].min() >= 0.9 - 1e-6 and resting[:, frown].abs().max() < 1e-6
    sad = synthetic.synthetic_emotion_clip(face, synthetic.synthetic_speaker(face, 5), "sad", 1, 2.0, seed=1)
    assert (sad.expression - sad.neutral)[:, frown].min() == pytest.approx(0.4 * 0.8)
    jaw = resting[:, face.expression_index("jaw_open")]
    loudness = clip.audio[: 50 * 640].view(50, 640).square().mean(1).sqrt()
    assert torch.corrcoef(torch.stack([jaw, loudness]))[0, 1] > 0.6
    again = synthetic.synthetic_emotion_clip(face, synthetic.synthetic_speaker(face, 5), "happy", 3, 2.0, seed=1)
    assert torch.equal(again.audio, clip.audio) and torch.equal(again.expression, clip.expression)


def test_hashed_prompt_encoder_is_a_text_encoder():
    embeddings = ENCODER.encode(["a happy face", "a sad face", "a happy face"])
    assert isinstance(ENCODER, emotion.EmotionTextEncoder) and embeddings.shape == (3, 12)
    assert torch.allclose(embeddings.norm(dim=1), torch.ones(3)) and torch.equal(embeddings[0], embeddings[2])
    assert not torch.allclose(embeddings[0], embeddings[1])
    with pytest.raises(errors.TalkingFaceError, match="'name' string"):
        training.encode_prompts(object(), ["x"])


def test_clip_files_round_trip_and_refuse_other_files(clips, tmp_path):
    training.save_emotion_clip(clips[1], tmp_path / "clip.safetensors")
    loaded = training.load_emotion_clip(tmp_path / "clip.safetensors")
    assert torch.equal(loaded.expression, clips[1].expression) and torch.equal(loaded.identity, clips[1].identity)
    assert (loaded.emotion, loaded.level, loaded.speaker, loaded.fps) == (clips[1].emotion, clips[1].level,
                                                                         clips[1].speaker, 25.0)
    pack_import("pipelines.morphable.coefficients").FaceCoefficients.neutral(1).save(tmp_path / "other.safetensors")
    with pytest.raises(errors.ModelFileError, match="not an emotion training clip"):
        training.load_emotion_clip(tmp_path / "other.safetensors")
    bad = synthetic.EmotionClip(clips[0].audio, clips[0].expression, clips[0].neutral, 25.0, "bored", 1, "x")
    training.save_emotion_clip(bad, tmp_path / "bored.safetensors")
    with pytest.raises(errors.ModelFileError, match="'bored' level 1 is not a MEAD label"):
        training.load_emotion_clip(tmp_path / "bored.safetensors")


def test_prompts_windows_and_baseline_table(clips):
    assert training.emotion_prompts("fear") == ["a fearful face", "a person looking fearful", "fearful"]
    with pytest.raises(errors.TalkingFaceError, match="unknown emotion label"):
        training.emotion_prompts("bored")
    windows = training.EmotionWindows(clips, TINY, ENCODER, count=5, seed=1)
    item = windows[3]
    assert item["mel_windows"].shape == (6, 80, 16) and item["target"].shape == (6, 64)
    assert item["embedding"].shape == (12,) and item["neutral"].shape == (64,)
    assert torch.equal(windows[3]["target"], item["target"])
    offsets = training.emotion_mean_offsets(clips)
    row = training.condition_index(clips[0].emotion, clips[0].level)
    same = [clip for clip in clips if (clip.emotion, clip.level) == (clips[0].emotion, clips[0].level)]
    expected = torch.cat([clip.expression - clip.neutral for clip in same]).mean(0)
    assert offsets.shape == (24, 64) and torch.allclose(offsets[row], expected, atol=1e-6)
    other = emo.EmoA2EConfig(**{**TINY.__dict__, "encoder": "open_clip:ViT-B-32"})
    with pytest.raises(errors.TalkingFaceError, match="the text encoder is 'hashed-prompts"):
        training.EmotionWindows(clips, other, ENCODER, count=2)


def test_tiny_training_run_writes_loadable_checkpoints_and_resumes(clips, face, tmp_path):
    config = audio_training.TrainConfig(steps=4, batch_size=4, validate_every=2, validation_windows=8,
                                        train_windows=64, warmup_steps=1)
    model, history = training.train_emo_a2e(TINY, clips[:4], clips[4:], ENCODER, config, tmp_path, log=lambda _: None)
    assert [step for step, _ in history] == [2, 4]
    assert all(torch.isfinite(torch.tensor(e.model_l1)) for _, e in history)
    last = emo.load_emo_a2e(tmp_path / "last.safetensors")
    assert last.config == TINY and emo.load_emo_a2e(tmp_path / "best.safetensors").config == TINY
    assert all(torch.equal(a, b) for a, b in zip(last.state_dict().values(), model.state_dict().values(), strict=True))
    messages = []
    longer = audio_training.TrainConfig(**{**config.__dict__, "steps": 6})
    _, resumed = training.train_emo_a2e(TINY, clips[:4], clips[4:], ENCODER, longer, tmp_path, log=messages.append)
    assert messages[0] == "resumed at step 4" and [step for step, _ in resumed] == [6]
    check = training.check_clips(model, clips[4:], ENCODER, training.emotion_mean_offsets(clips[:4]), face)
    assert check.model_l1 > 0 and check.neutral_mouth_px > 0 and check.model_mouth_px is not None
    assert check.wrong_emotion_l1 > 0


def test_resuming_continues_exactly_from_a_pickle_free_state(clips, tmp_path):
    """A run stopped after 2 of 4 steps and continued ends with the very weights of an uninterrupted
    run (across an epoch boundary, with dropout), from a state folder holding no pickle."""
    config = dataclasses.replace(TINY, dropout=0.1)
    settings = audio_training.TrainConfig(steps=4, batch_size=4, validate_every=2, validation_windows=4,
                                          train_windows=12, warmup_steps=1)

    def train(folder, **options):
        return training.train_emo_a2e(config, clips[:4], clips[4:], ENCODER, settings, tmp_path / folder,
                                      log=options.pop("log", lambda _: None), **options)

    straight, _ = train("straight")
    train("split", until_step=2)
    state = tmp_path / "split" / "training_state"
    assert {path.suffix for path in state.iterdir()} == {".safetensors", ".json"}, "nothing pickled"
    messages = []
    resumed, second = train("split", log=messages.append)
    assert messages[0] == "resumed at step 2" and [step for step, _ in second] == [4]
    for name, value in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), f"{name} differs"
    with pytest.raises(errors.TalkingFaceError, match="different Emo-A2E config"):
        training.train_emo_a2e(dataclasses.replace(config, width=8), clips[:4], clips[4:], ENCODER, settings,
                               tmp_path / "split", log=lambda _: None)


def test_training_script_on_synthetic_speakers(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(PACK_ROOT))
    from scripts.train_emo_a2e import main

    monkeypatch.setattr(sys, "argv", [
        "train_emo_a2e", "--synthetic-speakers", "2", "--validation-speakers", "1", "--clips-per-speaker", "2",
        "--clip-seconds", "1", "--steps", "2", "--validate-every", "2", "--batch-size", "2", "--validation-windows", "4",
        "--warmup-steps", "1", "--width", "16", "--heads", "2", "--layers", "1", "--feedforward", "16",
        "--audio-channels", "8", "--target-frames", "8", "--emotion-dim", "8", "--out", str(tmp_path),
    ])
    main()
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 2 and summary["validation_speakers"] == 1
    assert summary["encoder"] == "hashed-prompts/dim8/seed0:8" and summary["clip_neutral_mouth_px"] > 0
    assert emo.load_emo_a2e(tmp_path / "best.safetensors").config.emotion_dim == 8
