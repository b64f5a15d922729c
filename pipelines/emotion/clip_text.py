"""CLIP text encoders for emotion prompts: open_clip weights from local files, or a ComfyUI CLIP.

Both give unit-norm pooled text embeddings ``[n, D]`` for a list of prompts and a ``name`` that,
with ``D``, identifies the embedding space (``open_clip:ViT-B-32``, ``comfy:SD1ClipModel``).

open_clip checkpoints come in three layouts, all loaded without network access:

* a weights file (``.safetensors``, or ``.pt``/``.pth``/``.bin`` read with ``weights_only=True``)
  plus an open_clip model name such as ``ViT-B-32`` whose built-in config matches it;
* a weights file with a config next to it, ``<weights stem>.json``, holding open_clip's
  ``open_clip_config.json`` content (``{"model_cfg": {...}}``, optionally ``"model_name"``): this
  is how a custom architecture (the pack's tiny test CLIP, a fine-tune) is known in any process;
* a folder in open_clip's ``local-dir:`` layout: ``open_clip_config.json`` and the weights
  (``open_clip_model.safetensors``, ``open_clip_pytorch_model.bin``, …); choosing any weights file
  inside such a folder loads it the same way.

Only the text tower is built and loaded; the image tower of the checkpoint is never instantiated.
"""
from __future__ import annotations

import functools
import json
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoints import WeightMismatch
from ..errors import ModelFileError, TalkingFaceError

AUTO_MODEL_NAME = "auto"
LOCAL_DIR_CONFIG = "open_clip_config.json"
# open_clip's own preference when a local-dir folder holds several weight files.
LOCAL_DIR_WEIGHTS = (
    "open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth", "model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth",
)
WEIGHT_SUFFIXES = (".safetensors", ".sft", ".pt", ".pth", ".bin", ".ckpt")
CLIP_FOLDER_HINT = "ComfyUI/models/clip/ (or models/text_encoders/)"
# A Hugging Face transformers CLIP text model (what ComfyUI's clip_l.safetensors holds) and a full
# Stable Diffusion checkpoint: both are CLIPs, but not open_clip's layout.
HF_TEXT_KEY = "text_model.embeddings.token_embedding.weight"
SD_CHECKPOINT_KEY_PREFIXES = ("cond_stage_model.", "conditioner.embedders.")


def _unit_rows(embeddings: torch.Tensor, what: str) -> torch.Tensor:
    embeddings = embeddings.detach().float().cpu()
    norms = embeddings.norm(dim=-1, keepdim=True)
    if not torch.isfinite(embeddings).all() or (norms < 1e-12).any():
        raise TalkingFaceError(f"{what} returned a zero or non-finite text embedding; the text encoder's weights are broken")
    return embeddings / norms


# ---- open_clip ------------------------------------------------------------------------------
def _open_clip():
    try:
        import open_clip
        from open_clip.model import _build_text_tower
        from open_clip.tokenizer import SimpleTokenizer
    except ImportError as error:
        raise TalkingFaceError(
            "open_clip is not installed: run `pip install open_clip_torch` in ComfyUI's Python environment "
            "(or connect a ComfyUI CLIP to Text Emotion instead)"
        ) from error
    return open_clip, _build_text_tower, SimpleTokenizer


@functools.lru_cache(maxsize=4)
def _tokenizer(context_length: int, kwargs_json: str):
    _, _, simple_tokenizer = _open_clip()
    # The BPE vocabulary ships inside open_clip: nothing is downloaded.
    return simple_tokenizer(context_length=context_length, **json.loads(kwargs_json))


def _needs_download(model_cfg: dict[str, Any]) -> str | None:
    text_cfg = model_cfg.get("text_cfg", {})
    for key in ("hf_model_name", "hf_tokenizer_name"):
        if text_cfg.get(key):
            return f"its text tower uses the Hugging Face model '{text_cfg[key]}' ({key}), which open_clip downloads"
    return None


def _build_tower(model_cfg: dict[str, Any], device: torch.device | str) -> nn.Module:
    _, build_text_tower, _ = _open_clip()
    with torch.device(device):
        return build_text_tower(model_cfg["embed_dim"], dict(model_cfg["text_cfg"]), model_cfg.get("quick_gelu", False))


