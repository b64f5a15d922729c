"""Dubbing a video: length policies, masks, pass-through of frames without a face, chunking, errors."""
import pytest
import torch
from packloader import pack_import

dubbing = pack_import("pipelines.generator.dubbing")
dubbing_sampler = pack_import("pipelines.generator.dubbing_sampler")
dubbing_video = pack_import("pipelines.generator.dubbing_video")
mouth = pack_import("pipelines.face.mouth")
faces_module = pack_import("pipelines.face.faces")
landmark_model = pack_import("pipelines.audio.landmark_model")
audio_synthetic = pack_import("pipelines.training.audio_synthetic")
demo_model = pack_import("pipelines.morphable.demo_model")
errors = pack_import("pipelines.errors")

SIZE = 96  # frame size


@pytest.fixture(scope="module")
def clip():
    return audio_synthetic.synthetic_clip(demo_model.demo_face_model(resolution=12), seconds=1.2, seed=3)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    config = dubbing.DubbingConfig(
        image_size=16, base_channels=8, channel_multipliers=(1, 2), attention_resolutions=(8,),
        attention_head_channels=8, reference_base_channels=8, reference_frames=2, norm_groups=4, token_width=8,
        coordinate_frequencies=2)
    model = dubbing.DubbingDenoiser(config).eval()
    torch.nn.init.normal_(model.output.weight, std=0.05)
    motion = landmark_model.LandmarkCompletionTransformer(landmark_model.LandmarkModelConfig(
        reference_sets=2, target_frames=8, width=16, heads=2, layers=1, feedforward=16, dropout=0.0,
        audio_channels=(8,), point_channels=4)).eval()
    return model, motion


def video(clip, frames=10):
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(frames, SIZE, SIZE, 3, generator=generator)
    landmarks = clip.landmarks[:frames] * (SIZE / 224)
    return faces_module.faces_from_landmarks(images, landmarks, crop_size=64)


def speech(clip, seconds):
    samples = int(seconds * 16000)
    return {"waveform": clip.audio[:samples].reshape(1, 1, -1), "sample_rate": 16000}


def run(models, faces, audio, steps=2, **options):
    model, motion = models
    sampler = dubbing_sampler.DubbingSampler(model, dubbing_sampler.DubbingSettings(steps=steps, batch_size=3))
    return dubbing_video.dub_video(sampler, motion, faces, audio, 25.0, dubbing_video.DubbingOptions(**options))


@pytest.mark.parametrize("policy, audio_frames, expected", [
    ("loop", 7, [0, 1, 2, 0, 1, 2, 0]),
    ("ping_pong", 8, [0, 1, 2, 1, 0, 1, 2, 1]),
    ("hold_last", 5, [0, 1, 2, 2, 2]),
    ("cut_to_shorter", 5, [0, 1, 2]),
    ("pad_silence", 5, [0, 1, 2]),
    ("loop", 2, [0, 1]),
])
def test_length_policies(policy, audio_frames, expected):
    assert dubbing_video.frame_schedule(3, audio_frames, policy).tolist() == expected


def test_input_mask_top_edge_follows_the_nose_and_the_shift(clip):
    points = clip.landmarks[:2] * (64 / 224)
    base = mouth.lower_face_input_mask(points, 64)
    higher = mouth.lower_face_input_mask(points, 64, top_shift=-0.1)
    nose_row = int(points[0, mouth.NOSE_TIP, 1])
    assert base[0, nose_row + 1:].min() == 1 and base[0, : nose_row - 1].max() == 0
    assert higher.sum() > base.sum()
    with pytest.raises(errors.TalkingFaceError, match="mask_top_shift"):
        mouth.lower_face_input_mask(points, 64, top_shift=0.5)


def test_paste_mask_covers_mouth_and_jaw_only(clip):
    points = clip.landmarks[:1] * (64 / 224)
    mask = mouth.mouth_paste_mask(points, points[:, :17], 64, feather=2)[0]
    lips = points[0, 48:68].round().long().clamp(0, 63)
    assert mask[lips[:, 1], lips[:, 0]].min() > 0.9
    assert mask[:int(points[0, mouth.NOSE_TIP, 1]) - 3].max() == 0  # the upper face stays
    assert mask[:, :2].max() == 0 and mask[:, -2:].max() == 0  # so does the background beside the jaw


