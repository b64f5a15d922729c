"""Tiny Emo-A2E checkpoint for tests and workflow checks.

    python -m scripts.tiny_emo_a2e DIR --emotion-dim D --encoder IDENTITY   # DIR/talkingface/<tiny>.safetensors

The model is randomly initialised in the real format, for the demo face model's 64 expression
coefficients. It accepts TALK_EMOTION values only from the text encoder named by ``encoder`` with
``emotion_dim``-d embeddings: give the name and embedding size of the tiny CLIP that the tiny models
folder holds, so workflows chain Text Emotion into Audio to Expression.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from pipelines.audio.emo_a2e import EmoA2EConfig, EmoA2ETransformer, save_emo_a2e
from pipelines.morphable.coefficients import BFM_DIMS

TINY_EMO_A2E_FILE = "talkingface_emo_a2e_tiny.safetensors"


def tiny_emo_a2e_config(emotion_dim: int, encoder: str) -> EmoA2EConfig:
    return EmoA2EConfig(
        expression_dim=BFM_DIMS.expression, emotion_dim=emotion_dim, encoder=encoder, target_frames=8, width=32,
        heads=2, layers=1, feedforward=64, dropout=0.0, audio_channels=(16,),
    )


def write_tiny_emo_a2e(models_root: Path, emotion_dim: int, encoder: str) -> list[Path]:
    """Save the tiny Emo-A2E model to ``models_root/talkingface/`` and return its path."""
    torch.manual_seed(0)
    model = EmoA2ETransformer(tiny_emo_a2e_config(emotion_dim, encoder))
    # Small non-zero heads, so the tiny model's output depends on audio and emotion as a trained one's does.
    for head in (model.speech_head, model.emotion_head):
        torch.nn.init.normal_(head.weight, std=0.02)
    path = Path(models_root) / "talkingface" / TINY_EMO_A2E_FILE
    save_emo_a2e(model, path, {"note": "tiny, randomly initialised: for tests and workflow checks"})
    return [path]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="the models/ folder to fill")
    parser.add_argument("--emotion-dim", type=int, required=True, help="embedding size of the text encoder")
    parser.add_argument("--encoder", required=True, help="name of the text encoder (TALK_EMOTION's encoder)")
    args = parser.parse_args()
    for path in write_tiny_emo_a2e(args.directory, args.emotion_dim, args.encoder):
        print(path)


if __name__ == "__main__":
    main()
