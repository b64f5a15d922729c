"""The audio nodes called as ComfyUI calls them, their contract, and the audio example workflow."""
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile
import test_pack_contract as contract
import torch
from packloader import PACK_ROOT, load_pack, pack_import
from workflow_runner import run_workflow

pack = load_pack()
audio_nodes = pack_import("nodes.audio")
base = pack_import("nodes.base")
coefficients = pack_import("pipelines.morphable.coefficients")
ASSETS = PACK_ROOT / "tests" / "assets"
SPEECH = "talkingface_audio_speech.wav"
TINY_MODEL = "audio_landmarks.safetensors"
MAPPINGS = {**pack.NODE_CLASS_MAPPINGS, **{f"TalkingFace{cls.__name__}": cls for cls in audio_nodes.NODE_CLASSES}}


@pytest.fixture
def audio_dirs(host_dirs):
    sys.path.insert(0, str(PACK_ROOT))
    try:
        from scripts.tiny_audio import write_tiny_audio_models
    finally:
        sys.path.remove(str(PACK_ROOT))
    write_tiny_audio_models(host_dirs["models"])
    for asset in ASSETS.iterdir():
        shutil.copy(asset, host_dirs["input"])
    return host_dirs


@pytest.mark.parametrize("node_class", audio_nodes.NODE_CLASSES, ids=lambda c: c.__name__)
def test_node_contract(node_class, audio_dirs):
    contract.test_node_contract(f"TalkingFace{node_class.__name__}", node_class)


def test_load_audio_lists_loads_and_trims(audio_dirs):
    node = audio_nodes.LoadAudio
    assert SPEECH in node.INPUT_TYPES()["required"]["file"][0]
    audio, seconds = node().execute(file=SPEECH, start_seconds=0.5, duration_seconds=1.0)
    assert audio["sample_rate"] == 16000 and audio["waveform"].shape == (1, 1, 16000) and seconds == 1.0
    assert node.VALIDATE_INPUTS(file=SPEECH) is True
    assert "'missing.wav' is not in ComfyUI/input/" in node.VALIDATE_INPUTS(file="missing.wav")
    assert node.IS_CHANGED(file=SPEECH) == node.IS_CHANGED(file=SPEECH) != ""
    (audio_dirs["input"] / "broken.wav").write_text("this is not audio")
    with pytest.raises(base.NodeInputError, match=r"^Load Audio \(TalkingFace\): 'broken.wav' could not be decoded"):
        node().execute(file="broken.wav", start_seconds=0.0, duration_seconds=0.0)
    with pytest.raises(base.NodeInputError, match="no audio left after trimming"):
        node().execute(file=SPEECH, start_seconds=5.0, duration_seconds=0.0)


def test_load_motion_model_finds_the_checkpoint_and_refuses_other_kinds(audio_dirs):
    node = audio_nodes.LoadAudioToMotionModel
    assert TINY_MODEL in node.INPUT_TYPES()["required"]["model_name"][0]
    (model,) = node().execute(model_name=TINY_MODEL)
    assert model.config.target_frames == 8
    wrong = audio_dirs["models"] / "talkingface" / "coefficients_by_mistake.safetensors"
    coefficients.FaceCoefficients.neutral(1).save(wrong)
    try:
        with pytest.raises(base.NodeInputError, match="not an audio-to-motion"):
            node().execute(model_name=wrong.name)
    finally:
        wrong.unlink()
    with pytest.raises(base.NodeInputError, match="ComfyUI/models/talkingface/"):
        node().execute(model_name="nothing.safetensors")


def chain_inputs(audio_dirs, **changes):
    face = pack_import("pipelines.morphable.demo_model").demo_face_model()
    portrait = coefficients.FaceCoefficients.load(audio_dirs["input"] / "talkingface_demo_coefficients.safetensors")
    (model,) = audio_nodes.LoadAudioToMotionModel().execute(model_name=TINY_MODEL)
    audio, _ = audio_nodes.LoadAudio().execute(file=SPEECH, start_seconds=0.0, duration_seconds=0.0)
    inputs = dict(motion_model=model, face_model=face, portrait=portrait, portrait_frame=0, audio=audio, fps=25.0,
                  frames=0, length_policy="pad", head_motion="idle", seed=0, motion_strength=1.0, windows_per_batch=4)
    inputs.update(changes)
    return inputs


def test_audio_to_expression_chain(audio_dirs):
    inputs = chain_inputs(audio_dirs)
    landmarks, audio, frames, fps = audio_nodes.AudioToLandmarks().execute(**inputs)
    assert frames == 50 and fps == 25.0 and landmarks.points.shape == (50, 68, 2)
    assert audio["sample_rate"] == 16000 and audio["waveform"].shape == (1, 1, 32000)
    assert torch.isfinite(landmarks.points).all()
    coeffs, error = audio_nodes.LandmarksToExpression().execute(face_model=inputs["face_model"], landmarks=landmarks,
                                                                smoothing=0.5)
    assert coeffs.frames == 50 and 0 <= error < 20  # px: the tiny model is random, its mouths are not all reachable
    images, passed = audio_nodes.RenderTalkingPreview().execute(face_model=inputs["face_model"], coefficients=coeffs[:3],
                                                                audio=audio, resolution=64, batch_size=2)
    assert images.shape == (3, 64, 64, 3) and passed is audio
    # frames and the loop policy: 3 s of frames from 2 s of audio
    _, audio, frames, _ = audio_nodes.AudioToLandmarks().execute(**chain_inputs(audio_dirs, frames=75, length_policy="loop",
                                                                             head_motion="hold"))
    assert frames == 75 and audio["waveform"].shape[-1] == 48000


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"portrait_frame": 99}, "portrait_frame 99 does not exist"),
        ({"head_motion": "reference"}, "nothing is connected to motion_reference"),
        ({"audio": {"waveform": torch.full((1, 2, 16000), float("nan")), "sample_rate": 48000}}, "NaN"),
        ({"audio": {"waveform": torch.zeros(1, 1, 0), "sample_rate": 16000}}, "empty"),
    ],
)
def test_audio_to_landmarks_bad_input(audio_dirs, changes, message):
    with pytest.raises(base.NodeInputError, match=f"^Audio to Landmarks: .*{message}"):
        audio_nodes.AudioToLandmarks().execute(**chain_inputs(audio_dirs, **changes))