def _expected_shapes(model_cfg: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """The text tower's state-dict shapes for a config, from a weightless (meta-device) build."""
    return {key: tuple(value.shape) for key, value in _build_tower(model_cfg, "meta").state_dict().items()}


def text_tower_state(state: dict[str, torch.Tensor], file_name: str) -> dict[str, torch.Tensor]:
    """The text-tower part of an open_clip state dict, keyed like open_clip's ``TextTransformer``.

    open_clip's ``CLIP`` keeps the text tower's weights at the top level (``token_embedding.weight``,
    ``transformer.resblocks.*``, ``ln_final.*``, ``text_projection``); ``CustomTextCLIP`` keeps them
    under ``text.``. Anything else is not an open_clip CLIP checkpoint.
    """
    if "token_embedding.weight" in state:
        return {
            key: value for key, value in state.items()
            if not key.startswith(("visual.", "text.")) and key not in ("logit_scale", "logit_bias")
        }
    if "text.token_embedding.weight" in state:
        return {key[len("text."):]: value for key, value in state.items() if key.startswith("text.")}
    hint = ""
    if HF_TEXT_KEY in state or any(key.endswith("." + HF_TEXT_KEY) for key in state):
        hint = (
            " It is a Hugging Face transformers CLIP text model (like ComfyUI's clip_l.safetensors): load it with "
            "ComfyUI's Load CLIP (or a checkpoint loader) and connect that CLIP to Text Emotion's 'clip' input."
        )
    elif any(key.startswith(SD_CHECKPOINT_KEY_PREFIXES) for key in state):
        hint = (
            " It looks like a Stable Diffusion checkpoint: load it with Load Checkpoint and connect its CLIP output "
            "to Text Emotion's 'clip' input."
        )
    sample = sorted(state)[:5]
    raise ModelFileError(
        f"{file_name} is not an open_clip CLIP checkpoint: expected keys token_embedding.weight, positional_embedding, "
        f"transformer.resblocks.*, ln_final.*, text_projection (or the same under text.), found {sample}"
        f"{' …' if len(state) > 5 else ''}.{hint}"
    )


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors: safetensors, or a pickle read with ``weights_only=True`` (never arbitrary code)."""
    try:
        if path.suffix.lower() in (".safetensors", ".sft"):
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # safetensors, pickle and zip readers each raise their own types
        raise ModelFileError(
            f"{path.name} could not be read as a weights file ({type(error).__name__}: {error}). TorchScript "
            "archives (OpenAI's original ViT-*.pt) cannot be loaded safely: use an open_clip .safetensors or .bin"
        ) from error
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()) or not state:
        raise ModelFileError(f"{path.name} does not hold a state dict of tensors")
    if all(key.startswith("module.") for key in state):  # saved from DistributedDataParallel
        state = {key[len("module."):]: value for key, value in state.items()}
    return state


def _read_config_json(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ModelFileError(f"{path.name} is not a readable JSON config ({error})") from error
    model_cfg = config.get("model_cfg", config) if isinstance(config, dict) else None
    if not isinstance(model_cfg, dict) or not all(key in model_cfg for key in ("embed_dim", "text_cfg")):
        raise ModelFileError(
            f"{path.name} is not an open_clip config: expected {{\"model_cfg\": {{\"embed_dim\": …, \"text_cfg\": …, "
            "\"vision_cfg\": …}}}} as in open_clip's open_clip_config.json"
        )
    return config


def _local_dir_weights(folder: Path) -> Path:
    for name in LOCAL_DIR_WEIGHTS:
        if (folder / name).is_file():
            return folder / name
    candidates = sorted(p for p in folder.iterdir() if p.suffix.lower() in WEIGHT_SUFFIXES)
    if not candidates:
        raise ModelFileError(f"the open_clip folder {folder.name} has {LOCAL_DIR_CONFIG} but no weights file ({LOCAL_DIR_WEIGHTS[0]}): put the weights beside it in {CLIP_FOLDER_HINT}")
    return candidates[0]


def resolve_open_clip_files(path: str | Path) -> tuple[Path, Path | None]:
    """(weights file, config json or None) for a weights file or a ``local-dir`` folder."""
    path = Path(str(path).removeprefix("local-dir:"))
    if path.is_dir():
        config = path / LOCAL_DIR_CONFIG
        if not config.is_file():
            raise ModelFileError(f"{path.name} is a folder without {LOCAL_DIR_CONFIG}: it is not an open_clip local-dir model; pick its weights file in clip_name")
        return _local_dir_weights(path), config
    if not path.is_file():
        raise ModelFileError(f"CLIP weights '{path.name}' not found: put open_clip weights into {CLIP_FOLDER_HINT}")
    for config in (path.with_suffix(".json"), path.parent / LOCAL_DIR_CONFIG):
        if config.is_file():
            return path, config
    return path, None


def _config_summary(model_cfg: dict[str, Any]) -> tuple[int, int, int, int]:
    """(vocabulary, width, context length, layers) of a config's text tower (open_clip's defaults filled in)."""
    text_cfg = model_cfg.get("text_cfg", {})
    return (
        text_cfg.get("vocab_size", 49408), text_cfg.get("width", 512), text_cfg.get("context_length", 77),
        text_cfg.get("layers", 12),
    )


def _state_summary(shapes: dict[str, tuple[int, ...]]) -> tuple[int, int, int, int] | None:
    if "token_embedding.weight" not in shapes or "positional_embedding" not in shapes:
        return None
    vocab, width = shapes["token_embedding.weight"]
    layers = {key.split(".")[2] for key in shapes if key.startswith("transformer.resblocks.")}
    return vocab, width, shapes["positional_embedding"][0], len(layers)


def matching_model_names(tower_state: dict[str, torch.Tensor]) -> list[str]:
    """open_clip built-in model names whose text tower has exactly the checkpoint's keys and shapes."""
    open_clip, _, _ = _open_clip()
    shapes = {key: tuple(value.shape) for key, value in tower_state.items()}
    summary = _state_summary(shapes)
    names, exact = [], {}
    for name in open_clip.list_models():
        model_cfg = open_clip.get_model_config(name)
        # Sizes read off the config first: only the few candidates left are built (weightless) to compare.
        if model_cfg is None or _needs_download(model_cfg) or _config_summary(model_cfg) != summary:
            continue
        key = json.dumps([model_cfg["embed_dim"], model_cfg["text_cfg"], model_cfg.get("quick_gelu", False)], sort_keys=True)
        if key not in exact:
            try:
                exact[key] = _expected_shapes(model_cfg) == shapes
            except Exception:  # a config this open_clip version cannot build as a plain text tower
                exact[key] = False
        if exact[key]:
            names.append(name)
    return names


