"""Emo-A2E model: shapes, conditions, windows over long audio, emotion-only sequences, checkpoints."""
import pytest
import torch
from packloader import pack_import

emo = pack_import("pipelines.audio.emo_a2e")
emotion_module = pack_import("pipelines.emotion.emotion")
io = pack_import("pipelines.audio.io")
errors = pack_import("pipelines.errors")
coefficients = pack_import("pipelines.morphable.coefficients")
landmark_model = pack_import("pipelines.audio.landmark_model")

ENCODER = "test-encoder"
TINY = emo.EmoA2EConfig(expression_dim=10, emotion_dim=12, encoder=ENCODER, target_frames=8, width=16, heads=2,
                        layers=1, feedforward=32, dropout=0.0, audio_channels=(8,))


def make_emotion(seed=0, intensity=1.0, encoder=ENCODER, dim=12):
    embedding = torch.nn.functional.normalize(torch.randn(dim, generator=torch.Generator().manual_seed(seed)), dim=0)
    anchors = torch.zeros(len(emotion_module.MEAD_EMOTIONS))
    anchors[5] = 1.0
    return emotion_module.TextEmotion(embedding, anchors, intensity, "a happy face", encoder)


def trained_like(config=TINY, seed=0):
    """A model with non-zero heads, so its output depends on every input."""
    torch.manual_seed(seed)
    model = emo.EmoA2ETransformer(config).eval()
    for head in (model.speech_head, model.emotion_head):
        torch.nn.init.normal_(head.weight, std=0.1)
    return model


def speech(seconds=1.0, seed=0):
    generator = torch.Generator().manual_seed(seed)
    time = torch.arange(int(seconds * 16000)) / 16000
    envelope = 0.5 + 0.5 * torch.sin(2 * torch.pi * 3 * time)
    return io.Audio((0.3 * envelope * torch.sin(2 * torch.pi * 180 * time) + 0.01 * torch.randn(time.shape, generator=generator)).float(), 16000)


def test_shapes_and_untrained_model_holds_the_neutral_face():
    model = emo.EmoA2ETransformer(TINY).eval()
    neutral = torch.randn(3, 10)
    mel = torch.randn(3, 5, 80, 16)
    out = model(neutral, torch.randn(3, 12), torch.ones(3), mel)
    assert out.shape == (3, 5, 10)
    assert torch.allclose(out, neutral.unsqueeze(1).expand(-1, 5, -1))  # zero heads: no motion rather than noise
    shared = model(neutral[:1], torch.randn(1, 12), torch.ones(1), mel)  # one condition row for every window
    assert shared.shape == (3, 5, 10)
    with pytest.raises(errors.TalkingFaceError, match="'embedding' must be"):
        model(neutral, torch.randn(3, 7), torch.ones(3), mel)
    with pytest.raises(errors.TalkingFaceError, match="1 to 8 frames"):
        model(neutral, torch.randn(3, 12), torch.ones(3), torch.randn(3, 9, 80, 16))


def test_output_depends_on_audio_emotion_and_intensity():
    model = trained_like()
    neutral, mel = torch.zeros(1, 10), torch.randn(1, 6, 80, 16)
    embedding = make_emotion().embedding.unsqueeze(0)
    base = model(neutral, embedding, torch.ones(1), mel)
    assert not torch.allclose(base, model(neutral, embedding, torch.ones(1), torch.randn(1, 6, 80, 16)))
    assert not torch.allclose(base, model(neutral, make_emotion(1).embedding.unsqueeze(0), torch.ones(1), mel))
    assert not torch.allclose(base, model(neutral, embedding, torch.full((1,), 0.5), mel))


