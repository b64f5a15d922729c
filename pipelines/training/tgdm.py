"""Training TGDM by self-reconstruction: the target frame is denoised from its render I_3d and
coefficients with texture attention on another frame of the same person (paper 1: plain ε-MSE).

HF accelerate runs it on one CPU, one GPU, several GPUs or nodes (``accelerate launch``); mixed
precision on GPU; the raw weights, optimizer and EMA are checkpointed so a run can be resumed.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import TalkingFaceError
from ..generator.checkpoint import save_tgdm
from ..generator.config import TGDMConfig
from ..generator.sampler import to_channels_first, to_model_images
from ..generator.tgdm import TGDMDenoiser
from .synthetic_faces import FaceViews

MIXED_PRECISION = ("no", "bf16", "fp16")
EMA_FILE = "tgdm_ema.safetensors"
STATE_FOLDER = "training_state"


@dataclass(frozen=True)
class TrainingSettings:
    steps: int = 20000
    batch_size: int = 16
    learning_rate: float = 2e-4
    ema_decay: float = 0.999
    # Each condition is dropped independently so the sampler can guide texture and geometry separately.
    texture_drop: float = 0.1
    geometry_drop: float = 0.1
    mixed_precision: str = "no"
    checkpoint_every: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mixed_precision not in MIXED_PRECISION:
            raise TalkingFaceError(f"mixed_precision must be one of {MIXED_PRECISION}, got '{self.mixed_precision}'")


class ExponentialMovingAverage:
    """A shadow copy of the weights, averaged over training; it is what gets sampled and shipped."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {name: value.detach().clone().float() for name, value in model.state_dict().items()}
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        # Warm-up: early averages would otherwise be dominated by the random initialisation.
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for name, value in model.state_dict().items():
            shadow = self.shadow[name]
            if value.dtype.is_floating_point:
                shadow.lerp_(value.detach().float().to(shadow.device), 1 - decay)
            else:
                shadow.copy_(value)

    def copy_to(self, model: nn.Module) -> nn.Module:
        model.load_state_dict({name: value.to(model.state_dict()[name].dtype) for name, value in self.shadow.items()})
        return model

    def state_dict(self) -> dict:
        return {"shadow": self.shadow, "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.shadow = {name: value.float() for name, value in state["shadow"].items()}
        self.updates = int(state["updates"])


class StepCounter:
    """The optimisation step, checkpointed with the rest of the training state."""

    def __init__(self) -> None:
        self.step = 0

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])