def _check_shapes(tower_state: dict[str, torch.Tensor], model_cfg: dict[str, Any], model_name: str, file_name: str) -> None:
    mismatch = WeightMismatch.between(_expected_shapes(model_cfg), tower_state)
    if not mismatch:
        return

    def listing(keys: list[str]) -> str:
        return f"{keys[:3]}{' …' if len(keys) > 3 else ''}"

    wrong = mismatch.shape_notes()
    problems = ["shape mismatch: " + ", ".join(wrong[:3]) + (" …" if len(wrong) > 3 else "")] if wrong else []
    problems += [f"{label} {listing(keys)}" for label, keys in (("missing", mismatch.missing), ("unexpected", mismatch.unexpected)) if keys]
    candidates = matching_model_names(tower_state)
    advice = f" Try model_name {', '.join(candidates[:6])}." if candidates else (
        f" No built-in open_clip model matches; put the model's open_clip config next to the weights as "
        f"{Path(file_name).stem}.json."
    )
    raise ModelFileError(f"{file_name} does not fit open_clip model '{model_name}': {'; '.join(problems)}.{advice}")


class OpenClipTextEncoder(nn.Module):
    """open_clip's text tower with its tokenizer: prompts to unit-norm pooled embeddings."""

    def __init__(self, tower: nn.Module, tokenizer, model_name: str) -> None:
        super().__init__()
        self.tower = tower
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.name = f"open_clip:{model_name}"

    @property
    def embed_dim(self) -> int:
        projection = self.tower.text_projection
        if projection is None:
            return self.tower.width
        return projection.out_features if isinstance(projection, nn.Linear) else projection.shape[1]

    @property
    def device(self) -> torch.device:
        return next(self.tower.parameters()).device

    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(prompts)).to(self.device)
        with torch.inference_mode():
            pooled = self.tower(tokens)
        if isinstance(pooled, tuple):  # towers configured with output_tokens return (pooled, tokens)
            pooled = pooled[0]
        return _unit_rows(pooled, self.name)


