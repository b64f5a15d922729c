"""Write a tiny open_clip CLIP (random weights, the real BPE tokenizer) in the layouts users bring.

    python -m scripts.tiny_clip DIR

Writes ``DIR/clip/talkingface_tiny_clip.safetensors`` with its open_clip config beside it as
``talkingface_tiny_clip.json`` (how the pack's loader learns a custom architecture's name in any
process: no ``open_clip.add_model_config`` needed), and the same model in open_clip's ``local-dir``
layout under the folder name a Hugging Face download of ViT-B-32 has (what the example workflows
name), ``DIR/clip/CLIP-ViT-B-32-laion2B-s34B-b79K/{open_clip_config.json, open_clip_model.safetensors}``.
The checkpoint is a full open_clip ``CLIP`` state dict (text and image towers, logit scale).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

TINY_CLIP_NAME = "TalkingFace-tiny-CLIP"
TINY_CLIP_FILE = "talkingface_tiny_clip.safetensors"
TINY_CLIP_DIR = "CLIP-ViT-B-32-laion2B-s34B-b79K"  # the folder a Hugging Face download of ViT-B-32 gives
TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2},
}


def tiny_clip_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A randomly initialised open_clip ``CLIP`` of the tiny config, as a state dict (fp16 to keep it small)."""
    from open_clip.model import CLIP

    torch.manual_seed(seed)
    model = CLIP(**TINY_CLIP_CONFIG)
    return {key: value.detach().to(torch.float16).contiguous() for key, value in model.state_dict().items()}


def write_tiny_clip(models_root: Path, seed: int = 0) -> list[Path]:
    """Write the tiny CLIP under ``models_root/clip/`` (file + sidecar config, and a local-dir folder)."""
    folder = Path(models_root) / "clip"
    local_dir = folder / TINY_CLIP_DIR
    local_dir.mkdir(parents=True, exist_ok=True)
    state = tiny_clip_state_dict(seed)
    config = {"model_name": TINY_CLIP_NAME, "model_cfg": TINY_CLIP_CONFIG, "preprocess_cfg": {}}
    weights = folder / TINY_CLIP_FILE
    save_file(state, str(weights), metadata={"format": "pt"})
    sidecar = weights.with_suffix(".json")
    sidecar.write_text(json.dumps(config, indent=2))
    local_weights = local_dir / "open_clip_model.safetensors"
    save_file(state, str(local_weights), metadata={"format": "pt"})
    local_config = local_dir / "open_clip_config.json"
    local_config.write_text(json.dumps(config, indent=2))
    return [weights, sidecar, local_weights, local_config]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="the models/ folder to fill")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for path in write_tiny_clip(args.directory, args.seed):
        print(path)


if __name__ == "__main__":
    main()
