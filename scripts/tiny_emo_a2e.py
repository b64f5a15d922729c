"""Tiny Emo-A2E checkpoint for tests and workflow checks.

    python -m scripts.tiny_emo_a2e DIR [--emotion-dim D --encoder-name NAME]   # DIR/talkingface/<tiny>.safetensors

The model is randomly initialised in the real format, for the demo face model's 64 expression
coefficients. It accepts TALK_EMOTION values only from the text encoder named ``encoder_name`` with
``emotion_dim``-d embeddings; by default those of the tiny CLIP of :mod:`scripts.tiny_clip` as the
emotion loader names it (``open_clip:<model name>``), so workflows chain Text Emotion into Audio to
Expression.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from pipelines.audio.emo_a2e import EmoA2EConfig, EmoA2ETransformer, save_emo_a2e
from pipelines.emotion.emotion import emotion_encoder_id
from pipelines.morphable.coefficients import BFM_DIMS
from scripts.tiny_clip import TINY_CLIP_CONFIG, TINY_CLIP_NAME

TINY_EMO_A2E_FILE = "emo_a2e.safetensors"  # the name the example workflows give the user's trained model
TINY_CLIP_ENCODER_NAME = f"open_clip:{TINY_CLIP_NAME}"
TINY_CLIP_EMOTION_DIM = TINY_CLIP_CONFIG["embed_dim"]


def tiny_emo_a2e_config(emotion_dim: int, encoder_name: str) -> EmoA2EConfig:
    return EmoA2EConfig(
        expression_dim=BFM_DIMS.expression, emotion_dim=emotion_dim,
        encoder=emotion_encoder_id(encoder_name, emotion_dim), target_frames=8, width=32,
        heads=2, layers=1, feedforward=64, dropout=0.0, audio_channels=(16,),
    )


def write_tiny_emo_a2e(
    models_root: Path, emotion_dim: int = TINY_CLIP_EMOTION_DIM, encoder_name: str = TINY_CLIP_ENCODER_NAME
) -> list[Path]:
    """Save the tiny Emo-A2E model to ``models_root/talkingface/`` and return its path."""
    torch.manual_seed(0)
    model = EmoA2ETransformer(tiny_emo_a2e_config(emotion_dim, encoder_name))
    # Small non-zero heads, so the tiny model's output depends on audio and emotion as a trained one's does.
    for head in (model.speech_head, model.emotion_head):
        torch.nn.init.normal_(head.weight, std=0.02)
    path = Path(models_root) / "talkingface" / TINY_EMO_A2E_FILE
    save_emo_a2e(model, path, {"note": "tiny, randomly initialised: for tests and workflow checks"})
    return [path]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="the models/ folder to fill")
    parser.add_argument("--emotion-dim", type=int, default=TINY_CLIP_EMOTION_DIM, help="embedding size of the text encoder")
    parser.add_argument("--encoder-name", default=TINY_CLIP_ENCODER_NAME, help="name of the text encoder")
    args = parser.parse_args()
    for path in write_tiny_emo_a2e(args.directory, args.emotion_dim, args.encoder_name):
        print(path)


if __name__ == "__main__":
    main()
