"""CLIP text encoders: a tiny open_clip model saved in the users' layouts and loaded back, checked
against open_clip's own CLIP; a stand-in shaped like ComfyUI's CLIP; clear errors for wrong files."""
import json
import sys

import pytest
import torch
from packloader import PACK_ROOT, pack_import
from safetensors.torch import save_file

clip_text = pack_import("pipelines.emotion.clip_text")
errors = pack_import("pipelines.errors")


def tiny_clip_module():
    sys.path.insert(0, str(PACK_ROOT))
    try:
        from scripts import tiny_clip
    finally:
        sys.path.remove(str(PACK_ROOT))
    return tiny_clip


tiny_clip = tiny_clip_module()
PROMPTS = ["a happy face", "an angry face", "quietly amused"]


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    tiny_clip.write_tiny_clip(root)
    return root


@pytest.fixture(scope="module")
def tiny_encoder(tiny_root):
    return clip_text.load_open_clip_text_encoder(tiny_root / "clip" / tiny_clip.TINY_CLIP_FILE)


def reference_embeddings(prompts):
    """open_clip's own full CLIP (image tower included) on the same weights and tokenizer."""
    import open_clip

    model = open_clip.model.CLIP(**tiny_clip.TINY_CLIP_CONFIG)
    model.load_state_dict({k: v.float() for k, v in tiny_clip.tiny_clip_state_dict().items()})
    tokens = open_clip.tokenizer.SimpleTokenizer(context_length=77)(prompts)
    with torch.no_grad():
        return model.eval().encode_text(tokens, normalize=True)


def test_file_with_config_beside_it_matches_open_clip(tiny_encoder):
    embeddings = tiny_encoder.encode(PROMPTS)
    assert embeddings.shape == (3, tiny_clip.TINY_CLIP_CONFIG["embed_dim"])
    assert torch.allclose(embeddings.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(embeddings, reference_embeddings(PROMPTS), atol=1e-5)
    assert tiny_encoder.name == f"open_clip:{tiny_clip.TINY_CLIP_NAME}"
    assert not any("visual" in key for key in tiny_encoder.state_dict())  # the image tower is never built


def test_local_dir_folder_and_its_weights_file_load_the_same(tiny_root, tiny_encoder):
    folder = tiny_root / "clip" / tiny_clip.TINY_CLIP_DIR
    expected = tiny_encoder.encode(PROMPTS)
    for source in (folder, f"local-dir:{folder}", folder / "open_clip_model.safetensors"):
        encoder = clip_text.load_open_clip_text_encoder(source)
        assert torch.allclose(encoder.encode(PROMPTS), expected, atol=1e-6), source


def test_pickled_checkpoint_loads_with_weights_only(tiny_root, tiny_encoder, tmp_path):
    state = {"state_dict": {f"module.{k}": v for k, v in tiny_clip.tiny_clip_state_dict().items()}}
    weights = tmp_path / "tiny.bin"
    torch.save(state, weights)
    (tmp_path / "tiny.json").write_text((tiny_root / "clip" / "talkingface_tiny_clip.json").read_text())
    encoder = clip_text.load_open_clip_text_encoder(weights)
    assert torch.allclose(encoder.encode(PROMPTS), tiny_encoder.encode(PROMPTS), atol=1e-6)


@pytest.fixture
def registered_tiny_config(tmp_path):
    """The tiny config registered under a name in this process, as open_clip.add_model_config does."""
    import open_clip

    config = tmp_path / "TalkingFaceTinyTest.json"
    config.write_text(json.dumps(tiny_clip.TINY_CLIP_CONFIG))
    open_clip.add_model_config(config)
    weights = tmp_path / "bare.safetensors"  # no config beside it
    save_file(tiny_clip.tiny_clip_state_dict(), str(weights))
    yield weights
    open_clip.factory._MODEL_CONFIG_PATHS.remove(config)
    open_clip.factory._MODEL_CONFIGS.pop("TalkingFaceTinyTest", None)


def test_model_name_and_auto_match_a_registered_config(registered_tiny_config, tiny_encoder):
    named = clip_text.load_open_clip_text_encoder(registered_tiny_config, "TalkingFaceTinyTest")
    assert named.name == "open_clip:TalkingFaceTinyTest"
    assert torch.allclose(named.encode(PROMPTS), tiny_encoder.encode(PROMPTS), atol=1e-6)
    assert clip_text.load_open_clip_text_encoder(registered_tiny_config).model_name == "TalkingFaceTinyTest"
    with pytest.raises(errors.ModelFileError, match=r"does not fit open_clip model 'ViT-B-32'.*shape mismatch.*Try model_name TalkingFaceTinyTest"):
        clip_text.load_open_clip_text_encoder(registered_tiny_config, "ViT-B-32")


def test_auto_without_config_or_match_says_what_to_do(tmp_path):
    weights = tmp_path / "bare.safetensors"
    save_file(tiny_clip.tiny_clip_state_dict(), str(weights))
    with pytest.raises(errors.ModelFileError, match="no built-in open_clip model matches.*bare.json"):
        clip_text.load_open_clip_text_encoder(weights)


def test_wrong_files_give_clear_errors(tmp_path):
    other = tmp_path / "generator.safetensors"
    save_file({"encoder.conv.weight": torch.zeros(2, 2)}, str(other))
    with pytest.raises(errors.ModelFileError, match="not an open_clip CLIP checkpoint: expected keys token_embedding"):
        clip_text.load_open_clip_text_encoder(other, "ViT-B-32")
    hf = tmp_path / "clip_l.safetensors"
    save_file({clip_text.HF_TEXT_KEY: torch.zeros(2, 2)}, str(hf))
    with pytest.raises(errors.ModelFileError, match="Hugging Face transformers CLIP text model.*'clip' input"):
        clip_text.load_open_clip_text_encoder(hf)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"not a safetensors file")
    with pytest.raises(errors.ModelFileError, match="could not be read"):
        clip_text.load_open_clip_text_encoder(corrupt)
    with pytest.raises(errors.ModelFileError, match="not found.*models/clip"):
        clip_text.load_open_clip_text_encoder(tmp_path / "missing.safetensors")
    with pytest.raises(errors.ModelFileError, match="without open_clip_config.json"):
        clip_text.load_open_clip_text_encoder(tmp_path)