def test_audio_workflow_runs(audio_dirs):
    recorded = run_workflow(PACK_ROOT / "example_workflows" / "audio_talking_demo_face.json", MAPPINGS)
    (outputs,) = recorded.values()
    whole_clip = 2 * 25  # the template keeps the whole 2 s example clip, at 25 fps
    assert outputs["images"].shape == (whole_clip, 128, 128, 3) and outputs["images"].amax() > 0.2


def test_committed_speech_asset_is_what_the_script_writes(tmp_path):
    subprocess.run([sys.executable, "-m", "scripts.tiny_audio", "assets", str(tmp_path)], cwd=PACK_ROOT, check=True)
    fresh, _ = soundfile.read(str(tmp_path / SPEECH))
    kept, rate = soundfile.read(str(ASSETS / SPEECH))
    assert rate == 16000 and fresh.shape == kept.shape and np.abs(fresh - kept).max() <= 2 / 32768, (
        f"tests/assets/{SPEECH} is stale: run python -m scripts.tiny_audio assets"
    )


def test_a_48khz_stereo_file_comes_out_as_the_videos_sound_at_48khz_stereo(audio_dirs):
    speech, rate = soundfile.read(str(ASSETS / SPEECH), dtype="float32")
    stereo = np.stack([np.interp(np.arange(3 * speech.size) / 3, np.arange(speech.size), speech)] * 2, axis=1)
    stereo[:, 1] *= 0.5  # the channels differ, so a mix-down would show
    soundfile.write(str(audio_dirs["input"] / "stereo48k.flac"), stereo, 48000, subtype="PCM_24")
    audio, seconds = audio_nodes.LoadAudio().execute(file="stereo48k.flac", start_seconds=0.0, duration_seconds=0.0)
    assert audio["sample_rate"] == 48000 and audio["waveform"].shape == (1, 2, 96000) and seconds == 2.0
    inputs = chain_inputs(audio_dirs, audio=audio)
    _, sound, frames, _ = audio_nodes.AudioToLandmarks().execute(**inputs)
    assert frames == 50 and sound["sample_rate"] == 48000 and sound["waveform"].shape == (1, 2, 96000)
    assert torch.allclose(sound["waveform"], audio["waveform"]), "the sound is the user's, not the models' 16 kHz copy"
    _, padded, frames, _ = audio_nodes.AudioToLandmarks().execute(**{**inputs, "frames": 60})
    assert frames == 60 and padded["waveform"].shape == (1, 2, 115200) and padded["waveform"][..., 96000:].abs().max() == 0


def test_silence_gives_a_resting_mouth_and_a_warning(audio_dirs, caplog):
    silence = {"waveform": torch.zeros(1, 2, 48000), "sample_rate": 48000}
    inputs = chain_inputs(audio_dirs, audio=silence, head_motion="idle")
    with caplog.at_level("WARNING"):
        landmarks, sound, frames, _ = audio_nodes.AudioToLandmarks().execute(**inputs)
    assert "Audio to Landmarks: the audio is silent" in caplog.text
    assert frames == 25 and sound["waveform"].shape == (1, 2, 48000)
    coeffs, _ = audio_nodes.LandmarksToExpression().execute(face_model=inputs["face_model"], landmarks=landmarks, smoothing=0.5)
    jaw = coeffs.expression[:, inputs["face_model"].expression_index("jaw_open")]
    resting = inputs["portrait"].expression[0, inputs["face_model"].expression_index("jaw_open")]
    assert (jaw - resting).abs().max() < 0.05, "the jaw stays where the portrait rests it"
    assert coeffs.rotation.std(0).amax() > 0, "the head still moves as head_motion says"


def test_audio_files_without_samples_or_undecodable_name_the_file_not_the_server_path(audio_dirs):
    soundfile.write(str(audio_dirs["input"] / "empty.wav"), np.zeros((0, 1), dtype="float32"), 16000)
    with pytest.raises(base.NodeInputError, match=r"^Load Audio \(TalkingFace\): file 'empty.wav' holds no audio samples"):
        audio_nodes.LoadAudio().execute(file="empty.wav", start_seconds=0.0, duration_seconds=0.0)
    (audio_dirs["input"] / "broken.wav").write_text("this is not audio")
    with pytest.raises(base.NodeInputError) as raised:
        audio_nodes.LoadAudio().execute(file="broken.wav", start_seconds=0.0, duration_seconds=0.0)
    assert "'broken.wav' could not be decoded" in str(raised.value) and str(audio_dirs["input"]) not in str(raised.value)
