"""Real-video TGDM data: videos through the face pipeline into shards, resume, skipped videos, the
dataset over the shards, and the trainer running on it."""
import json
import math
import pickle
import shutil
import subprocess
import sys

import av
import numpy as np
import pytest
import torch
from packloader import PACK_ROOT, pack_import
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from test_face_analysis import ensure_tiny_insightface

shards = pack_import("pipelines.training.video_shards")
training = pack_import("pipelines.training.tgdm")
dubbing_training = pack_import("pipelines.training.dubbing")
landmark_model = pack_import("pipelines.audio.landmark_model")
config_module = pack_import("pipelines.generator.config")
checkpoint = pack_import("pipelines.generator.checkpoint")
analysis = pack_import("pipelines.face.analysis")
demo_model = pack_import("pipelines.morphable.demo_model")
coefficients = pack_import("pipelines.morphable.coefficients")
renderer_module = pack_import("pipelines.render.renderer")
camera_module = pack_import("pipelines.morphable.camera")
errors = pack_import("pipelines.errors")

CROP = 64
SETTINGS = shards.PreprocessSettings(crop_size=CROP, segment_frames=5, shard_frames=4)
BACKGROUND = torch.tensor([0.06, 0.07, 0.1])


def talking_frames(seed: int, frames: int, size: int = 160, turn: float = 0.2) -> np.ndarray:
    """A demo-face person on a dark wall opening the jaw and turning (``turn`` rad at most): ``uint8`` ``[T, size, size, 3]``."""
    model = demo_model.demo_face_model(16)
    generator = torch.Generator().manual_seed(seed)
    coeffs = coefficients.FaceCoefficients.neutral(frames, model.dims)
    coeffs.identity[:] = torch.randn(model.dims.identity, generator=generator)
    coeffs.texture[:] = torch.randn(model.dims.texture, generator=generator)
    phase = torch.linspace(0, 2 * math.pi, frames + 1)[:frames]
    coeffs.expression[:, model.expression_index("jaw_open")] = 0.5 * (1 - torch.cos(phase))
    coeffs.rotation[:, 1] = turn * torch.sin(phase)
    coeffs.translation[:] = torch.tensor([0.0, 0.1, -7.0])
    maps = renderer_module.FaceRenderer(model, camera_module.PerspectiveCamera.deep3d(size)).render(coeffs)
    images = maps.image + (1 - maps.mask.unsqueeze(-1)) * BACKGROUND
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def write_mp4(path, frames: np.ndarray, fps: int = 25, sound: np.ndarray | None = None, sound_rate: int = 44100) -> None:
    """An H.264 mp4 of ``frames``; with ``sound`` (float32 ``[channels, samples]``), an AAC track too."""
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"crf": "10"}
        if sound is not None:
            layout = "stereo" if sound.shape[0] == 2 else "mono"
            track = container.add_stream("aac", rate=sound_rate)
            track.layout = layout
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if sound is None:
            return
        for start in range(0, sound.shape[1], 1024):
            block = av.AudioFrame.from_ndarray(np.ascontiguousarray(sound[:, start:start + 1024].T).reshape(1, -1),
                                               format="flt", layout=layout)
            block.sample_rate, block.pts = sound_rate, start
            for packet in track.encode(block):
                container.mux(packet)
        for packet in track.encode():
            container.mux(packet)


def frame_beeps(frames: int, fps: int, loud: list[int], rate: int = 44100, channels: int = 2) -> np.ndarray:
    """A 440 Hz tone during the ``loud`` frames and silence in the others: float32 ``[channels, samples]``."""
    time = np.arange(round(frames / fps * rate)) / rate
    on = np.isin(np.floor(time * fps).astype(int), loud)
    tone = (0.5 * on * np.sin(2 * np.pi * 440 * time)).astype(np.float32)
    return np.repeat(tone[None], channels, axis=0)


def frame_loudness(samples: torch.Tensor, frames: int) -> torch.Tensor:
    """Mean absolute sample of each of ``frames`` equal parts of a track."""
    return samples.float().abs().reshape(frames, -1).mean(1)


# The frames of speaker_a/clip.mp4 during which its sound track beeps.
LOUD_FRAMES = [1, 2, 5]


@pytest.fixture(scope="module")
def analyzer(tiny_models_dir):
    pack = ensure_tiny_insightface(tiny_models_dir) / "insightface" / "models" / "buffalo_l"
    return analysis.FaceAnalyzer.load(pack, "auto", detection_size=320)