def test_names_that_need_a_download_are_refused(tiny_root):
    weights = tiny_root / "clip" / tiny_clip.TINY_CLIP_FILE
    with pytest.raises(errors.ModelFileError, match="never downloads"):
        clip_text.load_open_clip_text_encoder(weights, "hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K")
    with pytest.raises(errors.ModelFileError, match="not an open_clip model name"):
        clip_text.load_open_clip_text_encoder(weights, "ViT-Nonexistent")
    with pytest.raises(errors.ModelFileError, match="cannot be loaded offline"):
        clip_text.load_open_clip_text_encoder(weights, "xlm-roberta-base-ViT-B-32")


class SD1ClipModel:
    """Named like ComfyUI's cond_stage_model for SD1.5 (comfy/sd1_clip.py)."""


class StandInComfyCLIP:
    """Shaped like comfy.sd.CLIP: tokenize(text) → {"l": [[(token, weight), …]]};
    encode_from_tokens(tokens, return_pooled=True) → (cond [1, 77, W], pooled [1, D])."""

    def __init__(self, encoder, pooled=True):
        self.encoder, self.pooled = encoder, pooled
        self.cond_stage_model = SD1ClipModel()
        self.calls = 0

    def tokenize(self, text, return_word_ids=False, **kwargs):
        tokens = self.encoder.tokenizer([text])[0].tolist()
        return {"l": [[(token, 1.0) for token in tokens]]}

    def encode_from_tokens(self, tokens, return_pooled=False, return_dict=False):
        self.calls += 1
        ids = torch.tensor([[token for token, _ in tokens["l"][0]]])
        with torch.no_grad():
            pooled = self.encoder.tower(ids) * 3.0  # ComfyUI's pooled output is not normalised
        cond = torch.zeros(1, ids.shape[1], self.encoder.tower.width)
        return (cond, pooled if self.pooled else None) if return_pooled else cond


def test_comfy_clip_gives_unit_norm_pooled_embeddings(tiny_encoder):
    encoder = clip_text.ComfyClipTextEncoder(StandInComfyCLIP(tiny_encoder))
    assert encoder.name == "comfy:SD1ClipModel"
    assert torch.allclose(encoder.encode(PROMPTS), tiny_encoder.encode(PROMPTS), atol=1e-5)


def test_comfy_clip_errors():
    with pytest.raises(errors.TalkingFaceError, match="not a ComfyUI CLIP"):
        clip_text.ComfyClipTextEncoder(object())


def test_comfy_clip_without_pooled_output(tiny_encoder):
    encoder = clip_text.ComfyClipTextEncoder(StandInComfyCLIP(tiny_encoder, pooled=False))
    with pytest.raises(errors.TalkingFaceError, match="no pooled embedding"):
        encoder.encode(["happy"])


def test_encodings_are_cached_per_encoder_object(tiny_encoder):
    clip = StandInComfyCLIP(tiny_encoder)
    encoder = clip_text.ComfyClipTextEncoder(clip)
    first = clip_text.encode_cached(clip, encoder.encode, ("a", "b"))
    again = clip_text.encode_cached(clip, encoder.encode, ["a", "b"])
    assert first is again and clip.calls == 2
    other = StandInComfyCLIP(tiny_encoder)
    clip_text.encode_cached(other, clip_text.ComfyClipTextEncoder(other).encode, ("a", "b"))
    assert other.calls == 2
