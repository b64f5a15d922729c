"""Few-step distillation of a trained TGDM generator: a student that samples in 1 to 4 plain passes
what the teacher samples in many guided ones (generator/distilled.py says how the sampler runs it).

Method: consistency distillation with the teacher's own sampling path as the supervision. For every
training pair, the frozen teacher runs its guided DDIM sampler from noise (``teacher_steps`` steps,
three-variant guidance each), which passes through every timestep a 1- to ``student_steps``-step
run visits. The student (the teacher's architecture, initialised from its weights) is trained so
that from the path's point at each of those timesteps, in one unguided pass, it gives the path's
end: ``f(x_t, t) = x_0`` for all points of one sampling path, the consistency property, with the
guidance folded in. The loss is the mean squared error on the clean image, whatever the model's
prediction type.

Why not LCM's one-teacher-step consistency distillation: it bootstraps from an EMA copy of the
student over adjacent timesteps and needs thousands of large-batch steps before the jump from pure
noise is consistent; here each student timestep gets the exact end of the teacher's path, and one
teacher path supervises all of them (4-step students: 12 teacher steps train 6 timesteps). Why not
targets from forward-noised data (one teacher solve per timestep and sample): the same supervision
costs 3.5 times the teacher passes (42 guided passes instead of 12 for the six timesteps of a
4-step student). The student samples with DDIM's deterministic update between its timesteps (the sampler's ``distilled`` scheduler): no noise is added after the first
step, so a video sampled with the same noise per frame keeps it, as with the teacher's DDIM.

The run reuses :class:`~.tgdm.TGDMTrainer`: the teacher's synthetic pair data (:func:`~.tgdm.pair_batch`),
accelerate, the EMA that is shipped, and the pickle-free resumable state in ``OUT/training_state``
(the trainer's generator draws the pairs and the noise, so a resumed run continues exactly).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import TalkingFaceError
from ..generator.config import TGDMConfig
from ..generator.distilled import Distillation, student_timesteps
from ..generator.sampler import guided_prediction, make_scheduler
from ..generator.tgdm import TGDMDenoiser
from ..generator.vae import LatentCodec
from ..morphable.model import MorphableModel
from .state import read_trainer_state
from .synthetic_faces import FaceViews
from .tgdm import TGDMTrainer, TrainingSettings, pair_batch

STUDENT_FILE = "tgdm_student.safetensors"
STATE_FORMAT = "talkingface.tgdm-distillation-state"


@dataclass(frozen=True)
class DistillationSettings:
    """The student's step count, the teacher guidance it folds in, and the teacher's DDIM steps
    (a multiple of every step count from 1 to ``student_steps``, so its path passes through each
    student timestep)."""

    student_steps: int = 4
    texture_guidance: float = 1.5
    geometry_guidance: float = 1.5
    teacher_steps: int = 12

    def record(self, teacher_name: str = "") -> Distillation:
        return Distillation(self.student_steps, self.texture_guidance, self.geometry_guidance, self.teacher_steps,
                            teacher_name)


def to_clean(output: torch.Tensor, noisy: torch.Tensor, alpha_bar: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """The clean image a denoiser output stands for, at cumulative signal ``alpha_bar`` ``[B]``."""
    alpha = alpha_bar.view(-1, 1, 1, 1).to(output.dtype)
    if prediction_type == "sample":
        return output
    if prediction_type == "v_prediction":
        return alpha.sqrt() * noisy - (1 - alpha).sqrt() * output
    return (noisy - (1 - alpha).sqrt() * output) / alpha.sqrt()


class TeacherPaths:
    """Runs the frozen teacher's guided DDIM sampler on training batches and keeps the path's point at
    each student timestep and the path's end (what the sampler's DDIM returns, clipped in pixel mode)."""

    def __init__(self, teacher: TGDMDenoiser, distillation: DistillationSettings) -> None:
        self.teacher = teacher.eval().requires_grad_(False)
        self.distillation = distillation
        config = teacher.config
        self.timesteps = student_timesteps(distillation.student_steps, config.num_train_timesteps)

    @torch.no_grad()
    def __call__(self, batch: dict[str, torch.Tensor], noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(points [len(timesteps), B, C, H, W], end [B, C, H, W])`` of the paths starting at ``noise``."""
        config = self.teacher.config
        settings = self.distillation
        scheduler = make_scheduler("ddim", config)
        scheduler.set_timesteps(settings.teacher_steps, device=noise.device)
        source = self.teacher.encode_source(batch["source"], batch["source_surface"])
        latents = noise
        points = {}
        for timestep in scheduler.timesteps:
            if int(timestep) in self.timesteps:
                points[int(timestep)] = latents
            prediction = guided_prediction(
                self.teacher, latents, timestep.expand(latents.shape[0]), batch["render"], batch["coefficients"], source,
                batch["target_surface"], batch.get("identity"), batch.get("warped_source"),
                settings.texture_guidance, settings.geometry_guidance,
            )
            latents = scheduler.step(prediction, timestep, latents).prev_sample
        missing = sorted(set(self.timesteps) - set(points))
        if missing:  # Distillation's check on teacher_steps makes this unreachable for 1000-step schedules
            raise TalkingFaceError(f"the teacher's {settings.teacher_steps} DDIM steps miss the student timesteps {missing}")
        return torch.stack([points[t] for t in self.timesteps]), latents


