"""Fine-tuning on one person's footage: how many steps until the fine-tuned generator beats its base
on held-out frames of that person.

    python -m bench.finetune [--frames 64] [--held-out 16] [--milestones 0,5,10,25,50,100,200,400] [--threads 1]

The footage is synthetic (pipelines/training/synthetic_faces.py): one person the bundled base generator
(``assets/tgdm_demo_64px.safetensors``, trained on 160 other synthetic people) never saw, ``--frames``
frames for training and ``--held-out`` other frames of the same person for the evaluation (source:
the first training frame, as a user's portrait would be; targets: the held-out frames). The base is
fine-tuned with Train Generator's defaults (pipelines/training/finetune.py: AdamW, learning rate 1e-4,
batch 8, EMA 0.995) by the same trainer, and its EMA weights are evaluated at each milestone with 20
DDIM steps: PSNR on the whole crop and on the face, against the base (step 0, the reference in the
same run) and the weight-free warp of the source (Render Textured Target). The last line is one JSON
object: the PSNRs by step, the first milestone that beats the base (``steps_to_beat_base``, on the
crop and on the face; null when none does) and the seconds per training step.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import torch

from pipelines.generator.checkpoint import load_tgdm
from pipelines.generator.sampler import SamplerSettings
from pipelines.generator.tgdm import TGDMDenoiser
from pipelines.morphable.demo_model import demo_face_model
from pipelines.training.finetune import FinetuneSettings
from pipelines.training.synthetic_faces import FaceViews, SyntheticFaceSettings, render_synthetic_views
from pipelines.training.tgdm import TGDMTrainer, TrainingSettings
from pipelines.training.tgdm_evaluation import evaluate_generator

BASE = Path(__file__).resolve().parents[1] / "assets" / "tgdm_demo_64px.safetensors"
# Above the seeds of the base's training people (0) and of scripts.train_tgdm's held-out ones (10 000).
PERSON_SEED = 20_001


def person_footage(frames: int, held_out: int, size: int) -> FaceViews:
    """``frames + held_out`` views of one synthetic person (pose, expression, light and gaze vary)."""
    settings = SyntheticFaceSettings(image_size=size, views_per_identity=frames + held_out)
    return render_synthetic_views(demo_face_model(), 1, settings, seed=PERSON_SEED)


def rows(views: FaceViews, keep: slice) -> FaceViews:
    return FaceViews(
        photos=views.photos[keep], renders=views.renders[keep], surfaces=views.surfaces[keep],
        coefficients=views.coefficients[keep], identities=views.identities[keep],
        descriptors=None if views.descriptors is None else views.descriptors[keep])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=64, help="training frames of the person")
    parser.add_argument("--held-out", type=int, default=16, help="held-out frames of the person")
    parser.add_argument("--milestones", default="0,5,10,25,50,100,200,400", help="steps at which to evaluate")
    parser.add_argument("--sample-steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    milestones = sorted({int(step) for step in args.milestones.split(",")} | {0})
    base = load_tgdm(BASE)
    size = base.config.pixel_size
    face_model = demo_face_model()
    views = person_footage(args.frames, args.held_out, size)
    footage = rows(views, slice(0, args.frames))
    targets = torch.arange(args.frames, args.frames + args.held_out)
    pairs = (torch.zeros_like(targets), targets)
    sampling = SamplerSettings(steps=args.sample_steps, batch_size=16, chunk_size=16, same_noise=False)
    defaults = FinetuneSettings()
    settings = TrainingSettings(steps=0, batch_size=defaults.batch_size, learning_rate=defaults.learning_rate,
                                ema_decay=defaults.ema_decay, checkpoint_every=10**9, seed=args.seed)
    results, train_seconds = {}, 0.0
    with tempfile.TemporaryDirectory() as run:
        trainer = TGDMTrainer(base.config, settings, run, face_model=face_model, base=base)
        for milestone in milestones:
            started = time.monotonic()
            trainer.settings = dataclasses.replace(settings, steps=milestone)
            while trainer.step < milestone:
                trainer.training_step(footage)
            train_seconds += time.monotonic() - started
            model = base if milestone == 0 else trainer.ema.copy_to(TGDMDenoiser(base.config)).eval()
            with torch.inference_mode():
                scores = evaluate_generator(model, views, sampling, pairs=pairs, face_model=face_model)
            results[milestone] = scores
            print(f"step {milestone}: PSNR {scores['psnr_tgdm']:.2f} dB (face {scores['psnr_tgdm_face']:.2f}), "
                  f"warp {scores['psnr_warp_relit']:.2f} (face {scores['psnr_warp_relit_face']:.2f}), "
                  f"{train_seconds:.0f}s training", flush=True)

    def first_beating(key: str) -> int | None:
        return next((step for step in milestones[1:] if results[step][key] > results[0][key]), None)

    trained_steps = milestones[-1]
    print(json.dumps({
        "base": BASE.name, "frames": args.frames, "held_out": args.held_out,
        "psnr_by_step": {str(step): results[step]["psnr_tgdm"] for step in milestones},
        "psnr_face_by_step": {str(step): results[step]["psnr_tgdm_face"] for step in milestones},
        "psnr_warp_relit": results[0]["psnr_warp_relit"], "psnr_warp_relit_face": results[0]["psnr_warp_relit_face"],
        "steps_to_beat_base": first_beating("psnr_tgdm"), "steps_to_beat_base_face": first_beating("psnr_tgdm_face"),
        "seconds_per_step": round(train_seconds / trained_steps, 3) if trained_steps else None,
        "batch_size": settings.batch_size, "learning_rate": settings.learning_rate,
    }))


if __name__ == "__main__":
    main()
