"""The emotion nodes called as ComfyUI calls them, their contract, and the text-emotion workflow."""
import shutil

import pytest
import test_pack_contract as contract
import torch
from packloader import PACK_ROOT, load_pack, pack_import
from test_emotion_clip import StandInComfyCLIP, tiny_clip
from workflow_runner import run_workflow

pack = load_pack()
emotion_nodes = pack_import("nodes.emotion")
base = pack_import("nodes.base")
coefficients = pack_import("pipelines.morphable.coefficients")
demo_model = pack_import("pipelines.morphable.demo_model")
model_module = pack_import("pipelines.morphable.model")
directions = pack_import("pipelines.emotion.directions")
MAPPINGS = {**pack.NODE_CLASS_MAPPINGS, **{f"TalkingFace{cls.__name__}": cls for cls in emotion_nodes.EMOTION_NODES}}
WORKFLOW = PACK_ROOT / "example_workflows" / "emotion_text_portrait.json"


@pytest.fixture
def emotion_dirs(host_dirs):
    if not (host_dirs["models"] / "clip" / tiny_clip.TINY_CLIP_FILE).is_file():
        tiny_clip.write_tiny_clip(host_dirs["models"])
    return host_dirs


@pytest.fixture
def clip_text(emotion_dirs):
    return emotion_nodes.LoadCLIPEmotion().execute(clip_name=tiny_clip.TINY_CLIP_FILE, model_name="auto")[0]


@pytest.mark.parametrize("node_class", emotion_nodes.EMOTION_NODES, ids=lambda c: c.__name__)
def test_node_contract(node_class, emotion_dirs):
    contract.test_node_contract(f"TalkingFace{node_class.__name__}", node_class)


def test_load_clip_emotion_lists_and_loads_files_and_local_dirs(emotion_dirs):
    choices = emotion_nodes.LoadCLIPEmotion.INPUT_TYPES()["required"]["clip_name"][0]
    local = f"{tiny_clip.TINY_CLIP_DIR}/open_clip_model.safetensors"
    assert tiny_clip.TINY_CLIP_FILE in choices and local in choices
    prompts = ["a happy face"]
    from_file = emotion_nodes.LoadCLIPEmotion().execute(clip_name=tiny_clip.TINY_CLIP_FILE, model_name="auto")[0]
    from_dir = emotion_nodes.LoadCLIPEmotion().execute(clip_name=local, model_name="  auto ")[0]
    assert torch.allclose(from_file.encode(prompts), from_dir.encode(prompts))


def test_load_clip_emotion_errors_name_the_node(emotion_dirs):
    with pytest.raises(base.NodeInputError, match=r"^Load CLIP Emotion: text encoder 'missing.safetensors' not found.*models/clip/"):
        emotion_nodes.LoadCLIPEmotion().execute(clip_name="missing.safetensors", model_name="auto")
    with pytest.raises(base.NodeInputError, match=r"^Load CLIP Emotion: .*does not fit open_clip model 'ViT-B-32'"):
        emotion_nodes.LoadCLIPEmotion().execute(clip_name=tiny_clip.TINY_CLIP_FILE, model_name="ViT-B-32")


def test_text_emotion_with_open_clip_or_a_comfy_clip(clip_text):
    node = emotion_nodes.TextEmotion()
    value, weights = node.execute(prompt="ignored", preset="happy", intensity=0.7, clip_text=clip_text)
    assert value.prompt == "a happy face" and value.dominant_emotion == "happy" and value.intensity == 0.7
    assert value.encoder == f"open_clip:{tiny_clip.TINY_CLIP_NAME}:32" and weights.startswith("happy ")
    comfy, _ = node.execute(prompt="a happy face", preset="custom", intensity=0.7, clip=StandInComfyCLIP(clip_text))
    assert comfy.encoder == "comfy:SD1ClipModel:32"
    assert torch.allclose(comfy.embedding, value.embedding, atol=1e-5)
    blended, _ = node.execute(prompt="a happy face", preset="custom", intensity=1.0, clip_text=clip_text,
                              second_prompt="a sad face", blend=0.5)
    assert "a sad face" in blended.prompt


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"prompt": "  ", "preset": "custom"}, "prompt is empty"),
        ({"prompt": "x", "preset": "furious"}, "unknown emotion preset"),
        ({"prompt": "x", "preset": "custom", "intensity": 3.0}, "intensity must be between 0"),
        ({"prompt": "x", "preset": "custom", "clip_text": None}, "no text encoder connected"),
    ],
)
def test_text_emotion_bad_input(clip_text, inputs, message):
    inputs = {"intensity": 1.0, "clip_text": clip_text, **inputs}
    with pytest.raises(base.NodeInputError, match=rf"^Text Emotion: .*{message}"):
        emotion_nodes.TextEmotion().execute(**inputs)


