"""Training TGDM by self-reconstruction: the target frame is denoised from its render I_3d and
coefficients with texture attention on another frame of the same person (paper 1: plain ε-MSE).

HF accelerate runs it on one CPU, one GPU, several GPUs or nodes (``accelerate launch``); mixed
precision on GPU. Latent mode trains on the frozen VAE's latents of the photos (cached as they are
first drawn), while the renders stay pixels for the denoiser's render stem.

The resumable state (``OUT/training_state/``) is safetensors and JSON only, never pickle: the
raw weights, the EMA weights, the optimizer's tensors (its hyper-parameters as JSON in the
metadata) and every process's pair/noise generator state in ``.safetensors`` files; the step, EMA
update count, config, settings and fp16 loss-scaler state in ``trainer_state.json``. accelerate's
``save_state`` is not used because, even with ``safe_serialization=True``, only the model goes to
safetensors: the optimizer (``optimizer.bin``), scaler (``scaler.pt``), RNG states
(``random_states_N.pkl``) and registered objects (``custom_checkpoint_N.pkl``, read back with
``weights_only=False``) are pickled. Global torch/numpy/python RNG states are not needed: every
random draw of the training comes from the trainer's own generator.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from ..checkpoints import read_checkpoint_metadata
from ..errors import TalkingFaceError
from ..generator.checkpoint import save_tgdm
from ..generator.config import TGDMConfig
from ..generator.sampler import missing_vae_error, to_channels_first, to_model_images
from ..generator.tgdm import TGDMDenoiser
from ..generator.vae import LatentCodec
from .synthetic_faces import FaceViews

MIXED_PRECISION = ("no", "bf16", "fp16")
EMA_FILE = "tgdm_ema.safetensors"
STATE_FOLDER = "training_state"
STATE_FORMAT = "talkingface.tgdm-training-state"
STATE_FILE = "trainer_state.json"
MODEL_STATE_FILE = "model.safetensors"
EMA_STATE_FILE = "ema.safetensors"
OPTIMIZER_STATE_FILE = "optimizer.safetensors"


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
    """An optimisation step counter for trainers that checkpoint through accelerate's
    ``register_for_checkpointing`` (the Emo-A2E trainer); TGDM keeps its step in ``trainer_state.json``."""

    def __init__(self) -> None:
        self.step = 0

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])


def optimizer_tensors(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer ``state_dict`` split into its tensors (for safetensors) and the rest (for JSON)."""
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_state(tensors: dict[str, torch.Tensor], rest: dict) -> dict:
    """The inverse of :func:`optimizer_tensors`."""
    state: dict[int, dict] = {}
    for key, value in [*tensors.items(), *rest["scalars"].items()]:
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": rest["param_groups"]}


