"""The Emo-A2E nodes called as ComfyUI calls them: contract, behaviour with and without audio, bad input."""
import shutil

import pytest
import test_pack_contract as contract
import torch
from packloader import PACK_ROOT, load_pack, pack_import
from workflow_runner import run_workflow

pack = load_pack()
emo_nodes = pack_import("nodes.emo_a2e")
emotion_nodes = pack_import("nodes.emotion")
audio_nodes = pack_import("nodes.audio")
base = pack_import("nodes.base")
emo = pack_import("pipelines.audio.emo_a2e")
coefficients = pack_import("pipelines.morphable.coefficients")
emotion_module = pack_import("pipelines.emotion.emotion")
ASSETS = PACK_ROOT / "tests" / "assets"
SPEECH = "talkingface_audio_speech.wav"
TINY_CLIP_FILE = "talkingface_tiny_clip.safetensors"
MAPPINGS = {**pack.NODE_CLASS_MAPPINGS,
            **{f"TalkingFace{cls.__name__}": cls for cls in (*emo_nodes.NODE_CLASSES, *emotion_nodes.EMOTION_NODES)}}


@pytest.fixture
def emo_dirs(host_dirs, monkeypatch):
    monkeypatch.syspath_prepend(str(PACK_ROOT))
    from scripts.tiny_clip import write_tiny_clip
    from scripts.tiny_emo_a2e import TINY_EMO_A2E_FILE, write_tiny_emo_a2e

    write_tiny_emo_a2e(host_dirs["models"])
    if not (host_dirs["models"] / "clip" / TINY_CLIP_FILE).is_file():
        write_tiny_clip(host_dirs["models"])
    for asset in ASSETS.iterdir():
        shutil.copy(asset, host_dirs["input"])
    return {**host_dirs, "model_file": TINY_EMO_A2E_FILE}


@pytest.fixture(scope="module")
def face():
    return pack_import("pipelines.morphable.demo_model").demo_face_model()


def make_emotion(model, seed=0, intensity=1.0, encoder=None, dim=None):
    config = model.config
    dim = dim or config.emotion_dim
    embedding = torch.nn.functional.normalize(torch.randn(dim, generator=torch.Generator().manual_seed(seed)), dim=0)
    anchors = torch.zeros(len(emotion_module.MEAD_EMOTIONS))
    anchors[1] = 1.0
    return emotion_module.TextEmotion(embedding, anchors, intensity, "furious", encoder or config.encoder)


def inputs(emo_dirs, face, **changes):
    (model,) = emo_nodes.LoadEmoA2EModel().execute(model_name=emo_dirs["model_file"])
    portrait = coefficients.FaceCoefficients.load(emo_dirs["input"] / "talkingface_demo_coefficients.safetensors")
    audio, _ = audio_nodes.LoadAudio().execute(file=SPEECH, start_seconds=0.0, duration_seconds=0.0)
    values = dict(emo_model=model, face_model=face, portrait=portrait, portrait_frame=0, emotion=make_emotion(model),
                  fps=25.0, frames=0, length_policy="pad", head_motion="idle", seed=0, motion_strength=1.0,
                  no_audio_motion="animated", windows_per_batch=4, audio=audio)
    values.update(changes)
    return values


@pytest.mark.parametrize("node_class", emo_nodes.NODE_CLASSES, ids=lambda c: c.__name__)
def test_node_contract(node_class, emo_dirs):
    contract.test_node_contract(f"TalkingFace{node_class.__name__}", node_class)


def test_load_finds_the_checkpoint_and_refuses_other_kinds(emo_dirs):
    node = emo_nodes.LoadEmoA2EModel
    assert emo_dirs["model_file"] in node.INPUT_TYPES()["required"]["model_name"][0]
    (model,) = node().execute(model_name=emo_dirs["model_file"])
    assert isinstance(model, emo.EmoA2ETransformer) and model.config.expression_dim == 64
    with pytest.raises(base.NodeInputError, match="^Load Emo-A2E Model: .*not an Emo-A2E checkpoint.*audio_landmarks"):
        node().execute(model_name="audio_landmarks.safetensors")
    with pytest.raises(base.NodeInputError, match="ComfyUI/models/talkingface/"):
        node().execute(model_name="nothing.safetensors")
    with pytest.raises(base.NodeInputError, match="no checkpoint chosen"):
        node().execute(model_name="")


def test_text_emotion_from_the_tiny_clip_drives_the_tiny_model(emo_dirs, face):
    """The emotion half's own nodes make the TALK_EMOTION: the encoder names must agree end to end."""
    (clip_text,) = emotion_nodes.LoadCLIPEmotion().execute(clip_name=TINY_CLIP_FILE, model_name="auto")
    node = emotion_nodes.TextEmotion()
    furious, _ = node.execute(prompt="furious", preset="custom", intensity=1.0, clip_text=clip_text)
    (model,) = emo_nodes.LoadEmoA2EModel().execute(model_name=emo_dirs["model_file"])
    assert furious.encoder == model.config.encoder
    coeffs, _, frames, _ = emo_nodes.AudioToExpression().execute(**inputs(emo_dirs, face, emotion=furious))
    calm, _ = node.execute(prompt="calm", preset="custom", intensity=1.0, clip_text=clip_text)
    other, _, _, _ = emo_nodes.AudioToExpression().execute(**inputs(emo_dirs, face, emotion=calm))
    assert frames == 50 and not torch.allclose(coeffs.expression, other.expression)


