"""The landmark completion transformer: shapes, checkpoint format and strict loading, sliding windows."""
import pytest
import torch
from packloader import pack_import
from safetensors.torch import save_file

landmark_model = pack_import("pipelines.audio.landmark_model")
landmarks = pack_import("pipelines.audio.landmarks")
audio_io = pack_import("pipelines.audio.io")
errors = pack_import("pipelines.errors")
coefficients = pack_import("pipelines.morphable.coefficients")

TINY = landmark_model.LandmarkModelConfig(
    reference_sets=3, target_frames=6, width=16, heads=2, layers=1, feedforward=32, dropout=0.0,
    audio_channels=(8,), point_channels=4,
)


def tiny_model(seed=0):
    torch.manual_seed(seed)
    model = landmark_model.LandmarkCompletionTransformer(TINY).eval()
    for head in (model.lip_head, model.jaw_head):
        torch.nn.init.normal_(head.weight, std=0.05)
    return model


def inputs(batch=2, frames=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 3, 68, 2, generator=generator), torch.randn(batch, frames, 80, 16, generator=generator),
            torch.randn(batch, frames, 31, 2, generator=generator))


def test_forward_shapes_and_shared_references():
    model = tiny_model()
    references, mel, pose = inputs()
    out = model(references, mel, pose)
    assert out.shape == (2, 6, 37, 2)
    shared = model(references[:1], mel, pose)
    assert torch.allclose(shared[0], out[0], atol=1e-6)
    assert model(references, mel[:, :4], pose[:, :4]).shape == (2, 4, 37, 2)
    with pytest.raises(errors.TalkingFaceError, match="pose"):
        model(references, mel, pose[:, :, :30])


def test_untrained_heads_predict_the_reference_mouth():
    model = landmark_model.LandmarkCompletionTransformer(TINY).eval()
    references, mel, pose = inputs()
    expected = references.mean(1, keepdim=True)[:, :, list(landmark_model.MOUTH_POINTS)].expand(-1, 6, -1, -1)
    assert torch.allclose(model(references, mel, pose), expected, atol=1e-6)


def test_checkpoint_round_trip_and_strict_loading(tmp_path):
    model = tiny_model()
    path = tmp_path / "motion.safetensors"
    landmark_model.save_landmark_model(model, path)
    loaded = landmark_model.load_landmark_model(path)
    assert loaded.config == TINY
    assert torch.equal(loaded(*inputs()), model(*inputs()))

    coefficient_file = tmp_path / "coeffs.safetensors"
    coefficients.FaceCoefficients.neutral(2).save(coefficient_file)
    with pytest.raises(errors.ModelFileError, match="not an audio-to-motion"):
        landmark_model.load_landmark_model(coefficient_file)

    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": landmark_model.FILE_FORMAT, "config": TINY.to_json()}
    broken = dict(state)
    del broken["lip_head.weight"]
    save_file(broken, str(tmp_path / "missing.safetensors"), metadata=metadata)
    with pytest.raises(errors.ModelFileError, match=r"missing \['lip_head.weight'\]"):
        landmark_model.load_landmark_model(tmp_path / "missing.safetensors")
    state["lip_head.bias"] = torch.zeros(3)
    save_file(state, str(tmp_path / "shape.safetensors"), metadata=metadata)
    with pytest.raises(errors.ModelFileError, match="wrong shape"):
        landmark_model.load_landmark_model(tmp_path / "shape.safetensors")
    (tmp_path / "corrupt.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(errors.ModelFileError, match="could not be read"):
        landmark_model.load_landmark_model(tmp_path / "corrupt.safetensors")
    with pytest.raises(errors.ModelFileError, match="not found"):
        landmark_model.load_landmark_model(tmp_path / "nothing.safetensors")


def test_normalised_frame_round_trip_and_invariance():
    points = torch.randn(5, 68, 2) * 20 + 112
    frame = landmarks.eye_frames(points)
    normal = landmarks.to_normalised(points, frame)
    assert torch.allclose(landmarks.to_pixels(normal, frame), points, atol=1e-3)
    angle = torch.tensor(0.3)
    rotation = torch.tensor([[angle.cos(), -angle.sin()], [angle.sin(), angle.cos()]])
    moved = points @ rotation.T * 1.7 + torch.tensor([30.0, -12.0])
    assert torch.allclose(landmarks.to_normalised(moved, landmarks.eye_frames(moved)), normal, atol=1e-4)


@pytest.mark.parametrize("frames", [1, 5, 6, 7, 23])
def test_window_plan_covers_every_frame(frames):
    plan = landmarks.WindowPlan(frames, 6, 2)
    covered = torch.zeros(frames)
    for start in plan.starts():
        covered[start: start + plan.window] += 1
    assert (covered >= 1).all() and plan.starts()[-1] + plan.window == frames
    assert (plan.blend_weights() > 0).all()


def test_sliding_windows_blend_and_do_not_depend_on_batching():
    model = tiny_model()
    generator = torch.Generator().manual_seed(1)
    speech = audio_io.Audio(0.1 * torch.randn(16000 * 2, generator=generator), 16000)
    references = torch.randn(3, 68, 2, generator=generator)
    pose = torch.randn(50, 31, 2, generator=generator)
    one = landmarks.predict_mouth(model, speech, 25.0, references, pose, overlap=2, windows_per_batch=1)
    many = landmarks.predict_mouth(model, speech, 25.0, references, pose, overlap=2, windows_per_batch=64)
    assert one.shape == (50, 37, 2) and torch.allclose(one, many, atol=1e-5)
    # the first window (frames 0-5) alone, from the whole clip's mel: frames 0-3 are only in that window
    log_mel = pack_import("pipelines.audio.features").LogMel()
    whole = log_mel(speech.samples).unsqueeze(0)
    padded = torch.nn.functional.pad(whole, (16, 16), value=log_mel.config.silence_value)
    windows = pack_import("pipelines.audio.features").mel_windows(padded, -16, torch.arange(6), 25.0, log_mel.config)
    direct = model(references.unsqueeze(0), windows, pose[:6].unsqueeze(0))[0]
    assert torch.allclose(direct[:4], one[:4], atol=1e-4)
    with pytest.raises(errors.TalkingFaceError, match="16000 Hz"):
        landmarks.predict_mouth(model, audio_io.Audio(speech.samples, 8000), 25.0, references, pose)
    with pytest.raises(ValueError, match="reference landmark sets"):
        landmarks.predict_mouth(model, speech, 25.0, references[:2], pose)


def test_blend_windows_is_generic():
    plan = landmarks.WindowPlan(frames=20, length=6, overlap=2)
    result = landmarks.blend_windows(plan, 3, lambda index: index.float().unsqueeze(-1).expand(-1, -1, 2), "cpu")
    assert torch.allclose(result, torch.arange(20).float().unsqueeze(1).expand(-1, 2))  # frame k predicts k everywhere
