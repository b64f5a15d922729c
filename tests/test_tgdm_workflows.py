"""The TGDM example workflows end to end with the tiny models: analysis, fit, driven renders, TGDM and
paste-back give frames of the right number and size that change only around the face."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import workflow_runner
from packloader import PACK_ROOT, load_pack
from test_face_analysis import ensure_tiny_insightface

pack = load_pack()
ASSETS = PACK_ROOT / "tests" / "assets"
WORKFLOWS = PACK_ROOT / "example_workflows"
SINGLE_DRIVER = "talkingface_driver_single.png"


def _create_video(images, fps, audio=None):
    """Core CreateVideo: IMAGE frames, fps and optional AUDIO into one VIDEO value."""
    workflow_runner._check_image(images)
    assert fps > 0
    if audio is not None:
        assert audio["waveform"].ndim == 3 and audio["sample_rate"] > 0
    return ({"images": images, "fps": float(fps), "audio": audio},)


def _save_video(video, filename_prefix, format, codec):
    return {"images": workflow_runner._check_image(video["images"]), "fps": video["fps"], "audio": video["audio"]}


VIDEO_STAND_INS = {
    "CreateVideo": (["fps"], _create_video),
    "SaveVideo": (["filename_prefix", "format", "codec"], _save_video),
}


@pytest.fixture
def run(host_dirs, monkeypatch):
    """Run a workflow on the committed assets; returns {node type: what its output node received}."""
    ensure_tiny_insightface(host_dirs["models"])
    for asset in ASSETS.iterdir():
        shutil.copy(asset, host_dirs["input"])
    saved_videos = []
    stand_ins = dict(VIDEO_STAND_INS)
    stand_ins["SaveVideo"] = (stand_ins["SaveVideo"][0], lambda **inputs: saved_videos.append(_save_video(**inputs)) or {})
    monkeypatch.setattr(workflow_runner, "CORE_NODES", {**workflow_runner.CORE_NODES, **stand_ins})

    def execute(name: str) -> dict:
        recorded = workflow_runner.run_workflow(WORKFLOWS / name, pack.NODE_CLASS_MAPPINGS)
        nodes = {node["id"]: node for node in json.loads((WORKFLOWS / name).read_text())["nodes"]}
        outputs = {}
        for node_id, output in recorded.items():
            outputs.setdefault(nodes[node_id]["type"], []).append(output)
        if saved_videos:
            outputs["SaveVideo"] = saved_videos
        return outputs

    return execute


def _changed_fraction(result: torch.Tensor, original: torch.Tensor) -> float:
    return float(((result - original).abs().amax(-1) > 2 / 255).float().mean())


def test_reenact_video_pastes_generated_faces_into_every_driving_frame(run):
    driving, _ = workflow_runner.load_image_file(ASSETS / "talkingface_face_driving.png")
    outputs = run("tgdm_portrait_reenact_video.json")
    result = outputs["SaveImage"][0]["images"]
    assert result.shape == driving.shape, "one pasted frame per driving frame, at the driving frame's size"
    changed = _changed_fraction(result, driving)
    assert 0.02 < changed < 0.5, f"paste-back changes the face region only ({changed:.2f} of the pixels)"
    preview = outputs["PreviewImage"][0]["images"]
    assert preview.shape == (driving.shape[0], driving.shape[1], 2 * driving.shape[2], 3)


def test_single_image_reenactment_gives_one_image_in_the_portrait(run):
    portrait, _ = workflow_runner.load_image_file(ASSETS / "talkingface_face_portrait.png")
    outputs = run("tgdm_portrait_single_image.json")
    result = outputs["SaveImage"][0]["images"]
    assert result.shape == portrait.shape
    assert 0.02 < _changed_fraction(result, portrait) < 0.5
    panels = [output["images"] for output in outputs["PreviewImage"]]
    # portrait | result, and that | driver (core ImageStitch matches the height and keeps the aspect ratio)
    assert all(panel.shape[:2] == (1, portrait.shape[1]) for panel in panels)
    two, three = sorted(panel.shape[2] for panel in panels)
    assert two == 2 * portrait.shape[2] and three >= 3 * portrait.shape[2]


def test_talking_portrait_makes_a_video_with_the_audio(run):
    portrait, _ = workflow_runner.load_image_file(ASSETS / "talkingface_face_portrait.png")
    outputs = run("audio_talking_portrait_tgdm.json")
    video = outputs["SaveVideo"][0]
    frames = video["images"]
    # Load Audio keeps the whole 2 s clip: 50 frames at 25 fps, each the portrait with a generated face.
    assert video["fps"] == 25.0 and frames.shape[0] == 50 and frames.shape[1:] == portrait.shape[1:]
    assert video["audio"]["sample_rate"] == 16000
    assert abs(video["audio"]["waveform"].shape[-1] / 16000 - frames.shape[0] / 25.0) < 0.05
    for frame in frames:
        assert 0.02 < _changed_fraction(frame[None], portrait) < 0.5
    assert torch.equal(outputs["PreviewImage"][0]["images"], frames)


def test_committed_single_driver_is_what_the_command_writes(tmp_path):
    """tests/assets/talkingface_driver_single.png is frame 2 (jaw open, head turned) of the face assets' driving clip."""
    written = tmp_path / SINGLE_DRIVER
    code = (
        "import sys; from PIL import Image; "
        "from scripts.tiny_insightface import face_asset_coefficients, render_synthetic_faces; "
        "_, driving = face_asset_coefficients(); frames, _ = render_synthetic_faces(driving[2], 256); "
        "Image.fromarray(frames[0]).save(sys.argv[1], optimize=True)"
    )
    subprocess.run([sys.executable, "-c", code, str(written)], cwd=PACK_ROOT, check=True)
    fresh, _ = workflow_runner.load_image_file(written)
    committed, _ = workflow_runner.load_image_file(ASSETS / SINGLE_DRIVER)
    assert torch.equal(fresh, committed), f"tests/assets/{SINGLE_DRIVER} is stale"


