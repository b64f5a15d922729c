"""Train the lip-sync dubbing model (landmark diffusion with TalkFormer) with HF accelerate.

    # stage 1, on ground-truth landmarks: synthetic talking clips, or preprocessed real videos
    python -m scripts.train_dubbing --synthetic 200 --out runs/dub
    python -m scripts.train_dubbing --shards data/shards --held-out-shards data/held_out --out runs/dub
    # stage 2, jointly with the audio → landmark model (clips with audio: synthetic ones, or shards of
    # video files with a sound track; silent videos in the shards are left out of this stage)
    python -m scripts.train_dubbing --synthetic 200 --init runs/dub/best.safetensors \\
        --landmark-model runs/audio/best.safetensors --out runs/dub_joint
    python -m scripts.train_dubbing --shards data/shards --held-out-shards data/held_out \\
        --init runs/dub/best.safetensors --landmark-model runs/audio/best.safetensors --out runs/dub_joint
    # several GPUs / mixed precision: accelerate launch -m scripts.train_dubbing ...

Writes ``best.safetensors`` and ``last.safetensors`` (for Load Dubbing Model: copy one into
ComfyUI/models/talkingface/); a joint run also writes ``best_landmarks.safetensors`` /
``last_landmarks.safetensors``, the fine-tuned landmark model for Load Audio-to-Motion Model. Running
again with the same ``--out`` continues the run exactly. The last line is a JSON summary.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from pipelines.audio.landmark_model import load_landmark_model
from pipelines.generator.dubbing import DubbingConfig, DubbingDenoiser, load_dubbing
from pipelines.generator.vae import DiffusersVAECodec, load_vae
from pipelines.morphable.demo_model import demo_face_model
from pipelines.training.dubbing import (
    MOUTH_WEIGHT,
    clips_with_sound,
    dubbing_train_config,
    shard_clips,
    synthetic_dubbing_clips,
    train_dubbing,
    window_frames,
)
from pipelines.training.loop import (
    TRAIN_OPTIONS,
    add_field_options,
    add_run_options,
    fields_from_options,
    last_validation,
)
from pipelines.training.video_shards import VideoFaceShards

MODEL_OPTIONS = ("image_size", "base_channels", "channel_multipliers", "attention_resolutions", "attention_head_channels",
                 "reference_base_channels", "reference_frames", "token_width", "coordinate_frequencies", "norm_groups",
                 "prediction_type", "space", "fps")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    data = parser.add_argument_group("data")
    data.add_argument("--synthetic", type=int, default=0, help="train on this many synthetic talking clips")
    data.add_argument("--synthetic-validation", type=int, default=4)
    data.add_argument("--clip-seconds", type=float, default=6.0, help="length of each synthetic clip")
    data.add_argument("--shards", type=Path,
                      help="preprocess_videos output folder (joint training reads the videos with a sound track)")
    data.add_argument("--held-out-shards", type=Path, help="preprocess_videos folder of validation videos")
    model_group = parser.add_argument_group("model")
    add_field_options(model_group, DubbingConfig(), MODEL_OPTIONS)
    model_group.add_argument("--reference-base", action=argparse.BooleanOptionalAction, default=False,
                             help="predict the frame as a correction of the nearest reference frame warped onto the "
                                  "target landmarks (needs prediction type 'sample'; what the learning check trains)")
    model_group.add_argument("--init", type=Path, help="start from this dubbing checkpoint (its config wins)")
    model_group.add_argument("--landmark-model", type=Path, help="train jointly with this audio-to-landmark checkpoint")
    model_group.add_argument("--vae", type=Path, help="the SD1.5 VAE file (latent mode)")
    training = parser.add_argument_group("training")
    add_field_options(training, dubbing_train_config(), TRAIN_OPTIONS)
    training.add_argument("--landmark-drop", type=float, default=0.1, help="fraction of frames trained without landmarks")
    training.add_argument("--landmark-weight", type=float, default=1.0, help="weight of the landmark model's own loss (joint)")
    training.add_argument("--mouth-weight", type=float, default=MOUTH_WEIGHT,
                          help="extra weight of the mouth and jaw region in the diffusion loss")
    add_run_options(parser)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.out is None:
        parser.error("--out is required")

    if args.init:
        denoiser = load_dubbing(args.init).train()
    else:
        denoiser = DubbingDenoiser(DubbingConfig(**fields_from_options(args, MODEL_OPTIONS), reference_base=args.reference_base))
    config = denoiser.config
    vae = None
    if config.latent:
        if args.vae is None:
            parser.error("a latent-mode model needs --vae (the SD1.5 VAE file it works on)")
        vae = DiffusersVAECodec(load_vae(args.vae, config.vae), name=args.vae.name)
    landmark_model = load_landmark_model(args.landmark_model).train() if args.landmark_model else None
    started = time.time()
    if args.synthetic:
        face = demo_face_model()
        train = synthetic_dubbing_clips(face, args.synthetic, args.clip_seconds, config.pixel_size, seed=0, fps=config.fps)
        validation = synthetic_dubbing_clips(face, args.synthetic_validation, args.clip_seconds, config.pixel_size, seed=1,
                                             fps=config.fps)
    elif args.shards and args.held_out_shards:
        min_frames = window_frames(None if landmark_model is None else landmark_model.config)
        train = shard_clips(VideoFaceShards(args.shards, config.pixel_size), min_frames)
        validation = shard_clips(VideoFaceShards(args.held_out_shards, config.pixel_size), min_frames)
        for folder, clips in ((args.shards, train), (args.held_out_shards, validation)):
            if not clips:
                parser.error(f"no video in {folder} has {min_frames} consecutive frames with a face (what a training "
                             "window needs): preprocess longer videos")
        if landmark_model is not None:
            before = len(train) + len(validation)
            train, validation = clips_with_sound(train), clips_with_sound(validation)
            if len(train) + len(validation) < before:
                print(f"{before - len(train) - len(validation)} clip(s) without sound left out of joint training", flush=True)
    else:
        parser.error("give --synthetic N, or --shards and --held-out-shards")
    data_seconds = time.time() - started
    train_config = dubbing_train_config(**fields_from_options(args, TRAIN_OPTIONS))
    started = time.time()
    model, history = train_dubbing(denoiser, train, validation, train_config, args.out, landmark_model, vae,
                                   args.landmark_drop, args.landmark_weight, args.mouth_weight)
    step, final = last_validation(history, args.out)
    print(json.dumps({
        "steps": step, "train_clips": len(train), "validation_clips": len(validation),
        "joint": landmark_model is not None,
        "validation_diffusion_loss": round(final.model_l1, 5),
        "validation_diffusion_loss_without_landmarks": round(final.no_landmarks, 5),
        "landmark_l1": None if final.landmark_l1 != final.landmark_l1 else round(final.landmark_l1, 5),
        "data_seconds": round(data_seconds, 1), "train_seconds": round(time.time() - started, 1),
    }))


if __name__ == "__main__":
    main()