def load_open_clip_text_encoder(path: str | Path, model_name: str = AUTO_MODEL_NAME) -> OpenClipTextEncoder:
    """The text tower of an open_clip checkpoint (see the module docstring for the layouts).

    ``model_name`` is a built-in open_clip config name (``ViT-B-32``, ``ViT-L-14``, …) or ``auto``:
    the config next to the weights, else the one built-in config whose text tower matches the file.
    """
    open_clip, _, _ = _open_clip()
    model_name = (model_name or AUTO_MODEL_NAME).strip()
    if model_name.startswith("hf-hub:"):
        raise ModelFileError(
            f"'{model_name}' would be downloaded from the Hugging Face Hub; the pack never downloads. Download the "
            f"folder yourself into {CLIP_FOLDER_HINT} and choose its weights file (open_clip's local-dir layout)"
        )
    if model_name.startswith("local-dir:"):
        path, model_name = model_name, AUTO_MODEL_NAME
    weights, config_path = resolve_open_clip_files(path)
    state = text_tower_state(read_state_dict(weights), weights.name)
    if model_name != AUTO_MODEL_NAME:
        model_cfg = open_clip.get_model_config(model_name)
        if model_cfg is None:
            raise ModelFileError(
                f"'{model_name}' is not an open_clip model name (known: {', '.join(open_clip.list_models()[:12])} …). "
                f"For a custom architecture put its open_clip config next to the weights as {weights.stem}.json, "
                "and set model_name to auto"
            )
    elif config_path is not None:
        config = _read_config_json(config_path)
        model_cfg = config.get("model_cfg", config)
        model_name = str(config.get("model_name") or (weights.parent.name if config_path.name == LOCAL_DIR_CONFIG else weights.stem))
    else:
        candidates = matching_model_names(state)
        if len(candidates) != 1:
            found = f"its text tower matches {', '.join(candidates)}" if candidates else "no built-in open_clip model matches it"
            raise ModelFileError(
                f"model_name is auto but {weights.name} has no config next to it and {found}: type the open_clip model "
                f"name it was trained as (e.g. ViT-B-32), or put its open_clip config beside it as {weights.stem}.json"
            )
        model_name = candidates[0]
        model_cfg = open_clip.get_model_config(model_name)
    reason = _needs_download(model_cfg)
    if reason:
        raise ModelFileError(f"open_clip model '{model_name}' cannot be loaded offline: {reason}")
    _check_shapes(state, model_cfg, model_name, weights.name)
    tower = _build_tower(model_cfg, "meta")
    tower.load_state_dict({key: value.float() for key, value in state.items()}, strict=True, assign=True)
    if getattr(tower, "attn_mask", None) is not None:  # a non-persistent buffer: rebuild it off the meta device
        tower.attn_mask = tower.build_causal_mask()
    text_cfg = model_cfg["text_cfg"]
    tokenizer = _tokenizer(int(text_cfg.get("context_length", 77)), json.dumps(text_cfg.get("tokenizer_kwargs", {}), sort_keys=True))
    return OpenClipTextEncoder(tower.eval(), tokenizer, model_name)


# ---- ComfyUI CLIP ---------------------------------------------------------------------------
class ComfyClipTextEncoder:
    """A ComfyUI ``CLIP`` (``comfy.sd.CLIP``: from Load CLIP or a checkpoint loader): its pooled output."""

    def __init__(self, clip: Any) -> None:
        if not (callable(getattr(clip, "tokenize", None)) and callable(getattr(clip, "encode_from_tokens", None))):
            raise TalkingFaceError(
                f"the connected 'clip' ({type(clip).__name__}) is not a ComfyUI CLIP: connect the CLIP output of "
                "Load CLIP or Load Checkpoint"
            )
        self.clip = clip
        model = getattr(clip, "cond_stage_model", None)
        self.name = f"comfy:{type(model if model is not None else clip).__name__}"

    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        rows = []
        for prompt in prompts:
            _, pooled = self.clip.encode_from_tokens(self.clip.tokenize(prompt), return_pooled=True)
            if pooled is None:
                raise TalkingFaceError(
                    f"the connected text encoder ({self.name}) gives no pooled embedding (T5-only encoders have none): "
                    "connect a CLIP-L/CLIP-G text encoder, e.g. the CLIP of an SD1.5 or SDXL checkpoint"
                )
            rows.append(pooled.reshape(-1, pooled.shape[-1])[0])
        return _unit_rows(torch.stack(rows), self.name)


# Anchor embeddings are encoded once per encoder object and dropped with it.
_ENCODED_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def encode_cached(owner: Any, encode: Callable[[Sequence[str]], torch.Tensor], prompts: Sequence[str]) -> torch.Tensor:
    """``encode(prompts)`` remembered for the lifetime of ``owner`` (the loaded text encoder object)."""
    prompts = tuple(prompts)
    try:
        per_owner = _ENCODED_CACHE.setdefault(owner, {})
    except TypeError:  # an owner that cannot be weakly referenced is simply not cached
        return encode(prompts)
    if prompts not in per_owner:
        per_owner[prompts] = encode(prompts)
    return per_owner[prompts]
