"""Learning check of dubbing (paper 2) on synthetic talking clips, end to end on the CPU.

    python -m scripts.check_dubbing --out runs/dubbing_check --threads 1

1. the audio → landmark model, trained on the clips' audio and landmarks (the existing trainer); a
   second one is trained alone for ``--joint-steps`` more steps (the two-stage pipeline
   with joint training's extra steps, to tell the image loss's effect from more training);
2. stage 1: the dubbing model on ground-truth landmarks for ``--steps`` steps; then two continuations
   of ``--joint-steps`` each from the stage-1 weights, with the same schedule: (a) on ground-truth
   landmarks (the model used with the frozen landmark model), (b) jointly with a copy of the landmark
   model through TalkFormer;
3. held-out evaluation (:mod:`pipelines.training.dubbing_evaluation`): templates saying something
   else, dubbed with the held-out speech; mouth-region PSNR/SSIM and the pixel lip-sync correlation
   for every method and for the copies and the no-landmark ablation, per pair as well; and the
   landmark models' points themselves (error, opening correlation) before any image is made.

The last line is a JSON object with every figure. ``--evaluate-only`` scores the models a finished run
left in ``--out`` again (e.g. with other sampling settings). Both write ``--out/panel.png``: held-out
frames, one row per method (truth, template, the warped reference, the model, joint, ablation).
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image

from pipelines.audio.landmark_model import LandmarkModelConfig, load_landmark_model
from pipelines.generator.dubbing import DubbingConfig, DubbingDenoiser, load_dubbing
from pipelines.generator.dubbing_sampler import DubbingSettings
from pipelines.morphable.demo_model import demo_face_model
from pipelines.training.audio_landmarks import train_landmark_model
from pipelines.training.audio_synthetic import TalkingClip
from pipelines.training.dubbing import (
    MOUTH_WEIGHT,
    dubbing_train_config,
    synthetic_dubbing_clips,
    train_dubbing,
    with_detector_jitter,
)
from pipelines.training.dubbing_evaluation import evaluate_dubbing, evaluate_landmarks
from pipelines.training.loop import TrainConfig

CHECK_LANDMARK_MODEL = LandmarkModelConfig(reference_sets=4, target_frames=8, width=64, heads=4, layers=2, feedforward=128,
                                           dropout=0.1, audio_channels=(64, 64), point_channels=16)


def check_dubbing_config(size: int) -> DubbingConfig:
    levels = {32: (1, 2, 2), 64: (1, 2, 2, 2)}[size]
    return DubbingConfig(image_size=size, base_channels=16, channel_multipliers=levels, attention_resolutions=(16, 8),
                         attention_head_channels=16, reference_base_channels=16, reference_frames=4, norm_groups=8,
                         token_width=32, coordinate_frequencies=4, reference_base=True)


def train_models(args: argparse.Namespace, log: Callable[[str], None], timings: dict[str, float]) -> tuple:
    """Steps 1 and 2: (the denoiser continued on true landmarks, the joint denoiser, the landmark models
    (frozen, trained alone for as many more steps as joint training takes, joint), figures)."""
    started_stage = time.time()
    face = demo_face_model()
    train = synthetic_dubbing_clips(face, args.clips, args.seconds, args.size, seed=0)
    validation = synthetic_dubbing_clips(face, 2, args.seconds, args.size, seed=1)
    if args.landmark_jitter:
        train, validation = (with_detector_jitter(clips, args.landmark_jitter, seed)
                             for seed, clips in enumerate((train, validation)))
    timings["data_s"] = round(time.time() - started_stage, 1)
    started_stage = time.time()
    talking = [TalkingClip(clip.audio, clip.landmarks, clip.fps) for clip in train]
    talking_validation = [TalkingClip(clip.audio, clip.landmarks, clip.fps) for clip in validation]

    def landmark_training(steps: int, folder: str) -> tuple:
        return train_landmark_model(
            CHECK_LANDMARK_MODEL, talking, talking_validation,
            TrainConfig(steps=steps, batch_size=32, warmup_steps=50, validate_every=max(steps // 3, 1),
                        train_windows=steps * 32, validation_windows=128, portrait_references=0.0),
            args.out / folder, log)

    landmark_model, landmark_history = landmark_training(args.landmark_steps, "landmarks")
    # the two-stage pipeline given the steps joint training adds: is it the image loss, or just more steps?
    landmark_longer, _ = landmark_training(args.landmark_steps + args.joint_steps, "landmarks_longer")
    timings["landmark_models_s"] = round(time.time() - started_stage, 1)

    config = check_dubbing_config(args.size)
    settings = dubbing_train_config(steps=args.steps, batch_size=args.batch_size, warmup_steps=100,
                                    validate_every=max(args.steps // 4, 1), train_windows=args.steps * args.batch_size,
                                    validation_windows=32)
    started_stage = time.time()
    torch.manual_seed(0)
    stage1, _ = train_dubbing(DubbingDenoiser(config), train, validation, settings, args.out / "stage1",
                              mouth_weight=args.mouth_weight, log=log)
    timings["stage1_s"] = round(time.time() - started_stage, 1)
    # Both continuations start from the stage-1 weights with the same schedule and the same windows:
    # the only difference is where the target landmarks come from (the truth, or the landmark model
    # trained through TalkFormer).
    continuation = dubbing_train_config(steps=args.joint_steps, batch_size=args.batch_size, learning_rate=1e-4,
                                        warmup_steps=20, validate_every=max(args.joint_steps // 2, 1),
                                        train_windows=args.joint_steps * args.batch_size, validation_windows=32,
                                        seed=args.continuation_seed)
    trained = {}
    for name, landmarks in (("ground_truth", None), ("joint", copy.deepcopy(landmark_model))):
        started_stage = time.time()
        denoiser = DubbingDenoiser(config)
        denoiser.load_state_dict(stage1.denoiser.state_dict())
        trained[name] = train_dubbing(denoiser, train, validation, continuation, args.out / name, landmark_model=landmarks,
                                      mouth_weight=args.mouth_weight, log=log)
        timings[f"continue_{name}_s"] = round(time.time() - started_stage, 1)
    ground_truth, history_gt = trained["ground_truth"]
    joint, history_joint = trained["joint"]

    # a resumed run that had nothing left to train logged no validation
    history = {name: round(getattr(runs[-1][1], field), 4) for name, runs, field in (
        ("landmark_validation_l1", landmark_history, "model_l1"),
        ("landmark_reference_mean_l1", landmark_history, "reference_mean_l1"),
        ("validation_diffusion_loss", history_gt, "model_l1"),
        ("validation_diffusion_loss_without_landmarks", history_gt, "no_landmarks"),
        ("validation_diffusion_loss_joint", history_joint, "model_l1"),
        ("joint_validation_landmark_l1", history_joint, "landmark_l1")) if runs}
    landmark_models = {"frozen": landmark_model, "trained_longer": landmark_longer, "joint": joint.landmark_model}
    return ground_truth.denoiser, joint.denoiser, landmark_models, history


PANEL_ROWS = ("truth", "copy_template", "warped_nearest_reference", "model_true_landmarks", "model_joint", "no_landmarks")


def save_panel(produced: dict[str, torch.Tensor], frames: int, path: Path, columns: int = 10, zoom: int = 3) -> None:
    """The first held-out pair's frames (``columns`` spread over its ``frames``), one row per method of ``PANEL_ROWS``."""
    picks = torch.linspace(0, frames - 1, columns).round().long()
    rows = [torch.cat(list(produced[name][picks]), dim=1) for name in PANEL_ROWS if name in produced]
    image = (torch.cat(rows, dim=0).clamp(0, 1) * 255).round().byte().numpy()
    Image.fromarray(image).resize((image.shape[1] * zoom, image.shape[0] * zoom), Image.NEAREST).save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--clips", type=int, default=48, help="synthetic training clips")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--held-out", type=int, default=8, help="held-out (target, template) clip pairs")
    parser.add_argument("--size", type=int, default=64, choices=(32, 64))
    parser.add_argument("--landmark-steps", type=int, default=600)
    parser.add_argument("--steps", type=int, default=1200, help="stage 1 steps on ground-truth landmarks")
    parser.add_argument("--joint-steps", type=int, default=300, help="steps of each continuation")
    parser.add_argument("--landmark-jitter", type=float, default=0.0,
                        help="training landmarks as a detector gives them: Gaussian jitter of this many crop pixels "
                             "per point and frame (the held-out truth stays exact)")
    parser.add_argument("--continuation-seed", type=int, default=0,
                        help="the continuations' windows and noise draws: runs that differ only in it show the spread")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--sample-steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--mouth-weight", type=float, default=MOUTH_WEIGHT)
    parser.add_argument("--evaluate-only", action="store_true", help="score the checkpoints of a finished run in --out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    timings = {}
    started = time.time()
    held_out = synthetic_dubbing_clips(demo_face_model(), args.held_out, 2.0, args.size, seed=2, with_templates=True)

    def log(line: str) -> None:
        print(f"[{time.time() - started:7.1f}s] {line}", flush=True)

    if args.evaluate_only:
        out = args.out
        ground_truth = load_dubbing(out / "ground_truth" / "last.safetensors")
        joint_denoiser = load_dubbing(out / "joint" / "last.safetensors")
        landmark_models = {name: load_landmark_model(out / path) for name, path in (
            ("frozen", "landmarks/last.safetensors"), ("trained_longer", "landmarks_longer/last.safetensors"),
            ("joint", "joint/last_landmarks.safetensors"))}
        history = {}
    else:
        ground_truth, joint_denoiser, landmark_models, history = train_models(args, log, timings)

    started_stage = time.time()
    produced = {}
    scores = evaluate_dubbing(
        held_out,
        {"model_true_landmarks": (ground_truth, None),
         "model_frozen_landmark_model": (ground_truth, landmark_models["frozen"]),
         "model_landmark_model_trained_longer": (ground_truth, landmark_models["trained_longer"]),
         "model_joint": (joint_denoiser, landmark_models["joint"])},
        ablation=ground_truth, settings=DubbingSettings(steps=args.sample_steps, batch_size=16), produced=produced,
    )
    landmarks = evaluate_landmarks(held_out, landmark_models, ground_truth.config.reference_frames)
    timings["evaluation_s"] = round(time.time() - started_stage, 1)
    save_panel(produced, held_out[0][0].count, args.out / "panel.png")
    for name, values in {**scores, **{f"landmarks_{name}": values for name, values in landmarks.items()}}.items():
        print(f"{name:30s} {values}")
    model = scores["model_true_landmarks"]
    # every copy, and for a reference_base model the warped reference it corrects (the model with no weights)
    baselines = [values for name, values in scores.items() if name == "no_landmarks" or name.startswith(("copy_", "warped_"))]
    print(json.dumps({
        "size": args.size, "held_out_pairs": args.held_out, "sample_steps": args.sample_steps,
        # the training settings, unless only the checkpoints of an earlier run were scored
        **({} if args.evaluate_only else {
            "mouth_weight": args.mouth_weight, "train_clips": args.clips, "landmark_jitter_px": args.landmark_jitter,
            "landmark_steps": args.landmark_steps, "continuation_seed": args.continuation_seed,
            "stage1_steps": args.steps, "continuation_steps": args.joint_steps}),
        **history,
        "scores": scores,
        "landmarks": landmarks,
        "model_beats_ablation_and_copies": all(
            model["mouth_psnr"] > b["mouth_psnr"] and model["mouth_ssim"] > b["mouth_ssim"] and model["lip_sync_r"] > b["lip_sync_r"]
            for b in baselines),
        "joint_beats_frozen_lip_sync": scores["model_joint"]["lip_sync_r"] > scores["model_frozen_landmark_model"]["lip_sync_r"],
        "joint_beats_frozen_pairs": sum(joint > frozen for joint, frozen in zip(
            scores["model_joint"]["lip_sync_r_per_pair"], scores["model_frozen_landmark_model"]["lip_sync_r_per_pair"], strict=True)),
        "joint_beats_longer_two_stage_lip_sync": (scores["model_joint"]["lip_sync_r"]
                                                  > scores["model_landmark_model_trained_longer"]["lip_sync_r"]),
        **timings,
    }))


if __name__ == "__main__":
    main()