@pytest.fixture(scope="module")
def face_model():
    return demo_model.demo_face_model(12)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """speaker_a/clip.mp4 (8 frames, 25 fps, a stereo 44.1 kHz sound track beeping in LOUD_FRAMES),
    speaker_b/frames/ (6 PNGs), an mp4 without a face, a broken file."""
    root = tmp_path_factory.mktemp("videos")
    (root / "speaker_a").mkdir()
    write_mp4(root / "speaker_a" / "clip.mp4", talking_frames(1, 8), sound=frame_beeps(8, 25, LOUD_FRAMES))
    folder = root / "speaker_b" / "frames"
    folder.mkdir(parents=True)
    for number, frame in enumerate(talking_frames(2, 6)):
        Image.fromarray(frame).save(folder / f"frame_{number}.png")
    write_mp4(root / "empty_room.mp4", np.full((4, 96, 96, 3), 12, dtype=np.uint8))
    (root / "broken.mp4").write_bytes(b"this is not a video")
    return root


@pytest.fixture(scope="module")
def shard_dir(videos, analyzer, face_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    lines = []
    shards.preprocess_videos(videos, out, analyzer, face_model, "demo face (built-in)", SETTINGS, log=lines.append)
    assert len(lines) == 4
    return out


def entries(folder):
    return {entry["name"]: entry for entry in json.loads((folder / shards.MANIFEST_FILE).read_text())["videos"]}


def test_manifest_lists_done_and_skipped_videos(shard_dir):
    manifest = json.loads((shard_dir / shards.MANIFEST_FILE).read_text())
    assert manifest["crop_size"] == CROP
    assert manifest["face_model"]["name"] == "demo face (built-in)"
    assert manifest["face_model"]["dims"] == {"identity": 80, "expression": 64, "texture": 80}
    listed = entries(shard_dir)
    assert sorted(listed) == ["broken.mp4", "empty_room.mp4", "speaker_a/clip.mp4", "speaker_b/frames"]
    clip, frames = listed["speaker_a/clip.mp4"], listed["speaker_b/frames"]
    assert (clip["status"], clip["frames"], clip["decoded_frames"], clip["fps"]) == ("done", 8, 8, 25.0)
    assert (frames["status"], frames["frames"], frames["fps"]) == ("done", 6, SETTINGS.frames_fps)
    assert [shard["frames"] for shard in clip["shards"]] == [4, 4], "shards hold at most shard_frames rows"
    assert listed["empty_room.mp4"]["status"] == "skipped"
    assert "no face" in listed["empty_room.mp4"]["reason"]
    assert listed["broken.mp4"]["status"] == "skipped" and listed["broken.mp4"]["reason"]


def test_shards_hold_aligned_crops_renders_surfaces_and_coefficients(shard_dir):
    clip = entries(shard_dir)["speaker_a/clip.mp4"]
    with safe_open(str(shard_dir / clip["shards"][0]["file"]), framework="pt") as handle:
        rows = {key: handle.get_tensor(key) for key in handle.keys()}
        assert handle.metadata()["format"] == shards.SHARD_FORMAT
    assert rows["photos"].dtype == torch.uint8 and rows["photos"].shape == (4, CROP, CROP, 3)
    assert rows["renders"].dtype == torch.uint8 and rows["renders"].shape == (4, CROP, CROP, 3)
    assert rows["surfaces"].dtype == torch.float16 and rows["surfaces"].shape == (4, CROP, CROP, 3)
    assert rows["coefficients"].dtype == torch.float32
    assert rows["coefficients"].shape == (4, config_module.DEFAULT_COEFFICIENT_DIM)
    assert rows["landmarks"].shape == (4, 68, 2)
    assert rows["frame"].tolist() == [0, 1, 2, 3]
    assert rows["video"].unique().numel() == 1
    identity = rows["coefficients"][:, :80]
    assert torch.allclose(identity, identity[:1].expand_as(identity)), "one identity per video"
    # The render covers the face of the crop: the bright pixels on the dark wall.
    rendered = rows["surfaces"].float().amax(-1) > 0
    photographed = rows["photos"].float().mean(-1) > 60
    overlap = (rendered & photographed).sum() / (rendered | photographed).sum()
    assert overlap > 0.7, f"render and crop disagree (IoU {overlap:.2f})"
    assert (rows["renders"][~rendered] == 0).all()


def test_resume_skips_listed_videos_and_adds_new_ones(shard_dir, videos, analyzer, face_model, tmp_path):
    folder = tmp_path / "shards"
    shutil.copytree(shard_dir, folder)
    before = entries(folder)
    lines = []
    shards.preprocess_videos(videos, folder, analyzer, face_model, "demo face (built-in)", SETTINGS, log=lines.append)
    assert lines == [] and entries(folder) == before
    extra = tmp_path / "videos"
    shutil.copytree(videos, extra)
    write_mp4(extra / "speaker_c.mp4", talking_frames(3, 3), fps=30)
    shards.preprocess_videos(extra, folder, analyzer, face_model, "demo face (built-in)", SETTINGS, log=lines.append)
    assert len(lines) == 1 and lines[0].startswith("[5/5] speaker_c.mp4: 3 frames")
    after = entries(folder)
    assert after["speaker_c.mp4"]["fps"] == 30.0 and list(after)[:4] == list(before)
    # The broken file is now a video: retrying the skipped ones adds it under a new video number.
    write_mp4(extra / "broken.mp4", talking_frames(4, 2))
    lines.clear()
    shards.preprocess_videos(extra, folder, analyzer, face_model, "demo face (built-in)", SETTINGS, log=lines.append,
                             retry_skipped=True)
    assert len(lines) == 2 and "broken.mp4: 2 frames" in lines[0] and "empty_room.mp4: skipped" in lines[1]
    retried = entries(folder)
    assert retried["broken.mp4"]["status"] == "done" and retried["broken.mp4"]["index"] == 5
    assert shards.VideoFaceShards(folder).video_count == 4
    with pytest.raises(errors.TalkingFaceError, match="--crop-size 64"):
        shards.preprocess_videos(extra, folder, analyzer, face_model, "demo face (built-in)",
                                 shards.PreprocessSettings(crop_size=128), log=lines.append)


def test_dataset_reads_rows_like_face_views(shard_dir):
    data = shards.VideoFaceShards(shard_dir)
    assert len(data) == 14 and data.video_count == 2
    assert data.photos.shape == data.renders.shape == data.surfaces.shape == (14, CROP, CROP, 3)
    rows = torch.tensor([0, 5, 9, 13])
    photos = data.photos[rows]
    assert photos.dtype == torch.float32 and 0 <= photos.min() and photos.max() <= 1
    clip = entries(shard_dir)["speaker_a/clip.mp4"]
    with safe_open(str(shard_dir / clip["shards"][1]["file"]), framework="pt") as handle:
        stored = handle.get_tensor("photos")[1].float() / 255
    assert torch.equal(photos[1], stored), "row 5 is the second row of the clip's second shard"
    in_memory = shards.VideoFaceShards(shard_dir, in_memory=True)
    for name in ("photos", "renders", "surfaces"):
        assert torch.equal(getattr(in_memory, name)[rows], getattr(data, name)[rows])
    assert data.coefficients.shape == (14, config_module.DEFAULT_COEFFICIENT_DIM)
    small = shards.VideoFaceShards(shard_dir, image_size=32)
    assert small.photos[rows].shape == small.surfaces[rows].shape == (4, 32, 32, 3)
    copied = pickle.loads(pickle.dumps(data))  # what a data-loader worker gets: it opens its own readers
    assert torch.equal(copied.renders[rows], data.renders[rows])


def test_pairs_are_two_frames_of_one_video_a_gap_apart(shard_dir):
    generator = torch.Generator().manual_seed(0)
    data = shards.VideoFaceShards(shard_dir, min_frame_gap=3)
    sources, targets = data.pairs(256, generator)
    assert torch.equal(data.videos[sources], data.videos[targets])
    gaps = (data.frame_numbers[sources] - data.frame_numbers[targets]).abs()
    assert gaps.min() >= 3
    assert len(set(zip(sources.tolist(), targets.tolist(), strict=True))) > 30, "pairs are drawn at random"
    sources, targets = data.evaluation_pairs(per_video=3)
    assert sources.tolist() == [0, 0, 0, 8, 8, 8] and targets.tolist() == [1, 4, 7, 9, 11, 13]
    # No frame is 100 frames away: any other frame of the same video instead.
    sources, targets = shards.VideoFaceShards(shard_dir, min_frame_gap=100).pairs(256, generator)
    assert torch.equal(data.videos[sources], data.videos[targets]) and (sources != targets).all()


def test_train_tgdm_command_trains_and_evaluates_on_video_shards(shard_dir, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "scripts.train_tgdm", "--out", str(tmp_path / "run"), "--data", str(shard_dir),
         "--held-out-data", str(shard_dir), "--min-frame-gap", "2", "--image-size", "32", "--base-channels", "8",
         "--levels", "1,2", "--attention", "16", "--steps", "2", "--batch-size", "2", "--sample-steps", "2",
         "--threads", "1"],
        cwd=PACK_ROOT, check=True, capture_output=True, text=True)
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["step"] == 2 and (tmp_path / "run" / training.EMA_FILE).is_file()
    assert summary["held_out_pairs"] == len(shards.VideoFaceShards(shard_dir).evaluation_pairs()[0])
    assert math.isfinite(summary["psnr_tgdm"]) and "videos from" in done.stdout


