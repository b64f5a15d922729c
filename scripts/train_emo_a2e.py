"""Train Emo-A2E (speech + text emotion → 3DMM expression) with HF accelerate.

    # clips: one .safetensors per clip (audio, expression, neutral; emotion, level, speaker, fps in
    # the metadata: see pipelines/training/emo_a2e.py), any text encoder by factory:
    python -m scripts.train_emo_a2e --train DIR --validation DIR --encoder-factory pkg.module:make --encoder-arg X --out runs/emo
    # the learning check (~9 min on one shared CPU thread): synthetic clips of the demo face, 6 held-out
    # speakers, hashed-prompt encoder:
    python -m scripts.train_emo_a2e --synthetic-speakers 24 --validation-speakers 6 --clips-per-speaker 10 \
        --clip-seconds 4 --steps 1500 --validate-every 250 --batch-size 16 --width 96 --heads 4 --layers 2 \
        --feedforward 256 --target-frames 24 --audio-channels 96 96 --dropout 0 --learning-rate 1e-3 \
        --out runs/emo_check --threads 1
    # write synthetic clips to disk instead of training:
    python -m scripts.train_emo_a2e --synthetic-speakers 24 --write-clips data/emo_synthetic
    # several GPUs / mixed precision: accelerate launch -m scripts.train_emo_a2e ...
    # running again with the same --out continues from its training_state/

``--encoder-factory module:function`` names a callable returning an object with ``name`` (a
string) and ``encode(prompts) -> [N, D]`` (:class:`pipelines.emotion.emotion.EmotionTextEncoder`), called
with the ``--encoder-arg`` strings; without it a frozen random embedding per prompt is used
(``--emotion-dim``), which only the learning check should use: its checkpoints accept only
TALK_EMOTION values from that same encoder. Writes ``best.safetensors`` and ``last.safetensors``
(for the Load Emo-A2E Model node: copy one into ComfyUI/models/talkingface/). The last line printed
is a JSON summary: validation-window L1 of the model and the baselines (speaker's neutral face,
emotion mean), and on whole held-out clips the expression L1 (also with the wrong emotion prompt)
and the lip/jaw landmark error.
"""
from __future__ import annotations

import argparse
import importlib
import json
import time

import torch

from pipelines.audio.emo_a2e import EmoA2EConfig
from pipelines.emotion.emotion import emotion_encoder_id
from pipelines.morphable.demo_model import demo_face_model
from pipelines.training.emo_a2e import (
    check_clips,
    emotion_mean_offsets,
    load_emotion_clip,
    save_emotion_clip,
    train_emo_a2e,
)
from pipelines.training.emo_synthetic import HashedPromptEncoder, synthetic_emotion_clips
from pipelines.training.loop import (
    TRAIN_OPTIONS,
    TrainConfig,
    add_data_options,
    add_field_options,
    add_run_options,
    fields_from_options,
    last_validation,
    training_clips,
)

VALIDATION_SEED = 1_000_000
MODEL_OPTIONS = ("target_frames", "width", "heads", "layers", "feedforward", "audio_channels", "dropout")


def make_encoder(factory: str | None, arguments: list[str], dim: int):
    if not factory:
        return HashedPromptEncoder(dim)
    module_name, _, function_name = factory.partition(":")
    if not function_name:
        raise SystemExit(f"--encoder-factory must be module:function, got '{factory}'")
    return getattr(importlib.import_module(module_name), function_name)(*arguments)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    data = add_data_options(parser, 4.0, "folder of validation clips (other speakers)")
    data.add_argument("--synthetic-speakers", type=int, default=0, help="make synthetic clips of this many speakers")
    data.add_argument("--validation-speakers", type=int, default=6, help="held-out synthetic speakers")
    data.add_argument("--clips-per-speaker", type=int, default=10)
    encoder = parser.add_argument_group("text encoder")
    encoder.add_argument("--encoder-factory", help="module:function returning an EmotionTextEncoder")
    encoder.add_argument("--encoder-arg", action="append", default=[], help="argument for the factory (repeatable)")
    encoder.add_argument("--emotion-dim", type=int, default=64, help="embedding size of the hashed-prompt encoder")
    add_field_options(parser.add_argument_group("model"), EmoA2EConfig(encoder="-"), MODEL_OPTIONS)
    add_field_options(parser.add_argument_group("training"), TrainConfig(), TRAIN_OPTIONS)
    add_run_options(parser)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    started = time.time()
    face = demo_face_model()
    synthetic = (lambda: (
        synthetic_emotion_clips(face, args.synthetic_speakers, args.clips_per_speaker, args.clip_seconds, 0),
        synthetic_emotion_clips(face, args.validation_speakers, args.clips_per_speaker, args.clip_seconds,
                                VALIDATION_SEED),
    )) if args.synthetic_speakers else None
    clips = training_clips(parser, args, synthetic, "--synthetic-speakers N", load_emotion_clip,
                           save_emotion_clip)
    if clips is None:
        return
    train, validation = clips
    text_encoder = make_encoder(args.encoder_factory, args.encoder_arg, args.emotion_dim)
    emotion_dim = int(text_encoder.encode(["neutral"]).shape[-1])
    encoder_id = emotion_encoder_id(text_encoder.name, emotion_dim)
    data_seconds = time.time() - started

    model_config = EmoA2EConfig(
        expression_dim=train[0].expression.shape[1], emotion_dim=emotion_dim, encoder=encoder_id,
        **fields_from_options(args, MODEL_OPTIONS),
    )
    train_config = TrainConfig(**fields_from_options(args, TRAIN_OPTIONS))
    started = time.time()
    model, history = train_emo_a2e(model_config, train, validation, text_encoder, train_config, args.out)
    train_seconds = time.time() - started
    step, final = last_validation(history, args.out)
    offsets = emotion_mean_offsets(train)
    is_demo_face = train[0].expression.shape[1] == face.dims.expression and train[0].identity is not None
    clip_check = check_clips(model.cpu(), validation, text_encoder, offsets, face if is_demo_face else None)

    def rounded(value):
        return None if value is None else round(value, 5)

    print(json.dumps({
        "steps": step,
        "train_clips": len(train),
        "validation_clips": len(validation),
        "validation_speakers": len({clip.speaker for clip in validation}),
        "encoder": encoder_id,
        "window_model_l1": rounded(final.model_l1),
        "window_neutral_l1": rounded(final.neutral_l1),
        "window_emotion_mean_l1": rounded(final.emotion_mean_l1),
        "clip_model_l1": rounded(clip_check.model_l1),
        "clip_neutral_l1": rounded(clip_check.neutral_l1),
        "clip_emotion_mean_l1": rounded(clip_check.emotion_mean_l1),
        "clip_wrong_emotion_l1": rounded(clip_check.wrong_emotion_l1),
        "clip_model_mouth_px": rounded(clip_check.model_mouth_px),
        "clip_neutral_mouth_px": rounded(clip_check.neutral_mouth_px),
        "clip_emotion_mean_mouth_px": rounded(clip_check.emotion_mean_mouth_px),
        "beats_neutral": clip_check.model_l1 < clip_check.neutral_l1,
        "beats_emotion_mean": clip_check.model_l1 < clip_check.emotion_mean_l1,
        "data_seconds": round(data_seconds, 1),
        "train_seconds": round(train_seconds, 1),
    }))


if __name__ == "__main__":
    main()
