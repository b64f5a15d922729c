"""Emotion prompts: presets, zero-shot anchor weights, blending, intensity, bad input."""
import math

import pytest
import torch
from packloader import pack_import
from test_emotion_clip import tiny_clip

clip_text = pack_import("pipelines.emotion.clip_text")
emotion = pack_import("pipelines.emotion.emotion")
errors = pack_import("pipelines.errors")


@pytest.fixture(scope="module")
def embed(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    tiny_clip.write_tiny_clip(root, seed=3)
    encoder = clip_text.load_open_clip_text_encoder(root / "clip" / tiny_clip.TINY_CLIP_FILE)
    return lambda prompts: clip_text.encode_cached(encoder, encoder.encode, prompts)


def encode(embed, prompt, **kwargs):
    return emotion.encode_text_emotion(embed, "open_clip:tiny", prompt, **kwargs)


def test_presets_and_anchors_cover_the_mead_emotions():
    assert set(emotion.EMOTION_PRESETS) == set(emotion.MEAD_EMOTIONS) == set(emotion.EMOTION_ANCHORS)
    counts = {len(phrasings) for phrasings in emotion.EMOTION_ANCHORS.values()}
    assert counts == {3}  # the same number per emotion, so no emotion gets more prior mass
    for name in emotion.MEAD_EMOTIONS:
        assert emotion.preset_prompt(name) in emotion.EMOTION_ANCHORS[name]
    with pytest.raises(errors.TalkingFaceError, match="unknown emotion preset 'furious'.*custom"):
        emotion.preset_prompt("furious")


def test_a_prompt_equal_to_an_anchor_gets_that_emotion(embed):
    for name in emotion.MEAD_EMOTIONS:
        for phrasing in emotion.EMOTION_ANCHORS[name]:
            result = encode(embed, phrasing)
            assert result.dominant_emotion == name, (phrasing, result.anchor_weights)
            assert float(result.anchor_weights.sum()) == pytest.approx(1.0, abs=1e-5)
            assert float(result.anchor_weights.min()) >= 0


def test_text_emotion_value(embed):
    result = encode(embed, "  a bit scared  ", intensity=0.5)
    assert result.prompt == "a bit scared" and result.intensity == 0.5
    assert result.encoder == "open_clip:tiny:32"
    assert result.embedding.shape == (32,) and float(result.embedding.norm()) == pytest.approx(1.0, abs=1e-5)
    assert torch.allclose(result.embedding, embed(("a bit scared",))[0])
    assert "," in emotion.describe_weights(result)


def test_zero_shot_weights_follow_similarity():
    phrasings = torch.nn.functional.normalize(torch.randn(24, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    # Halfway between a "sad" phrasing and a "neutral" one lands between sad and neutral.
    mixed = torch.nn.functional.normalize(phrasings[0] + phrasings[18], dim=-1)
    weights = emotion.zero_shot_weights(mixed, phrasings)
    top_two = set(weights.argsort(descending=True)[:2].tolist())
    assert top_two == {0, emotion.MEAD_EMOTIONS.index("sad")}
    sharper = emotion.zero_shot_weights(phrasings[5], phrasings, temperature=0.01)
    softer = emotion.zero_shot_weights(phrasings[5], phrasings, temperature=1.0)
    assert sharper.max() > softer.max()


def test_blending_two_prompts(embed):
    first, second = encode(embed, "a happy face"), encode(embed, "a sad face")
    at_start = encode(embed, "a happy face", second_prompt="a sad face", blend=1e-9)
    at_end = encode(embed, "a happy face", second_prompt="a sad face", blend=1.0)
    assert torch.allclose(at_start.embedding, first.embedding, atol=1e-5)
    assert torch.allclose(at_end.embedding, second.embedding, atol=1e-5)
    assert torch.allclose(at_end.anchor_weights, second.anchor_weights, atol=1e-6)
    middle = encode(embed, "a happy face", second_prompt="a sad face", blend=0.5)
    assert torch.allclose(middle.anchor_weights, (first.anchor_weights + second.anchor_weights) / 2, atol=1e-6)
    assert float(middle.embedding.norm()) == pytest.approx(1.0, abs=1e-5)
    # The slerp midpoint is equally far from both ends.
    assert float(middle.embedding @ first.embedding) == pytest.approx(float(middle.embedding @ second.embedding), abs=1e-5)
    assert "a happy face" in middle.prompt and "a sad face" in middle.prompt


def test_slerp():
    x, y = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    half = emotion.slerp(x, y, 0.5)
    assert torch.allclose(half, torch.tensor([1.0, 1.0]) / math.sqrt(2))
    third = emotion.slerp(x, y, 1 / 3)
    assert float(torch.atan2(third[1], third[0])) == pytest.approx(math.pi / 6, abs=1e-5)
    assert torch.allclose(emotion.slerp(x, x, 0.3), x)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompt": ""}, "prompt is empty"),
        ({"prompt": "   \n"}, "prompt is empty"),
        ({"prompt": "happy", "intensity": -0.1}, "intensity must be between 0"),
        ({"prompt": "happy", "intensity": 2.5}, "intensity must be between 0"),
        ({"prompt": "happy", "intensity": float("nan")}, "intensity must be between 0"),
        ({"prompt": "happy", "blend": 0.5}, "second prompt is empty"),
        ({"prompt": "happy", "second_prompt": "sad", "blend": 1.5}, "blend must be between 0"),
    ],
)
def test_bad_input(embed, kwargs, message):
    prompt = kwargs.pop("prompt")
    with pytest.raises(errors.TalkingFaceError, match=message):
        encode(embed, prompt, **kwargs)