def test_textured_talking_portrait_makes_a_video_with_the_audio(run):
    portrait, _ = workflow_runner.load_image_file(ASSETS / "talkingface_face_portrait.png")
    video = run("textured_talking_portrait.json")["SaveVideo"][0]
    frames = video["images"]
    assert video["fps"] == 25.0 and frames.shape[1:] == portrait.shape[1:] and frames.shape[0] >= 12
    assert abs(video["audio"]["waveform"].shape[-1] / video["audio"]["sample_rate"] - frames.shape[0] / 25.0) < 0.05
    for frame in frames:
        assert 0.01 < _changed_fraction(frame[None], portrait) < 0.5, "only the face region is replaced"


def test_textured_reenactment_animates_the_portrait_with_the_driver(run):
    portrait, _ = workflow_runner.load_image_file(ASSETS / "talkingface_face_portrait.png")
    driving, _ = workflow_runner.load_image_file(ASSETS / "talkingface_face_driving.png")
    outputs = run("textured_reenact_video.json")
    frames = outputs["SaveVideo"][0]["images"]
    assert frames.shape == (driving.shape[0], *portrait.shape[1:]), "one portrait frame per driving frame"
    for frame in frames:
        assert _changed_fraction(frame[None], portrait) < 0.5
    motion = (frames[1:] - frames[:-1]).abs().amax(-1).gt(8 / 255).float().mean()
    assert motion > 0.002, "the face follows the driver"