def test_dubbing_changes_only_the_mouth_region_and_keeps_frames_without_a_face(models, clip):
    faces = video(clip)
    faces.detected[4] = False
    result = run(models, faces, speech(clip, 0.4), length_policy="cut_to_shorter", chunk_size=4)
    assert result.images.shape == (10, SIZE, SIZE, 3) and result.audio["waveform"].shape[-1] == 6400
    assert torch.equal(result.images[4], faces.images[4]) and result.masks[4].max() == 0
    changed = (result.images - faces.images).abs().amax(-1)
    assert changed[:, : SIZE // 3].max() == 0  # the upper face and above
    assert (changed[result.masks == 0]).max() == 0
    assert changed.sum() > 0 and result.masks.amax((1, 2))[0] > 0.9


def test_chunking_does_not_change_any_frame(models, clip):
    faces = video(clip, frames=6)
    audio = speech(clip, 0.24)
    whole = run(models, faces, audio, chunk_size=16)
    model, motion = models
    previews = []
    pieces = dubbing_video.dub_video(
        dubbing_sampler.DubbingSampler(model, dubbing_sampler.DubbingSettings(steps=2, batch_size=3)), motion, faces,
        audio, 25.0, dubbing_video.DubbingOptions(chunk_size=2), on_chunk=previews.append)
    assert torch.allclose(whole.images, pieces.images, atol=1e-5)
    assert len(previews) == 3 and torch.equal(previews[-1], pieces.images[-1])  # one preview per chunk


def test_longer_audio_loops_the_video_and_silence_is_valid(models, clip):
    faces = video(clip, frames=4)
    result = run(models, faces, speech(clip, 0.4), steps=1, length_policy="ping_pong")
    assert result.template_frames.tolist() == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3]
    silent = {"waveform": torch.zeros(1, 1, 4000), "sample_rate": 16000}
    assert run(models, faces, silent, steps=1, length_policy="pad_silence").images.shape[0] == 4


def test_bad_inputs_get_one_clear_error(models, clip):
    faces = video(clip, frames=1)
    with pytest.raises(errors.TalkingFaceError, match="single frame.*talking-portrait"):
        run(models, faces, speech(clip, 0.4))
    faces = video(clip, frames=4)
    model, motion = models
    sampler = dubbing_sampler.DubbingSampler(model, dubbing_sampler.DubbingSettings(steps=1))
    with pytest.raises(errors.TalkingFaceError, match="trained on 25 fps.*30 fps.*resample"):
        dubbing_video.dub_video(sampler, motion, faces, speech(clip, 0.4), 30.0)
    with pytest.raises(errors.TalkingFaceError, match="fps must be positive"):
        dubbing_video.dub_video(sampler, motion, faces, speech(clip, 0.4), 0.0)
    with pytest.raises(errors.TalkingFaceError, match="empty"):
        dubbing_video.dub_video(sampler, motion, faces, {"waveform": torch.zeros(1, 1, 0), "sample_rate": 16000}, 25.0)
    faces.detected[:] = False
    with pytest.raises(errors.TalkingFaceError, match="no frame of the video has a detected face"):
        dubbing_video.dub_video(sampler, motion, faces, speech(clip, 0.4), 25.0)


def test_landmark_guidance_runs_two_variants_in_one_pass(models, clip):
    model, _ = models
    sampler = dubbing_sampler.DubbingSampler(model, dubbing_sampler.DubbingSettings(steps=2, landmark_guidance=2.0))
    crops = torch.rand(2, 16, 16, 3)
    landmarks = torch.rand(2, 37, 2) - 0.5
    references = sampler.encode_references(torch.rand(2, 16, 16, 3), torch.rand(2, 37, 2) - 0.5)
    out = sampler.sample(crops, torch.ones(2, 16, 16), landmarks, references, [0, 1])
    assert out.shape == (2, 16, 16, 3) and sampler.denoiser_calls == 2


@pytest.mark.parametrize("scheduler", ["ddim", "dpmpp_2m", "euler", "lcm"])
def test_every_scheduler_samples_a_clean_frame_model(models, scheduler):
    model, _ = models
    assert model.config.prediction_type == "sample"
    sampler = dubbing_sampler.DubbingSampler(model, dubbing_sampler.DubbingSettings(scheduler=scheduler, steps=3))
    references = sampler.encode_references(torch.rand(2, 16, 16, 3), torch.rand(2, 37, 2) - 0.5)
    out = sampler.sample(torch.rand(2, 16, 16, 3), torch.ones(2, 16, 16), torch.rand(2, 37, 2) - 0.5, references, [0, 1])
    assert out.shape == (2, 16, 16, 3) and torch.isfinite(out).all()
