"""Distil a trained TGDM generator into a 1- to 4-step student with its guidance built in, on the
synthetic faces the generator was trained on, then evaluate both on held-out identities.

    python -m scripts.distill_tgdm --teacher assets/tgdm_demo_64px.safetensors --out runs/student \
        [--student-steps 4] [--texture-guidance 1.5] [--geometry-guidance 1.5] [--steps N] [--time-limit SECONDS]

Writes OUT/tgdm_student.safetensors (copy it into ComfyUI/models/talkingface/ and sample it with TGDM
Sampler's `distilled` sampler, 1 to --student-steps steps, guidance 1) and OUT/training_state/
(safetensors and JSON; run the same command again to resume). The last line printed is a JSON
object with held-out PSNR/SSIM of the student at every step count from 1 to --student-steps and of
the guided teacher at --teacher-eval-steps (the learning check: the 4-step student within 1 dB of
the 25-step teacher, and above the teacher sampled in as few steps), and the PSNR of the student's
one-pass jumps against the ends of the guided teacher's paths on held-out pairs, by timestep, beside
the same for the teacher's own weights (what the distillation learnt).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from pipelines.generator.checkpoint import load_tgdm
from pipelines.generator.distilled import DISTILLED_SCHEDULER
from pipelines.generator.sampler import SamplerSettings
from pipelines.generator.vae import DiffusersVAECodec, load_vae
from pipelines.morphable.demo_model import demo_face_model
from pipelines.morphable.model import load_face_model
from pipelines.training.distill import STUDENT_FILE, DistillationSettings, DistillationTrainer, jump_psnr
from pipelines.training.synthetic_faces import SyntheticFaceSettings, render_synthetic_views
from pipelines.training.tgdm import TrainingSettings, pair_batch
from pipelines.training.tgdm_evaluation import evaluate_generator, held_out_pairs
from scripts.train_tgdm import HELD_OUT_SEED

# What the learning check reports for each sampling.
REPORTED = ("psnr_tgdm", "ssim_tgdm", "psnr_tgdm_face", "psnr_tgdm_unseen")


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path, required=True, help="the trained TGDM checkpoint to distil")
    parser.add_argument("--out", type=Path, required=True, help="run folder (resumed if it holds a distillation state)")
    parser.add_argument("--vae", type=Path, default=None, help="a latent-mode teacher's SD1.5 VAE file")
    parser.add_argument("--face-model", type=Path, default=None,
                        help="the 3DMM the teacher's data was fitted with (BFM_model_front.mat); default: the demo face")
    student = parser.add_argument_group("student")
    student.add_argument("--student-steps", type=int, default=4, help="the student runs in 1 to this many steps")
    student.add_argument("--texture-guidance", type=float, default=1.5, help="the teacher's texture guidance to build in")
    student.add_argument("--geometry-guidance", type=float, default=1.5, help="the teacher's geometry guidance to build in")
    student.add_argument("--teacher-steps", type=int, default=12,
                         help="guided DDIM steps of the teacher paths the student learns (a multiple of 1..student steps)")
    data = parser.add_argument_group("data (the teacher's synthetic faces: keep its training options)")
    data.add_argument("--identities", type=int, default=160)
    data.add_argument("--views", type=int, default=6, help="renders per identity")
    data.add_argument("--held-out", type=int, default=16, help="held-out identities for the evaluation (0: skip)")
    training = parser.add_argument_group("training")
    training.add_argument("--steps", type=int, default=2000)
    training.add_argument("--time-limit", type=float, default=None, help="stop after this many seconds")
    training.add_argument("--batch-size", type=int, default=4, help="teacher paths per step (each trains every student timestep)")
    training.add_argument("--lr", type=float, default=1e-4)
    training.add_argument("--ema-decay", type=float, default=0.99)
    training.add_argument("--checkpoint-every", type=int, default=100)
    training.add_argument("--seed", type=int, default=0, help="the teacher's data seed (its training data)")
    training.add_argument("--threads", type=int, default=0,
                          help="CPU threads for torch (0: torch's default); 1 is much faster on a CPU shared with other jobs")
    evaluation = parser.add_argument_group("evaluation")
    evaluation.add_argument("--teacher-eval-steps", type=int, nargs="*", default=[25, 4],
                            help="guided DDIM steps to evaluate the teacher with (none: skip the teacher)")
    return parser.parse_args()


def main() -> None:
    args = parse_arguments()
    if args.threads:
        torch.set_num_threads(args.threads)
    teacher = load_tgdm(args.teacher)
    config = teacher.config
    vae = None
    if config.latent:
        if args.vae is None:
            raise SystemExit(f"{args.teacher.name} is a latent-mode generator: give --vae, the SD1.5 VAE file it was trained with")
        device = "cuda" if torch.cuda.is_available() else "cpu"
        vae = DiffusersVAECodec(load_vae(args.vae, config.vae, device), batch_size=8, name=args.vae.name)
    face_model = demo_face_model() if args.face_model is None else load_face_model(args.face_model)
    faces = SyntheticFaceSettings(image_size=config.pixel_size, views_per_identity=args.views)
    started = time.monotonic()
    views = render_synthetic_views(face_model, args.identities, faces, seed=args.seed)
    print(f"rendered {len(views)} training views in {time.monotonic() - started:.0f}s", flush=True)
    settings = TrainingSettings(steps=args.steps, batch_size=args.batch_size, learning_rate=args.lr, ema_decay=args.ema_decay,
                                checkpoint_every=args.checkpoint_every, seed=args.seed)
    distillation = DistillationSettings(args.student_steps, args.texture_guidance, args.geometry_guidance, args.teacher_steps)
    trainer = DistillationTrainer(teacher, settings, distillation, args.out, vae, face_model, args.teacher.name)
    print(f"distilling {args.teacher.name} into a 1-{args.student_steps} step student, starting at step {trainer.step}", flush=True)
    trainer.train(views, args.time_limit, log=lambda line: print(line, flush=True))
    summary: dict[str, object] = {"step": trainer.step, "checkpoint": str(args.out / STUDENT_FILE)}
    if args.held_out > 0 and trainer.accelerator.is_main_process:
        held_out = render_synthetic_views(face_model, args.held_out, faces, seed=HELD_OUT_SEED)
        pairs = held_out_pairs(held_out)
        summary["held_out_pairs"] = len(pairs[0])

        def scores(model, name: str, settings: SamplerSettings) -> None:
            started = time.monotonic()
            with torch.inference_mode():
                result = evaluate_generator(model, held_out, settings, vae, pairs, face_model)
            summary.update({f"{name}_{key}": result[key] for key in REPORTED})
            summary[f"{name}_seconds"] = round(time.monotonic() - started, 1)
            print(f"{name}: PSNR {result['psnr_tgdm']:.3f} dB, SSIM {result['ssim_tgdm']:.4f}", flush=True)

        common = {"batch_size": 32, "chunk_size": 32, "same_noise": False}
        student = load_tgdm(args.out / STUDENT_FILE)
        for steps in range(1, args.student_steps + 1):
            scores(student, f"student_{steps}step", SamplerSettings(scheduler=DISTILLED_SCHEDULER, steps=steps, **common))
        # How close the student's jumps come to the guided teacher's path ends on held-out pairs, and
        # how close the teacher's own weights (unguided, one pass) come: what distillation learnt.
        draws = torch.Generator().manual_seed(HELD_OUT_SEED)
        device = trainer.accelerator.device
        batch = pair_batch(held_out, 32, draws, trainer.settings, device, trainer.latents, trainer.warper,
                           identity=bool(config.identity_dim))
        noise = torch.randn(batch["target"].shape, generator=draws).to(device)
        summary["jump_psnr_vs_teacher_path_student"] = jump_psnr(student.to(device), trainer.paths, batch, noise)
        summary["jump_psnr_vs_teacher_path_teacher_weights"] = jump_psnr(teacher.to(device), trainer.paths, batch, noise)
        print(f"jump PSNR against the guided teacher's path ends, by timestep: student "
              f"{summary['jump_psnr_vs_teacher_path_student']}, teacher weights {summary['jump_psnr_vs_teacher_path_teacher_weights']}",
              flush=True)
        for steps in args.teacher_eval_steps:
            scores(teacher, f"teacher_{steps}step_guided", SamplerSettings(
                scheduler="ddim", steps=steps, texture_guidance=args.texture_guidance,
                geometry_guidance=args.geometry_guidance, **common))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