@pytest.fixture
def happy(clip_text):
    return emotion_nodes.TextEmotion().execute(prompt="", preset="happy", intensity=1.0, clip_text=clip_text)[0]


def test_apply_emotion_on_the_demo_face(happy):
    face_model = demo_model.demo_face_model(resolution=12)
    sequence = coefficients.FaceCoefficients.neutral(6)
    output = emotion_nodes.ApplyEmotion().execute(coefficients=sequence, emotion=happy, face_model=face_model,
                                                  directions=emotion_nodes.FACE_MODEL_DIRECTIONS, ramp_in_frames=3)
    (result,) = output["result"]
    (shown,) = output["ui"]["talkingface_emotion"]  # what the node's face preview draws
    assert shown["weights"] == happy.anchor_weights.tolist() and shown["intensity"] == happy.intensity
    expected = directions.demo_emotion_directions(face_model).offset(happy)
    assert torch.allclose(result.expression[-1], expected) and not result.expression[0].any()
    assert float(result.expression[-1, face_model.expression_index("smile")]) > 0.5


def test_apply_emotion_with_a_direction_table_for_bfm(happy, emotion_dirs):
    arrays = demo_model.build_demo_face_arrays(resolution=12)
    del arrays["exNames"]
    bfm = model_module.MorphableModel.from_mat_arrays(arrays, name="BFM_model_front")
    sequence = coefficients.FaceCoefficients.neutral(2)
    node = emotion_nodes.ApplyEmotion()
    with pytest.raises(base.NodeInputError, match=r"^Apply Emotion: BFM_model_front has no named expressions.*fit_emotion_directions"):
        node.execute(coefficients=sequence, emotion=happy, face_model=bfm,
                     directions=emotion_nodes.FACE_MODEL_DIRECTIONS, ramp_in_frames=0)
    table = directions.EmotionDirections(torch.randn(8, 64) * torch.arange(8).clamp(max=1)[:, None], torch.zeros(64), "t")
    table.save(emotion_dirs["models"] / "talkingface" / "emotion_directions_test.safetensors", face_model="BFM_model_front")
    choices = emotion_nodes.ApplyEmotion.INPUT_TYPES()["required"]["directions"][0]
    assert "emotion_directions_test.safetensors" in choices
    (result,) = node.execute(coefficients=sequence, emotion=happy, face_model=bfm,
                             directions="emotion_directions_test.safetensors", ramp_in_frames=0)["result"]
    assert torch.allclose(result.expression, table.offset(happy).expand(2, -1))
    with pytest.raises(base.NodeInputError, match="^Apply Emotion: .*face model"):
        node.execute(coefficients=coefficients.FaceCoefficients.neutral(1, coefficients.CoefficientDims(80, 10, 80)),
                     emotion=happy, face_model=bfm, directions=emotion_nodes.FACE_MODEL_DIRECTIONS, ramp_in_frames=0)


def test_emotion_workflow_runs(emotion_dirs):
    for asset in (PACK_ROOT / "tests" / "assets").iterdir():
        shutil.copy(asset, emotion_dirs["input"])
    recorded = run_workflow(WORKFLOW, MAPPINGS)
    saved = next(outputs["images"] for outputs in recorded.values() if outputs["images"].shape[2] > 256)
    assert saved.shape == (1, 256, 3 * 256, 3)
    fitted, emoting = saved[0, :, 256:512], saved[0, :, 512:]
    assert (fitted - emoting).abs().max() > 0.05  # the emotion changed the rendered face