def test_config_validation_and_json_round_trip():
    assert emo.EmoA2EConfig.from_json(TINY.to_json()) == TINY
    with pytest.raises(errors.TalkingFaceError, match="encoder must name"):
        emo.EmoA2EConfig(encoder="")
    with pytest.raises(errors.TalkingFaceError, match="divisible by heads"):
        emo.EmoA2EConfig(encoder="x", width=10, heads=3)
    with pytest.raises(errors.ModelFileError, match="Emo-A2E config has unknown settings"):
        emo.EmoA2EConfig.from_json('{"encoder": "x", "colour": 1}')


def test_short_audio_is_one_pass_and_long_audio_blends_windows():
    model = trained_like()
    emotion, neutral = make_emotion(), torch.randn(10)
    log_mel = pack_import("pipelines.audio.features").LogMel()
    features = pack_import("pipelines.audio.features")

    def one_pass(audio, frame_index, fps):
        mel = log_mel(audio.samples).unsqueeze(0)
        pad = 16
        padded = torch.nn.functional.pad(mel, (pad, pad), value=log_mel.config.silence_value)
        windows = features.mel_windows(padded, -pad, frame_index, fps, log_mel.config)
        return model(neutral.unsqueeze(0), emotion.embedding.unsqueeze(0), torch.ones(1), windows)[0]

    short = speech(0.3)
    predicted = emo.predict_expression(model, short, 25.0, 7, emotion, neutral)
    assert torch.allclose(predicted, one_pass(short, torch.arange(7), 25.0), atol=1e-5)

    long = speech(4.0)  # 100 frames at 25 fps: 17 windows of 8 with overlap 2
    whole = emo.predict_expression(model, long, 25.0, 100, emotion, neutral, windows_per_batch=64)
    one_at_a_time = emo.predict_expression(model, long, 25.0, 100, emotion, neutral, windows_per_batch=1)
    assert whole.shape == (100, 10) and torch.allclose(whole, one_at_a_time, atol=1e-5)
    # frames only the first window covers are exactly its one pass; the overlap blends the two windows
    first = one_pass(long, torch.arange(8), 25.0)
    second = one_pass(long, torch.arange(6, 14), 25.0)
    assert torch.allclose(whole[:6], first[:6], atol=1e-5)
    low, high = torch.minimum(first[6:], second[:2]), torch.maximum(first[6:], second[:2])
    assert (whole[6:8] >= low - 1e-5).all() and (whole[6:8] <= high + 1e-5).all()
    # an untrained model holds the neutral face through every blended join
    flat = emo.predict_expression(emo.EmoA2ETransformer(TINY).eval(), long, 30.0, 120, emotion, neutral)
    assert torch.allclose(flat, neutral.expand(120, -1), atol=1e-6)


def test_emotion_only_held_and_animated():
    model = trained_like()
    emotion, neutral = make_emotion(), torch.randn(10)
    held = emo.emotion_only_expression(model, 40, 25.0, emotion, neutral, "held")
    assert held.shape == (40, 10) and torch.allclose(held, held[:1].expand(40, -1))
    silent = emo.predict_expression(model, io.Audio(torch.zeros(8000), 16000), 25.0, 8, emotion, neutral)
    assert torch.allclose(held[0], silent.mean(0), atol=1e-5)  # no audio is what the model gives for silence
    animated = emo.emotion_only_expression(model, 250, 25.0, emotion, neutral, "animated", seed=3)
    again = emo.emotion_only_expression(model, 250, 25.0, emotion, neutral, "animated", seed=3)
    other = emo.emotion_only_expression(model, 250, 25.0, emotion, neutral, "animated", seed=4)
    assert torch.equal(animated, again) and not torch.allclose(animated, other)
    offset, moving = held[0] - neutral, animated - neutral
    strength = (moving @ offset) / (offset @ offset)  # the emotion's strength, frame by frame
    assert 0.75 < strength.min() < 1.0 < strength.max() < 1.25
    assert (strength.diff().abs() < 0.02).all()  # gently
    with pytest.raises(errors.TalkingFaceError, match="unknown no-audio motion"):
        emo.emotion_only_expression(model, 4, 25.0, emotion, neutral, "dance")