class LatentCache:
    """The frozen VAE's latents of a dataset's photos, encoded the first time a photo is drawn and
    kept (float16, a 512² photo is 32 KB of SD latents) for the rest of the run."""

    def __init__(self, vae: LatentCodec) -> None:
        self.vae = vae
        self.views: object | None = None
        self.latents = torch.empty(0)
        self.encoded = torch.empty(0, dtype=torch.bool)

    def __call__(self, views: FaceViews, indices: torch.Tensor) -> torch.Tensor:
        if views is not self.views:
            size = views.photos.shape[1] // self.vae.scale_factor
            self.views = views
            self.latents = torch.zeros(len(views), self.vae.latent_channels, size, size, dtype=torch.float16)
            self.encoded = torch.zeros(len(views), dtype=torch.bool)
        todo = indices[~self.encoded[indices]].unique()
        if len(todo):
            self.latents[todo] = self.vae.encode(views.photos[todo]).half()
            self.encoded[todo] = True
        return self.latents[indices].float()


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
    views: FaceViews, size: int, generator: torch.Generator, settings: TrainingSettings, device: torch.device,
    latents: Callable[[FaceViews, torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """A random batch of (source, target) views of one identity each, in the model's layout and range.
    With ``latents`` (latent mode) the target and source are their VAE latents; renders and surface
    maps stay pixels."""
    sources, targets = views.pairs(size, generator)
    dtype = torch.float32
    if latents is None:
        target = to_model_images(views.photos[targets], device, dtype)
        source = to_model_images(views.photos[sources], device, dtype)
    else:
        target, source = latents(views, targets).to(device), latents(views, sources).to(device)
    return {
        "target": target,
        "source": source,
        "render": to_model_images(views.renders[targets], device, dtype),
        "coefficients": views.coefficients[targets].to(device),
        "target_surface": to_channels_first(views.surfaces[targets], device, dtype),
        "source_surface": to_channels_first(views.surfaces[sources], device, dtype),
        "geometry_keep": (torch.rand(size, generator=generator) >= settings.geometry_drop).float().to(device),
        "texture_keep": (torch.rand(size, generator=generator) >= settings.texture_drop).float().to(device),
    }


class TGDMTrainer:
    """Trains a :class:`TGDMDenoiser` from ``config`` (or continues the run saved in ``output_dir``).
    A latent-mode config needs ``vae``, the frozen VAE whose latents it learns to denoise."""

    def __init__(
        self, config: TGDMConfig, settings: TrainingSettings, output_dir: str | Path, vae: LatentCodec | None = None
    ) -> None:
        from accelerate import Accelerator
        from accelerate.utils import set_seed
        from diffusers import DDPMScheduler

        if config.latent:
            if vae is None:
                raise missing_vae_error(config, "a latent-mode generator")
            vae.check_matches(config)
        self.settings = settings
        self.output_dir = Path(output_dir)
        self.vae = vae
        self.latents = LatentCache(vae) if config.latent else None
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
        self.step = 0
        optimizer = torch.optim.AdamW(self.denoiser.parameters(), lr=settings.learning_rate, weight_decay=0.0)
        self.module, self.optimizer = self.accelerator.prepare(SelfReconstruction(self.denoiser), optimizer)
        self.generator = torch.Generator().manual_seed(settings.seed + self.accelerator.process_index)
        if (self.output_dir / STATE_FOLDER).is_dir():
            self.load_state(self.output_dir / STATE_FOLDER)

    def training_step(self, views: FaceViews) -> float:
        device = self.accelerator.device
        batch = pair_batch(views, self.settings.batch_size, self.generator, self.settings, device, self.latents)
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
        self.step += 1
        return loss.item()

    def train(
        self, views: FaceViews, time_limit_s: float | None = None, log: Callable[[str], None] = print
    ) -> Path:
        """Train up to ``settings.steps`` (or until ``time_limit_s``); returns the EMA checkpoint's path.
        ``views`` is any dataset with :class:`FaceViews`' interface (photos, renders, surfaces,
        coefficients and ``pairs()``), channel-last images at the generator's pixel size."""
        self._check_views(views)
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

    def _check_views(self, views: FaceViews) -> None:
        config = self.denoiser.config
        for name in ("photos", "renders", "surfaces"):
            shape = tuple(getattr(views, name).shape[1:])
            if shape != (config.pixel_size, config.pixel_size, 3):
                raise TalkingFaceError(
                    f"the training {name} are {shape} but this generator needs {config.pixel_size}x{config.pixel_size} RGB "
                    "images: preprocess the data at the generator's pixel size"
                )

    def save(self) -> Path:
        """Write the resumable state and the EMA weights as a loadable TGDM checkpoint."""
        accelerator = self.accelerator
        folder = self.output_dir / STATE_FOLDER
        partial = self.output_dir / (STATE_FOLDER + ".partial")
        path = self.output_dir / EMA_FILE
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
        accelerator.wait_for_everyone()
        save_file({"pairs": self.generator.get_state()}, str(partial / f"rng_process_{accelerator.process_index}.safetensors"))
        if accelerator.is_main_process:
            self._write_state(partial)
            # Swap in the complete state only now, so an interrupted save never leaves a broken one.
            previous = self.output_dir / (STATE_FOLDER + ".previous")
            if folder.is_dir():
                folder.rename(previous)
            partial.rename(folder)
            shutil.rmtree(previous, ignore_errors=True)
            model = self.ema.copy_to(TGDMDenoiser(self.denoiser.config))
            metadata = {"training_step": str(self.step)}
            if self.vae is not None and getattr(self.vae, "name", ""):
                metadata["trained_with_vae"] = self.vae.name
            save_tgdm(model, path, metadata)
        accelerator.wait_for_everyone()
        return path

    def _write_state(self, folder: Path) -> None:
        raw = self.accelerator.unwrap_model(self.module).denoiser
        save_file({k: v.detach().cpu().contiguous() for k, v in raw.state_dict().items()}, str(folder / MODEL_STATE_FILE))
        save_file({k: v.contiguous() for k, v in self.ema.shadow.items()}, str(folder / EMA_STATE_FILE))
        tensors, rest = optimizer_tensors(self.optimizer.state_dict())
        save_file(tensors, str(folder / OPTIMIZER_STATE_FILE), metadata={"optimizer": json.dumps(rest)})
        scaler = self.accelerator.scaler
        info = {
            "format": STATE_FORMAT, "version": 1, "step": self.step, "ema_updates": self.ema.updates,
            "config": json.loads(raw.config.to_json()), "settings": dataclasses.asdict(self.settings),
            "processes": self.accelerator.num_processes,
            "loss_scaler": None if scaler is None else scaler.state_dict(),
        }
        (folder / STATE_FILE).write_text(json.dumps(info, indent=1, sort_keys=True))

    def load_state(self, folder: Path) -> None:
        """Continue from a state written by :meth:`save`; a different model config is refused."""
        info_path = folder / STATE_FILE
        if not info_path.is_file():
            raise TalkingFaceError(
                f"{folder} holds no {STATE_FILE} (it may be a pickled state from an older version): "
                "start a new run folder, or delete that folder to start this one afresh"
            )
        info = json.loads(info_path.read_text())
        if info.get("format") != STATE_FORMAT:
            raise TalkingFaceError(f"{info_path} is not a TGDM training state")
        config = self.denoiser.config
        if TGDMConfig.from_json(json.dumps(info["config"])) != config:
            raise TalkingFaceError(
                f"the run in {folder.parent} trained a different model config; use the same model options, or a new --out folder"
            )
        raw = self.accelerator.unwrap_model(self.module).denoiser
        raw.load_state_dict(load_file(str(folder / MODEL_STATE_FILE)))
        self.ema.load_state_dict({"shadow": load_file(str(folder / EMA_STATE_FILE)), "updates": info["ema_updates"]})
        optimizer_path = folder / OPTIMIZER_STATE_FILE
        rest = json.loads(read_checkpoint_metadata(optimizer_path, "optimizer state")["optimizer"])
        self.optimizer.load_state_dict(optimizer_state(load_file(str(optimizer_path)), rest))
        if self.accelerator.scaler is not None and info.get("loss_scaler"):
            self.accelerator.scaler.load_state_dict(info["loss_scaler"])
        rng = folder / f"rng_process_{self.accelerator.process_index}.safetensors"
        if rng.is_file():
            self.generator.set_state(load_file(str(rng))["pairs"])
        else:  # resumed on more processes than saved it: a fresh, still reproducible draw
            self.generator.manual_seed(self.settings.seed + 7919 * info["step"] + self.accelerator.process_index)
        self.step = int(info["step"])