@torch.no_grad()
def jump_psnr(student: TGDMDenoiser, paths: TeacherPaths, batch: dict[str, torch.Tensor], noise: torch.Tensor) -> dict[int, float]:
    """How well ``student`` has learnt the guided teacher: PSNR in dB (images in -1..1) of its one-pass
    jump from each student timestep's path point against the end of the teacher's path, by timestep,
    for the paths starting at ``noise`` (the teacher's weights themselves score what guidance and
    the remaining steps change)."""
    points, end = paths(batch, noise)
    source = student.encode_source(batch["source"], batch["source_surface"])
    alphas = make_scheduler("ddim", student.config).alphas_cumprod.to(noise.device)
    scores = {}
    for timestep, noisy in zip(paths.timesteps, points, strict=True):
        timesteps = torch.full((noise.shape[0],), timestep, device=noise.device)
        output = student(noisy, timesteps, batch["render"], batch["coefficients"], source, batch["target_surface"],
                         batch.get("identity"), warped_source=batch.get("warped_source"))
        clean = to_clean(output.float(), noisy, alphas[timesteps], student.config.prediction_type)
        if not student.config.latent:
            clean = clean.clamp(-1, 1)  # as the sampler clips it
        scores[timestep] = round(10 * torch.log10(4 / F.mse_loss(clean, end).clamp_min(1e-10)).item(), 3)
    return scores


class DistillationTrainer(TGDMTrainer):
    """Trains a few-step student of ``teacher`` (see the module's docstring) into ``output_dir``,
    continuing the run saved there. ``settings`` are the usual training settings (batch size,
    learning rate, EMA, steps); condition dropout is off, the student always sees every condition."""

    checkpoint_file = STUDENT_FILE
    state_format = STATE_FORMAT

    def __init__(
        self, teacher: TGDMDenoiser, settings: TrainingSettings, distillation: DistillationSettings,
        output_dir: str | Path, vae: LatentCodec | None = None, face_model: MorphableModel | None = None,
        teacher_name: str = "",
    ) -> None:
        if teacher.distillation is not None:
            raise TalkingFaceError(
                f"the teacher is already {teacher.distillation.describe()}: distil the generator it came from"
            )
        self.distillation = distillation
        self.record = distillation.record(teacher_name)  # checks the step counts
        self.paths = TeacherPaths(teacher, distillation)
        settings = dataclasses.replace(settings, texture_drop=0.0, geometry_drop=0.0)
        super().__init__(teacher.config, settings, output_dir, vae, face_model, base=teacher)
        self.paths.teacher.to(self.accelerator.device)

    def training_step(self, views: FaceViews) -> float:
        device = self.accelerator.device
        batch = pair_batch(views, self.settings.batch_size, self.generator, self.settings, device, self.latents, self.warper,
                           identity=bool(self.denoiser.config.identity_dim))
        noise = torch.randn(batch["target"].shape, generator=self.generator).to(device)
        loss = self.loss(batch, noise)
        self.optimizer.zero_grad(set_to_none=True)
        self.accelerator.backward(loss)
        self.accelerator.clip_grad_norm_(self.module.parameters(), 1.0)
        self.optimizer.step()
        self.ema.update(self.accelerator.unwrap_model(self.module).denoiser)
        self.step += 1
        return loss.item()

    def loss(self, batch: dict[str, torch.Tensor], noise: torch.Tensor) -> torch.Tensor:
        """The student's mean squared distance, on the clean image, to the ends of the teacher's paths
        that start at ``noise``, from the paths' points at every student timestep."""
        device = noise.device
        config: TGDMConfig = self.denoiser.config
        points, end = self.paths(batch, noise)
        steps = len(self.paths.timesteps)
        timesteps = torch.tensor(self.paths.timesteps, device=device).repeat_interleave(noise.shape[0])
        # Every student timestep of every path in one pass: the batch repeated once per timestep.
        repeated = {name: value.repeat(steps, *[1] * (value.ndim - 1)) for name, value in batch.items()}
        noisy = points.flatten(0, 1)
        alpha_bar = self.noise_schedule.alphas_cumprod.to(device)[timesteps]
        with self.accelerator.autocast():
            output = self.module(repeated, noisy, timesteps)
        predicted = to_clean(output.float(), noisy, alpha_bar, config.prediction_type)
        return F.mse_loss(predicted, end.repeat(steps, 1, 1, 1))

    def checkpoint_model(self) -> tuple[TGDMDenoiser, Path, dict[str, str]]:
        model, path, metadata = super().checkpoint_model()
        model.distillation = self.record
        metadata["distillation_step"] = metadata.pop("training_step")
        return model, path, metadata

    def state_info(self) -> dict:
        return {**super().state_info(), "distillation": dataclasses.asdict(self.distillation)}

    def load_state(self, folder: Path) -> None:
        """Continue the run saved in ``folder``; one that distilled with other settings is refused."""
        saved = read_trainer_state(folder, self.state_format, "TGDM distillation").get("distillation")
        if saved != dataclasses.asdict(self.distillation):
            raise TalkingFaceError(
                f"the run in {folder.parent} distilled with {saved}, not {dataclasses.asdict(self.distillation)}: "
                "use the same student steps, guidance and teacher steps, or a new --out folder"
            )
        super().load_state(folder)

