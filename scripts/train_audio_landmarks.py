"""Train the audio-to-landmark model (landmark completion transformer) with HF accelerate.

    # clips: one .safetensors per clip (audio [N] at 16 kHz, landmarks [F, 68, 2] px, fps in the metadata)
    python -m scripts.train_audio_landmarks --train DIR --validation DIR --out runs/audio
    # or synthetic clips from the demo face (the learning check):
    python -m scripts.train_audio_landmarks --synthetic 60 --synthetic-validation 12 --steps 800 --out runs/check
    # write synthetic clips to disk instead of training:
    python -m scripts.train_audio_landmarks --synthetic 60 --write-clips data/synthetic
    # several GPUs / mixed precision: accelerate launch -m scripts.train_audio_landmarks ...

Writes ``best.safetensors`` and ``last.safetensors`` (loadable by the Load Audio-to-Motion Model
node: copy one into ComfyUI/models/talkingface/). The last line printed is a JSON summary with the
validation L1 of the model and of the two baselines (the speaker's mean reference mouth, the
training set's mean mouth), in units of the inter-ocular distance; with synthetic clips also the
whole chain (audio → landmarks → expression) against the true jaw_open / lip_pucker / smile weights.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from pipelines.audio.landmark_model import LandmarkModelConfig
from pipelines.morphable.demo_model import demo_face_model
from pipelines.training.audio_landmarks import check_expression_chain, load_clip, save_clip, train_landmark_model
from pipelines.training.audio_synthetic import MOUTH_DIRECTIONS, synthetic_clip
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

MODEL_OPTIONS = ("reference_sets", "target_frames", "width", "heads", "layers", "feedforward", "dropout")
LANDMARK_TRAIN_OPTIONS = (*TRAIN_OPTIONS, "portrait_references")


def synthetic_clips(count: int, seconds: float, first_seed: int) -> list:
    face = demo_face_model()
    return [synthetic_clip(face, seconds, seed=first_seed + k) for k in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    data = add_data_options(parser, 6.0, "folder of validation clips")
    data.add_argument("--synthetic", type=int, default=0, help="make this many synthetic training clips instead")
    data.add_argument("--synthetic-validation", type=int, default=12, help="synthetic validation clips (other seeds)")
    add_field_options(parser.add_argument_group("model"), LandmarkModelConfig(), MODEL_OPTIONS)
    add_field_options(parser.add_argument_group("training"), TrainConfig(), LANDMARK_TRAIN_OPTIONS)
    add_run_options(parser)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    started = time.time()
    synthetic = (lambda: (synthetic_clips(args.synthetic, args.clip_seconds, 0),
                          synthetic_clips(args.synthetic_validation, args.clip_seconds, 1_000_000))
                 ) if args.synthetic else None
    clips = training_clips(parser, args, synthetic, "--synthetic N", load_clip, save_clip)
    if clips is None:
        return
    train, validation = clips
    data_seconds = time.time() - started

    model_config = LandmarkModelConfig(**fields_from_options(args, MODEL_OPTIONS))
    train_config = TrainConfig(**fields_from_options(args, LANDMARK_TRAIN_OPTIONS))
    started = time.time()
    model, history = train_landmark_model(model_config, train, validation, train_config, args.out)
    step, final = last_validation(history, args.out)
    best = min(history, key=lambda item: item[1].model_l1)
    train_seconds = time.time() - started
    chain = {}
    if args.synthetic:
        check = check_expression_chain(model.cpu(), demo_face_model(), validation, MOUTH_DIRECTIONS)
        chain = {
            "expression_mae": {k: round(v, 4) for k, v in check.mean_abs_error.items()},
            "expression_constant_baseline_mae": {k: round(v, 4) for k, v in check.constant_baseline_error.items()},
            "expression_correlation": {k: round(v, 3) for k, v in check.correlation.items()},
            "expression_mae_from_true_landmarks": {k: round(v, 4) for k, v in check.true_landmarks_error.items()},
        }
    print(json.dumps({
        "steps": step,
        "train_clips": len(train),
        "validation_clips": len(validation),
        "model_l1": round(final.model_l1, 5),
        "best_model_l1": round(best[1].model_l1, 5),
        "best_step": best[0],
        "reference_mean_l1": round(final.reference_mean_l1, 5),
        "dataset_mean_l1": round(final.dataset_mean_l1, 5),
        "beats_baselines": final.model_l1 < min(final.reference_mean_l1, final.dataset_mean_l1),
        "data_seconds": round(data_seconds, 1),
        "train_seconds": round(train_seconds, 1),
        **chain,
    }))


if __name__ == "__main__":
    main()