def test_wrong_encoder_embedding_size_and_expression_size_are_refused():
    model = trained_like()
    with pytest.raises(errors.TalkingFaceError, match="encoded by 'open_clip:ViT-B-32'.*trained on 'test-encoder'"):
        emo.emotion_only_expression(model, 4, 25.0, make_emotion(encoder="open_clip:ViT-B-32"), torch.zeros(10))
    with pytest.raises(errors.TalkingFaceError, match=r"takes \[12\] embeddings"):
        emo.predict_expression(model, speech(0.5), 25.0, 5, make_emotion(dim=16), torch.zeros(10))
    with pytest.raises(errors.TalkingFaceError, match="predicts 10 expression coefficients but the speaker"):
        emo.predict_expression(model, speech(0.5), 25.0, 5, make_emotion(), torch.zeros(64))
    with pytest.raises(errors.TalkingFaceError, match="16000 Hz"):
        emo.predict_expression(model, io.Audio(torch.zeros(8000), 8000), 25.0, 5, make_emotion(), torch.zeros(10))


def test_checkpoint_round_trip_and_strict_loading(tmp_path):
    model = trained_like()
    path = tmp_path / "emo.safetensors"
    emo.save_emo_a2e(model, path, {"note": "test"})
    loaded = emo.load_emo_a2e(path)
    assert loaded.config == TINY and not loaded.training
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True))

    coefficients.FaceCoefficients.neutral(1).save(tmp_path / "coeffs.safetensors")
    with pytest.raises(errors.ModelFileError, match="coeffs.safetensors is not an Emo-A2E checkpoint"):
        emo.load_emo_a2e(tmp_path / "coeffs.safetensors")
    landmark_model.save_landmark_model(
        landmark_model.LandmarkCompletionTransformer(landmark_model.LandmarkModelConfig(width=16, heads=2, layers=1,
                                                                                      feedforward=16)),
        tmp_path / "landmarks.safetensors")
    with pytest.raises(errors.ModelFileError, match="not an Emo-A2E checkpoint.*talkingface.audio_landmarks"):
        emo.load_emo_a2e(tmp_path / "landmarks.safetensors")

    safetensors_torch = pytest.importorskip("safetensors.torch")
    tensors = safetensors_torch.load_file(str(path))
    metadata = pack_import("pipelines.checkpoints").read_checkpoint_metadata(path, "x")
    del tensors["emotion_projection.weight"]
    tensors["speech_head.bias"] = torch.zeros(3)
    safetensors_torch.save_file(tensors, str(tmp_path / "broken.safetensors"), metadata=metadata)
    with pytest.raises(errors.ModelFileError, match=r"not an Emo-A2E checkpoint matching its config: expected keys "
                       r".*missing \['emotion_projection.weight'\].*wrong shape \['speech_head.bias"):
        emo.load_emo_a2e(tmp_path / "broken.safetensors")
    (tmp_path / "corrupt.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(errors.ModelFileError, match="could not be read as safetensors"):
        emo.load_emo_a2e(tmp_path / "corrupt.safetensors")
    with pytest.raises(errors.ModelFileError, match="not found"):
        emo.load_emo_a2e(tmp_path / "missing.safetensors")


def test_with_expression_keeps_the_head_motions_blinks():
    face = pack_import("pipelines.morphable.demo_model").demo_face_model()
    base = coefficients.FaceCoefficients.neutral(3, face.dims)
    blink = face.expression_index("blink_left")
    base.expression[1, blink] = 0.9
    expression = torch.full((3, face.dims.expression), 0.2)
    driven = emo.with_expression(face, base, expression)
    assert driven.expression[1, blink] == pytest.approx(0.9) and driven.expression[0, blink] == pytest.approx(0.2)
    assert torch.equal(driven.rotation, base.rotation)