def _write_mp4_as_comfyui_does(video: dict, path) -> None:
    """What core Save Video does with a VIDEO (comfy_api VideoFromComponents.save_to): H.264 frames and
    one AAC stream at the AUDIO's own sample rate, mono or stereo as its channels say."""
    import math
    from fractions import Fraction

    import av

    rate = Fraction(round(video["fps"] * 1000), 1000)
    with av.open(str(path), mode="w") as output:
        picture = output.add_stream("h264", rate=rate)
        picture.width, picture.height, picture.pix_fmt = video["images"].shape[2], video["images"].shape[1], "yuv420p"
        sample_rate = int(video["audio"]["sample_rate"])
        sound = output.add_stream("aac", rate=sample_rate)
        for image in video["images"]:
            frame = av.VideoFrame.from_ndarray((image * 255).clamp(0, 255).byte().numpy(), format="rgb24")
            output.mux(picture.encode(frame.reformat(format="yuv420p")))
        output.mux(picture.encode(None))
        waveform = video["audio"]["waveform"][:, :, :math.ceil(sample_rate / rate * video["images"].shape[0])]
        frame = av.AudioFrame.from_ndarray(waveform.movedim(2, 1).reshape(1, -1).float().numpy(), format="flt",
                                           layout="mono" if waveform.shape[1] == 1 else "stereo")
        frame.sample_rate, frame.pts = sample_rate, 0
        output.mux(sound.encode(frame))
        output.mux(sound.encode(None))


def test_a_48khz_stereo_speech_file_comes_out_of_save_video_at_48khz_stereo(run, host_dirs, tmp_path):
    import av
    import numpy as np
    import soundfile

    speech, _ = soundfile.read(str(ASSETS / "talkingface_audio_speech.wav"), dtype="float32")
    stereo = np.stack([np.interp(np.arange(3 * speech.size) / 3, np.arange(speech.size), speech)] * 2, axis=1)
    stereo[:, 1] *= 0.5
    soundfile.write(str(host_dirs["input"] / "talkingface_audio_speech.wav"), stereo, 48000, subtype="PCM_24")
    outputs = run("audio_talking_portrait_tgdm.json")
    video = outputs["SaveVideo"][-1]
    assert video["audio"]["sample_rate"] == 48000 and video["audio"]["waveform"].shape == (1, 2, 96000)
    mp4 = tmp_path / "talking.mp4"
    _write_mp4_as_comfyui_does(video, mp4)
    with av.open(str(mp4)) as container:
        stream = container.streams.audio[0]
        assert (stream.rate, stream.channels) == (48000, 2)
        decoded = np.concatenate([frame.to_ndarray() for frame in container.decode(audio=0)], axis=-1)
    assert abs(decoded.shape[-1] / 48000 - 2.0) < 0.05, "the whole 2 s clip"
    left, right = np.sqrt((decoded ** 2).mean(-1))
    assert 0.4 < right / left < 0.6, "the two channels stay apart"


def test_face_swap_video_keeps_the_video_sound_and_replaces_only_the_face(run):
    from scripts.example_video import FPS, example_frames

    video = run("face_swap_video.json")["SaveVideo"][0]
    frames = video["images"]
    targets = torch.from_numpy(np.stack(example_frames())).float() / 255
    assert frames.shape == targets.shape, "one swapped frame per video frame, at the video's size"
    assert video["fps"] == FPS
    assert abs(video["audio"]["waveform"].shape[-1] / video["audio"]["sample_rate"] - frames.shape[0] / FPS) < 0.05
    for frame, target in zip(frames, targets, strict=True):
        # The mp4 is lossy: compare with the encoded frames' content, not bit for bit.
        assert 0.01 < _changed_fraction(frame[None], target[None]) < 0.5, "only the face region is replaced"


def test_example_video_is_the_driving_clip_with_the_speech(monkeypatch):
    from scripts.example_video import FPS, VIDEO_FILE, example_frames

    monkeypatch.setenv("TALKINGFACE_INPUT_DIR", str(ASSETS))
    (video,) = workflow_runner._load_video(VIDEO_FILE)
    targets = torch.from_numpy(np.stack(example_frames())).float() / 255
    assert video["images"].shape == targets.shape and video["fps"] == FPS
    assert (video["images"] - targets).abs().mean() < 0.02, "tests/assets video is stale: run python -m scripts.example_video"
    assert video["audio"]["sample_rate"] == 16000