class SelfReconstruction(nn.Module):
    """Source encoding and denoising in one forward, so data-parallel training syncs every gradient."""

    def __init__(self, denoiser: TGDMDenoiser) -> None:
        super().__init__()
        self.denoiser = denoiser

    def forward(self, batch: dict[str, torch.Tensor], noisy: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        source = self.denoiser.encode_source(batch["source"], batch["source_surface"])
        return self.denoiser(
            noisy, timesteps, batch["render"], batch["coefficients"], source, batch["target_surface"],
            None, batch["geometry_keep"], batch["texture_keep"],
        )


def pair_batch(
    views: FaceViews, size: int, generator: torch.Generator, settings: TrainingSettings, device: torch.device
) -> dict[str, torch.Tensor]:
    """A random batch of (source, target) views of one identity each, in the model's layout and range."""
    sources, targets = views.pairs(size, generator)
    dtype = torch.float32
    return {
        "target": to_model_images(views.photos[targets], device, dtype),
        "source": to_model_images(views.photos[sources], device, dtype),
        "render": to_model_images(views.renders[targets], device, dtype),
        "coefficients": views.coefficients[targets].to(device),
        "target_surface": to_channels_first(views.surfaces[targets], device, dtype),
        "source_surface": to_channels_first(views.surfaces[sources], device, dtype),
        "geometry_keep": (torch.rand(size, generator=generator) >= settings.geometry_drop).float().to(device),
        "texture_keep": (torch.rand(size, generator=generator) >= settings.texture_drop).float().to(device),
    }


class TGDMTrainer:
    """Trains a :class:`TGDMDenoiser` from ``config`` (or continues the run saved in ``output_dir``)."""

    def __init__(self, config: TGDMConfig, settings: TrainingSettings, output_dir: str | Path) -> None:
        from accelerate import Accelerator
        from accelerate.utils import set_seed
        from diffusers import DDPMScheduler

        self.settings = settings
        self.output_dir = Path(output_dir)
        self.accelerator = Accelerator(
            mixed_precision=settings.mixed_precision, cpu=not torch.cuda.is_available()
        )
        set_seed(settings.seed)
        self.denoiser = TGDMDenoiser(config)
        self.noise_schedule = DDPMScheduler(
            num_train_timesteps=config.num_train_timesteps, beta_schedule=config.beta_schedule,
            prediction_type=config.prediction_type,
        )
        self.ema = ExponentialMovingAverage(self.denoiser, settings.ema_decay)
        self.counter = StepCounter()
        optimizer = torch.optim.AdamW(self.denoiser.parameters(), lr=settings.learning_rate, weight_decay=0.0)
        self.module, self.optimizer = self.accelerator.prepare(SelfReconstruction(self.denoiser), optimizer)
        self.accelerator.register_for_checkpointing(self.ema, self.counter)
        self.generator = torch.Generator().manual_seed(settings.seed + self.accelerator.process_index)
        if (self.output_dir / STATE_FOLDER).is_dir():
            self.accelerator.load_state(str(self.output_dir / STATE_FOLDER))
            # a different draw of pairs after resuming, still reproducible
            self.generator.manual_seed(settings.seed + 7919 * self.counter.step + self.accelerator.process_index)

    @property
    def step(self) -> int:
        return self.counter.step

    def training_step(self, views: FaceViews) -> float:
        device = self.accelerator.device
        batch = pair_batch(views, self.settings.batch_size, self.generator, self.settings, device)
        clean = batch["target"]
        noise = torch.randn(clean.shape, generator=self.generator).to(device)
        timesteps = torch.randint(
            self.noise_schedule.config.num_train_timesteps, (clean.shape[0],), generator=self.generator
        ).to(device)
        noisy = self.noise_schedule.add_noise(clean, noise, timesteps)
        if self.noise_schedule.config.prediction_type == "v_prediction":
            target = self.noise_schedule.get_velocity(clean, noise, timesteps)
        else:
            target = noise
        with self.accelerator.autocast():
            prediction = self.module(batch, noisy, timesteps)
        loss = F.mse_loss(prediction.float(), target)
        self.optimizer.zero_grad(set_to_none=True)
        self.accelerator.backward(loss)
        self.accelerator.clip_grad_norm_(self.module.parameters(), 1.0)
        self.optimizer.step()
        self.ema.update(self.accelerator.unwrap_model(self.module).denoiser)
        self.counter.step += 1
        return loss.item()

    def train(
        self, views: FaceViews, time_limit_s: float | None = None, log: Callable[[str], None] = print
    ) -> Path:
        """Train up to ``settings.steps`` (or until ``time_limit_s``); returns the EMA checkpoint's path."""
        started = time.monotonic()
        running = None
        self.module.train()
        while self.step < self.settings.steps:
            loss = self.training_step(views)
            running = loss if running is None else 0.95 * running + 0.05 * loss
            if self.step % 50 == 0 or self.step == 1:
                log(f"step {self.step}  loss {running:.4f}  {time.monotonic() - started:.0f}s")
            if self.step % self.settings.checkpoint_every == 0:
                self.save()
            if time_limit_s is not None and time.monotonic() - started > time_limit_s:
                log(f"time limit reached at step {self.step}")
                break
        return self.save()

    def save(self) -> Path:
        """Write the resumable state and the EMA weights as a loadable TGDM checkpoint."""
        self.accelerator.wait_for_everyone()
        path = self.output_dir / EMA_FILE
        if self.accelerator.is_main_process:
            self.accelerator.save_state(str(self.output_dir / STATE_FOLDER))
            model = self.ema.copy_to(TGDMDenoiser(self.denoiser.config))
            save_tgdm(model, path, {"training_step": str(self.step)})
        return path