def test_dataset_names_the_command_for_an_empty_folder(tmp_path):
    with pytest.raises(errors.TalkingFaceError, match="scripts.preprocess_videos"):
        shards.VideoFaceShards(tmp_path)


def test_command_line_lists_what_it_skipped(videos, tiny_models_dir, tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    shutil.copy(videos / "broken.mp4", folder)
    pack = ensure_tiny_insightface(tiny_models_dir) / "insightface" / "models" / "buffalo_l"
    done = subprocess.run([sys.executable, "-m", "scripts.preprocess_videos", str(folder), "--out", str(tmp_path / "out"),
                           "--insightface", str(pack), "--crop-size", "64", "--threads", "1"],
                          cwd=PACK_ROOT, check=True, capture_output=True, text=True)
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert (summary["videos"], summary["skipped"], summary["frames"]) == (0, 1, 0)
    assert "broken.mp4: skipped" in done.stdout


def test_shards_keep_identity_descriptors_and_train_a_swap_generator(shard_dir, tmp_path):
    data = shards.VideoFaceShards(shard_dir)
    assert data.descriptors is not None and data.descriptors.shape == (len(data), 512)
    assert torch.allclose(data.descriptors.norm(dim=1), torch.ones(len(data)), atol=1e-4)
    done = subprocess.run(
        [sys.executable, "-m", "scripts.train_tgdm", "--out", str(tmp_path / "run"), "--data", str(shard_dir),
         "--held-out-data", str(shard_dir), "--image-size", "32", "--base-channels", "8", "--levels", "1,2",
         "--attention", "16", "--steps", "2", "--batch-size", "2", "--sample-steps", "2", "--threads", "1",
         "--identity-token"],
        cwd=PACK_ROOT, check=True, capture_output=True, text=True)
    assert json.loads(done.stdout.strip().splitlines()[-1])["step"] == 2
    assert checkpoint.load_tgdm(tmp_path / "run" / training.EMA_FILE).config.identity_dim == 512


def test_frame_audio_maps_source_frames_to_samples():
    # 30 fps source, every 2nd frame kept, samples starting at frame 4: frame n starts at n·16000/30.
    audio = shards.FrameAudio(torch.arange(4000, dtype=torch.int16), 30.0, frame_step=2, first_frame=4)
    assert audio.sample_of(4) == 0 and audio.sample_of(7) == 1600
    assert torch.equal(audio.span(6, 8), torch.arange(1067, 2134, dtype=torch.int16))
    tail = audio.span(6, 12)  # past the track's end: silence
    assert tail.shape == (3200,) and torch.equal(tail[:2933], torch.arange(1067, 4000, dtype=torch.int16))
    assert tail[2933:].abs().sum() == 0
    assert torch.equal(audio.span(2, 4), torch.zeros(1066, dtype=torch.int16)), "before the track: silence"


def test_shards_keep_the_speech_of_video_files_aligned_with_the_frames(shard_dir):
    listed = entries(shard_dir)
    clip = listed["speaker_a/clip.mp4"]
    assert clip["audio"] == {"sample_rate": 16000, "encoding": "int16", "frame_rate": 25.0, "frame_step": 1}
    assert "audio" not in listed["speaker_b/frames"], "a folder of frames has no sound"
    for shard in clip["shards"]:  # each shard carries the speech of its own four frames
        with safe_open(str(shard_dir / shard["file"]), framework="pt") as handle:
            speech = handle.get_tensor(shards.AUDIO_KEY)
        assert speech.dtype == torch.int16 and speech.shape == (4 * 640,)
    data = shards.VideoFaceShards(shard_dir)
    video = clip["index"]
    rows = data.video_rows(video)
    assert data.has_audio(video) and data.frame_runs(video) == [rows] and data.video_fps(video) == 25.0
    speech = data.clip_audio(rows)
    assert speech.dtype == torch.float32 and speech.shape == (8 * 640,) and speech.abs().max() <= 1
    # The beeps of the mp4 (stereo, 44.1 kHz, AAC) land in the frames they were made for.
    loudness = frame_loudness(speech, 8)
    loud = torch.zeros(8, dtype=torch.bool)
    loud[LOUD_FRAMES] = True
    assert loudness[loud].min() > 0.15 and loudness[loud].min() > 2 * loudness[~loud].max(), loudness
    part = range(rows.start + 2, rows.start + 5)
    assert torch.equal(data.clip_audio(part), speech[2 * 640:5 * 640])
    assert data.clip_audio(data.video_rows(listed["speaker_b/frames"]["index"])) is None


def without_audio(shard_dir, folder):
    """A copy of ``shard_dir`` as written before speech was kept: no audio in the shards or the manifest."""
    shutil.copytree(shard_dir, folder)
    manifest = json.loads((folder / shards.MANIFEST_FILE).read_text())
    for entry in manifest["videos"]:
        entry.pop("audio", None)
        for shard in entry.get("shards", []):
            path = str(folder / shard["file"])
            with safe_open(path, framework="pt") as handle:
                tensors = {key: handle.get_tensor(key) for key in handle.keys() if key != shards.AUDIO_KEY}
                metadata = {key: value for key, value in handle.metadata().items() if key != "audio"}
            save_file(tensors, path, metadata=metadata)
    (folder / shards.MANIFEST_FILE).write_text(json.dumps(manifest))
    return folder


def test_shards_written_before_speech_was_kept_still_load(shard_dir, tmp_path):
    old = shards.VideoFaceShards(without_audio(shard_dir, tmp_path / "old"))
    new = shards.VideoFaceShards(shard_dir)
    rows = torch.arange(len(new))
    assert torch.equal(old.photos[rows], new.photos[rows]) and torch.equal(old.coefficients, new.coefficients)
    assert not any(old.has_audio(video) for video in old.video_indices)
    assert all(old.clip_audio(old.video_rows(video)) is None for video in old.video_indices)
    sources, targets = old.pairs(64, torch.Generator().manual_seed(0))
    assert torch.equal(old.videos[sources], old.videos[targets])
    clips = dubbing_training.shard_clips(old)
    assert [clip.count for clip in clips] == [8, 6] and all(clip.audio is None for clip in clips)


def train_dubbing_command(shard_dir, out, *extra):
    from test_dubbing_training import CONFIG, LANDMARKS

    landmarks = out.parent / "landmarks.safetensors"
    landmark_model.save_landmark_model(landmark_model.LandmarkCompletionTransformer(LANDMARKS), landmarks)
    options = []
    for key, value in CONFIG.items():
        options.append("--" + key.replace("_", "-"))
        options += [str(v) for v in value] if isinstance(value, tuple) else [str(value)]
    return subprocess.run(
        [sys.executable, "-m", "scripts.train_dubbing", "--shards", str(shard_dir), "--held-out-shards", str(shard_dir),
         "--landmark-model", str(landmarks), "--out", str(out), *options, "--steps", "2", "--batch-size", "2",
         "--validate-every", "2", "--validation-windows", "2", "--warmup-steps", "1", "--threads", "1", *extra],
        cwd=PACK_ROOT, capture_output=True, text=True)


def test_dubbing_trains_jointly_on_shards_of_videos_with_sound(shard_dir, tmp_path):
    done = train_dubbing_command(shard_dir, tmp_path / "joint")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 clip(s) without sound left out of joint training" in done.stdout, "the frame folder, in both splits"
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["joint"] and summary["train_clips"] == 1 and summary["landmark_l1"] is not None
    assert (tmp_path / "joint" / "last_landmarks.safetensors").is_file()
    # Shards without sound name the fix.
    silent = train_dubbing_command(without_audio(shard_dir, tmp_path / "old"), tmp_path / "silent")
    assert silent.returncode != 0 and "joint training needs clips with audio" in silent.stderr
    assert "preprocess video files with their sound track again" in silent.stderr
