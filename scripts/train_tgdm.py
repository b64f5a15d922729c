"""Train a TGDM generator on synthetic faces made by the project, then evaluate it on held-out identities.

    python -m scripts.train_tgdm --out runs/tgdm [--steps N] [--time-limit SECONDS] ...
    accelerate launch -m scripts.train_tgdm --out runs/tgdm ...   (several GPUs or nodes)

Writes OUT/tgdm_ema.safetensors (load it with Load Generator: copy it into ComfyUI/models/talkingface/)
and OUT/training_state/ (safetensors and JSON; run the same command again to resume).

Your own talking-face videos, preprocessed by the face pipeline (`python -m scripts.preprocess_videos`):
    python -m scripts.train_tgdm --out runs/tgdm_real --data SHARDS --held-out-data HELD_OUT_SHARDS --image-size 256 ...

Latent mode (512² output on SD1.5 VAE latents; the VAE stays frozen):
    python -m scripts.train_tgdm --out runs/tgdm512 --space latent --image-size 512 \
        --vae ComfyUI/models/vae/vae-ft-mse-840000-ema-pruned.safetensors --attention 32,16 ...
``--image-size`` is always the size of the images; the denoiser works on image-size/8 latents. The last line printed is a JSON
object with held-out PSNR/SSIM of the generator and of the baselines (the render I_3d, the unchanged
source photo, the source warped onto the target geometry, plain and relit), on the whole crop, the
face, and what the warp cannot see. With --identity-token (a face-swap generator) it also holds the swap
between held-out people (pipelines/training/swap_evaluation.py): face PSNR/SSIM against the source
person with the target's motion, and identity retrieval, for the swap and its baselines.

The committed demo checkpoint (assets/tgdm_demo_64px.safetensors) was made with DEMO_COMMAND below.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from pipelines.generator.checkpoint import load_tgdm
from pipelines.generator.config import PREDICTION_TYPES, TGDMConfig
from pipelines.generator.sampler import SCHEDULERS, SamplerSettings
from pipelines.generator.vae import DiffusersVAECodec, load_vae
from pipelines.morphable.demo_model import demo_face_model
from pipelines.morphable.model import load_face_model
from pipelines.training.swap_evaluation import evaluate_swap
from pipelines.training.synthetic_faces import DESCRIPTOR_DIM, SyntheticFaceSettings, render_synthetic_views
from pipelines.training.tgdm import EMA_FILE, TGDMTrainer, TrainingSettings, with_coefficient_statistics
from pipelines.training.tgdm_evaluation import evaluate_generator, held_out_pairs
from pipelines.training.video_shards import VideoFaceShards

DEMO_COMMAND = (
    "python -m scripts.train_tgdm --out runs/tgdm_demo --image-size 64 --base-channels 16 --levels 1,2,2 "
    "--attention 32,16 --identities 160 --steps 4838 --batch-size 8 --lr 5e-4 "
    "--ema-decay 0.99 --checkpoint-every 200 --seed 0 --threads 1"
)
HELD_OUT_SEED = 10_000  # identities the training never sees


def tuple_of_ints(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part)


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="run folder (resumed if it holds a training state)")
    model = parser.add_argument_group("model")
    model.add_argument("--image-size", type=int, default=64, help="size of the images in and out (pixels)")
    model.add_argument("--space", choices=("pixel", "latent"), default="pixel",
                       help="latent: denoise the --vae's latents (for 512² output)")
    model.add_argument("--vae", type=Path, default=None, help="latent mode: the SD1.5 VAE file (.safetensors, either key layout)")
    model.add_argument("--vae-family", default="sd15", help="latent mode: the shipped VAE config used for --vae")
    model.add_argument("--base-channels", type=int, default=32)
    model.add_argument("--levels", type=tuple_of_ints, default=(1, 2, 2), help="channel multipliers per level")
    model.add_argument("--attention", type=tuple_of_ints, default=(32, 16), help="texture-attention resolutions")
    model.add_argument("--surface-frequencies", type=int, default=4, help="0 switches surface encodings off")
    model.add_argument("--prediction", choices=PREDICTION_TYPES, default=None,
                       help="default: sample (a correction of the warped source) in pixel space with the warp condition, "
                            "else epsilon")
    model.add_argument("--no-warp-condition", action="store_true",
                       help="the design before the warped-source condition (texture attention alone), for comparison")
    model.add_argument("--identity-token", action="store_true",
                       help="face-swap generator: an ArcFace-wide identity token from the source joins texture attention "
                            "(trained as same-identity reconstruction; evaluated also as a swap between held-out people)")
    model.add_argument("--init-from", type=Path, default=None,
                       help="start a new run from this TGDM checkpoint (its architecture and coefficient statistics; "
                            "--identity-token may add an identity token to it); the model options are then ignored")
    model.add_argument("--face-model", type=Path, default=None,
                       help="the 3DMM the --data shards were fitted with (BFM_model_front.mat); default: the demo face")
    data = parser.add_argument_group("data")
    data.add_argument("--identities", type=int, default=160)
    data.add_argument("--views", type=int, default=6, help="renders per identity")
    data.add_argument("--held-out", type=int, default=16, help="held-out identities for the evaluation (0: skip)")
    data.add_argument("--data", type=Path, default=None,
                      help="a shard folder from scripts.preprocess_videos: train on real videos instead of synthetic faces")
    data.add_argument("--held-out-data", type=Path, default=None,
                      help="with --data: a shard folder of videos the training never sees, for the evaluation")
    data.add_argument("--min-frame-gap", type=int, default=1,
                      help="with --data: source and target frames at least this many frames apart")
    data.add_argument("--in-memory", action="store_true", help="with --data: load all shards into memory")
    training = parser.add_argument_group("training")
    training.add_argument("--steps", type=int, default=20000)
    training.add_argument("--time-limit", type=float, default=None, help="stop after this many seconds")
    training.add_argument("--batch-size", type=int, default=16)
    training.add_argument("--lr", type=float, default=4e-4)
    training.add_argument("--ema-decay", type=float, default=0.995)
    training.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), default="no")
    training.add_argument("--checkpoint-every", type=int, default=500)
    training.add_argument("--seed", type=int, default=0)
    training.add_argument("--threads", type=int, default=0,
                          help="CPU threads for torch (0: torch's default); 1 is much faster on a CPU shared with other jobs")
    evaluation = parser.add_argument_group("evaluation")
    evaluation.add_argument("--sampler", choices=SCHEDULERS, default="ddim")
    evaluation.add_argument("--sample-steps", type=int, default=20)
    return parser.parse_args()


def default_prediction(args: argparse.Namespace) -> str:
    return "sample" if args.space == "pixel" and not args.no_warp_condition else "epsilon"


def shard_views(args: argparse.Namespace, folder: Path) -> VideoFaceShards:
    return VideoFaceShards(folder, image_size=args.image_size, min_frame_gap=args.min_frame_gap, in_memory=args.in_memory)


def main() -> None:
    args = parse_arguments()
    if args.threads:
        torch.set_num_threads(args.threads)
    vae = None
    size = args.image_size
    if args.space == "latent":
        if args.vae is None:
            raise SystemExit("--space latent needs --vae: the SD1.5 VAE file, e.g. ComfyUI/models/vae/vae-ft-mse-840000-ema-pruned.safetensors")
        device = "cuda" if torch.cuda.is_available() else "cpu"
        vae = DiffusersVAECodec(load_vae(args.vae, args.vae_family, device), batch_size=8, name=args.vae.name)
        size = args.image_size // vae.scale_factor
    config = TGDMConfig(
        image_size=size, base_channels=args.base_channels, channel_multipliers=args.levels,
        attention_resolutions=args.attention, source_base_channels=args.base_channels,
        surface_frequencies=args.surface_frequencies, prediction_type=args.prediction or default_prediction(args), space=args.space,
        vae=args.vae_family, warp_condition=not args.no_warp_condition,
        identity_dim=DESCRIPTOR_DIM if args.identity_token else 0,
        **({} if vae is None else {"latent_channels": vae.latent_channels, "vae_scale_factor": vae.scale_factor,
                                   "vae_scaling_factor": vae.scaling_factor}),
    )
    settings = TrainingSettings(
        steps=args.steps, batch_size=args.batch_size, learning_rate=args.lr, ema_decay=args.ema_decay,
        mixed_precision=args.mixed_precision, checkpoint_every=args.checkpoint_every, seed=args.seed,
    )
    faces = SyntheticFaceSettings(image_size=args.image_size, views_per_identity=args.views)
    face_model = demo_face_model() if args.face_model is None else load_face_model(args.face_model)
    started = time.monotonic()
    if args.data is not None:
        views = shard_views(args, args.data)
        print(f"{len(views)} frames of {views.video_count} videos from {args.data}", flush=True)
    else:
        views = render_synthetic_views(face_model, args.identities, faces, seed=args.seed)
        print(f"rendered {len(views)} training views in {time.monotonic() - started:.0f}s", flush=True)
    base = None
    if args.init_from is not None:
        base = load_tgdm(args.init_from)
        config = replace(base.config, identity_dim=DESCRIPTOR_DIM if args.identity_token else base.config.identity_dim)
    else:
        config = with_coefficient_statistics(config, views.coefficients)
    trainer = TGDMTrainer(config, settings, args.out, vae, face_model, base)
    parameters = sum(p.numel() for p in trainer.denoiser.parameters())
    print(f"{parameters / 1e6:.2f}M parameters, starting at step {trainer.step}", flush=True)
    trainer.train(views, args.time_limit, log=lambda line: print(line, flush=True))
    summary = {"step": trainer.step, "parameters": parameters, "checkpoint": str(args.out / EMA_FILE)}
    evaluate = args.held_out_data is not None if args.data is not None else args.held_out > 0
    if evaluate and trainer.accelerator.is_main_process:
        if args.data is not None:
            held_out = shard_views(args, args.held_out_data)
            pairs = held_out.evaluation_pairs()
        else:
            held_out = render_synthetic_views(face_model, args.held_out, faces, seed=HELD_OUT_SEED)
            pairs = held_out_pairs(held_out)
        model = load_tgdm(args.out / EMA_FILE)
        sampling = SamplerSettings(scheduler=args.sampler, steps=args.sample_steps, batch_size=32, chunk_size=32,
                                   same_noise=False)
        with torch.inference_mode():
            summary.update(evaluate_generator(model, held_out, sampling, vae, pairs, face_model))
            if args.identity_token and args.data is None:  # the swap truth needs the synthetic people
                summary.update(evaluate_swap(model, held_out, face_model, sampling))
        summary["held_out_pairs"] = len(pairs[0])
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