def test_example_workflow_runs(emo_dirs):
    recorded = run_workflow(PACK_ROOT / "example_workflows" / "emotion_audio_talking.json", MAPPINGS)
    (outputs,) = recorded.values()
    assert outputs["images"].shape == (2 * 25, 128, 128, 3) and outputs["images"].amax() > 0.2  # the whole 2 s clip


def test_audio_drives_an_emotional_sequence(emo_dirs, face):
    values = inputs(emo_dirs, face)
    coeffs, audio, frames, fps = emo_nodes.AudioToExpression().execute(**values)
    assert frames == 50 and fps == 25.0 and coeffs.frames == 50 and coeffs.dims == face.dims
    assert audio["sample_rate"] == 16000 and audio["waveform"].shape == (1, 1, 32000)
    assert torch.isfinite(coeffs.expression).all()
    portrait = values["portrait"]
    assert torch.equal(coeffs.identity, portrait.identity[:1].expand(50, -1))
    moving = coeffs.expression[:, face.expression_index("jaw_open")]
    assert moving.std() > 0  # the tiny model's output follows the audio
    other = emo_nodes.AudioToExpression().execute(**inputs(emo_dirs, face, emotion=make_emotion(values["emo_model"], 5)))
    assert not torch.allclose(other[0].expression, coeffs.expression)
    # the loop policy: 3 s of frames from 2 s of audio; hold keeps the portrait's pose
    coeffs, audio, frames, _ = emo_nodes.AudioToExpression().execute(
        **inputs(emo_dirs, face, frames=75, length_policy="loop", head_motion="hold"))
    assert frames == 75 and audio["waveform"].shape[-1] == 48000 and torch.equal(coeffs.rotation[0], coeffs.rotation[-1])


def test_emotion_only_without_audio(emo_dirs, face):
    coeffs, audio, frames, _ = emo_nodes.AudioToExpression().execute(
        **inputs(emo_dirs, face, audio=None, frames=30, head_motion="hold", no_audio_motion="held"))
    assert frames == 30 and coeffs.frames == 30 and torch.allclose(coeffs.expression, coeffs.expression[:1].expand(30, -1))
    assert audio["waveform"].shape == (1, 1, 19200) and audio["waveform"].abs().max() == 0
    animated, _, _, _ = emo_nodes.AudioToExpression().execute(**inputs(emo_dirs, face, audio=None, frames=30,
                                                                          head_motion="hold"))
    assert not torch.allclose(animated.expression, coeffs.expression)
    with pytest.raises(base.NodeInputError, match="no audio is connected: set frames"):
        emo_nodes.AudioToExpression().execute(**inputs(emo_dirs, face, audio=None, frames=0))


def test_bad_input(emo_dirs, face):
    node = emo_nodes.AudioToExpression()
    model = emo_nodes.LoadEmoA2EModel().execute(model_name=emo_dirs["model_file"])[0]
    cases = [
        ({"audio": {"waveform": torch.full((1, 2, 16000), float("nan")), "sample_rate": 48000}}, "NaN"),
        ({"audio": {"waveform": torch.zeros(1, 1, 0), "sample_rate": 16000}}, "empty"),
        ({"emotion": make_emotion(model, encoder="open_clip:ViT-L-14")}, "encoded by 'open_clip:ViT-L-14'.*trained on"),
        ({"emotion": "furious"}, "emotion must come from Text Emotion"),
        ({"emo_model": "model"}, "emo_model must come from Load Emo-A2E Model"),
        ({"portrait_frame": 9}, "portrait_frame 9 does not exist"),
        ({"head_motion": "reference"}, "nothing is connected to motion_reference"),
    ]
    for changes, message in cases:
        with pytest.raises(base.NodeInputError, match=f"^Audio to Expression \\(Emo-A2E\\): .*{message}"):
            node.execute(**inputs(emo_dirs, face, **changes))
    small_face = pack_import("pipelines.morphable.model").MorphableModel(
        face.mean_shape, face.identity_basis.view(face.dims.identity, -1, 3), face.expression_basis[:10].view(10, -1, 3),
        face.mean_albedo, face.albedo_basis.view(face.dims.texture, -1, 3), face.triangles, face.landmark_ids,
        name="small face",
    )
    with pytest.raises(base.NodeInputError, match="predicts 64 expression coefficients but the face model 'small face' has 10"):
        node.execute(**inputs(emo_dirs, face, face_model=small_face))


def test_silence_gives_the_emotion_alone_and_keeps_the_sound(emo_dirs, face, caplog):
    silence = {"waveform": torch.zeros(1, 2, 44100), "sample_rate": 44100}
    with caplog.at_level("WARNING"):
        coeffs, sound, frames, _ = emo_nodes.AudioToExpression().execute(
            **inputs(emo_dirs, face, audio=silence, head_motion="hold", no_audio_motion="held"))
    assert "Audio to Expression (Emo-A2E): the audio is silent" in caplog.text
    assert frames == 25 and sound["sample_rate"] == 44100 and sound["waveform"].shape == (1, 2, 44100)
    emotion_only, _, _, _ = emo_nodes.AudioToExpression().execute(
        **inputs(emo_dirs, face, audio=None, frames=25, head_motion="hold", no_audio_motion="held"))
    assert torch.allclose(coeffs.expression, emotion_only.expression)
