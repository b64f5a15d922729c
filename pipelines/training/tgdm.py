"""Training TGDM by self-reconstruction: the target frame is denoised from its render I_3d and
coefficients with texture attention on another frame of the same person (paper 1: plain ε-MSE).

HF accelerate runs it on one CPU, one GPU, several GPUs or nodes (``accelerate launch``); mixed
precision on GPU. Latent mode trains on the frozen VAE's latents of the photos (cached as they are
first drawn), while the renders stay pixels for the denoiser's render stem.

The resumable state (``OUT/training_state/``, :mod:`.state`: safetensors and JSON, never pickle)
holds the raw weights, the EMA weights, the optimizer and every process's pair/noise generator state;
``trainer_state.json`` the step, EMA update count, config, settings and fp16 loss-scaler state.
Global torch/numpy/python RNG states are not needed: every random draw of the training comes from
the trainer's own generator.
"""
from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from ..errors import TalkingFaceError
from ..generator.checkpoint import save_tgdm
from ..generator.config import TGDMConfig
from ..generator.inputs import missing_vae_error, to_channels_first, to_model_images, warp_condition
from ..generator.tgdm import TGDMDenoiser
from ..generator.vae import LatentCodec
from ..morphable.model import MorphableModel
from .pair_warp import PairWarper
from .state import (
    STATE_FOLDER,
    load_model_weights,
    load_optimizer,
    load_rng_states,
    read_trainer_state,
    restore_scaler,
    save_model_weights,
    save_optimizer,
    save_weights,
    scaler_state,
    write_state_folder,
    write_trainer_state,
)
from .synthetic_faces import FaceViews

MIXED_PRECISION = ("no", "bf16", "fp16")
EMA_FILE = "tgdm_ema.safetensors"
STATE_FORMAT = "talkingface.tgdm-training-state"
EMA_STATE_FILE = "ema.safetensors"


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


def with_coefficient_statistics(config: TGDMConfig, coefficients: torch.Tensor) -> TGDMConfig:
    """``config`` carrying the per-dimension mean and spread of the training coefficients ``[N, D]``;
    dimensions that never vary (a fixed translation in synthetic data) keep a spread of 1."""
    mean = coefficients.double().mean(0)
    std = coefficients.double().std(0)
    std = torch.where(std > 1e-4, std, torch.ones_like(std))
    return dataclasses.replace(
        config, coefficient_mean=tuple(round(v, 6) for v in mean.tolist()), coefficient_std=tuple(round(v, 6) for v in std.tolist())
    )


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
            batch.get("identity"), batch["geometry_keep"], batch["texture_keep"], batch.get("warped_source"),
        )


def pair_batch(
    views: FaceViews, size: int, generator: torch.Generator, settings: TrainingSettings, device: torch.device,
    latents: Callable[[FaceViews, torch.Tensor], torch.Tensor] | None = None, warper: PairWarper | None = None,
    identity: bool = False,
) -> dict[str, torch.Tensor]:
    """A random batch of (source, target) views of one identity each, in the model's layout and range.
    With ``latents`` (latent mode) the target and source are their VAE latents; renders and surface
    maps stay pixels. With ``warper`` the batch holds the source warped onto each target's geometry.
    With ``identity`` it holds the source view's identity descriptor (same-identity reconstruction:
    the token names the person the target shows, which is what lets the generator swap)."""
    sources, targets = views.pairs(size, generator)
    dtype = torch.float32
    extra = {}
    if identity:
        extra["identity"] = views.descriptors[sources].to(device=device, dtype=dtype)
    if warper is not None:
        warped, valid = warper(views.photos[sources], views.coefficients[sources], views.coefficients[targets])
        extra["warped_source"] = warp_condition(warped, valid, device, dtype)
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
        **extra,
    }


def start_from_base(denoiser: TGDMDenoiser, base: TGDMDenoiser) -> None:
    """Copy ``base``'s weights into ``denoiser``, which may add an identity token the base lacks: that
    token starts at zero (it carries no identity yet), so training begins close to the base generator. Anything else that
    differs is an error naming the differing settings."""
    ignored = {"identity_dim"}
    different = sorted(
        name for name, value in vars(base.config).items() if name not in ignored and getattr(denoiser.config, name) != value
    )
    if different:
        raise TalkingFaceError(
            f"the base generator differs from the one to train in {', '.join(different)}: train with the base's "
            "settings (only the identity token may be added)"
        )
    if base.config.identity_dim and base.config.identity_dim != denoiser.config.identity_dim:
        raise TalkingFaceError(
            f"the base generator's identity token takes {base.config.identity_dim} values, the new one "
            f"{denoiser.config.identity_dim}: keep the base's identity width"
        )
    missing, unexpected = denoiser.load_state_dict(base.state_dict(), strict=False)
    new = [name for name in missing if ".identity_token." not in name]
    if new or unexpected:
        raise TalkingFaceError(f"the base generator's weights do not fit: missing {new[:5]}, unexpected {unexpected[:5]}")
    with torch.no_grad():
        for name, parameter in denoiser.named_parameters():
            if name in missing:
                parameter.zero_()


class TGDMTrainer:
    """Trains a :class:`TGDMDenoiser` from ``config`` (or continues the run saved in ``output_dir``).
    A latent-mode config needs ``vae``, the frozen VAE whose latents it learns to denoise; a config
    with ``warp_condition`` needs ``face_model``, the 3DMM the data's coefficients belong to. A new run
    starts from ``base``'s weights when given (see :func:`start_from_base`)."""

    # What the run writes: the shipped checkpoint's file name and the state folder's format tag.
    checkpoint_file = EMA_FILE
    state_format = STATE_FORMAT

    def __init__(
        self, config: TGDMConfig, settings: TrainingSettings, output_dir: str | Path, vae: LatentCodec | None = None,
        face_model: MorphableModel | None = None, base: TGDMDenoiser | None = None,
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
        if config.warp_condition and face_model is None:
            raise TalkingFaceError(
                "a generator conditioned on the warped source trains with the face model its data was fitted with"
            )
        self.warper = PairWarper(face_model, config.pixel_size) if config.warp_condition else None
        self.accelerator = Accelerator(
            mixed_precision=settings.mixed_precision, cpu=not torch.cuda.is_available()
        )
        set_seed(settings.seed)
        self.denoiser = TGDMDenoiser(config)
        if base is not None:
            start_from_base(self.denoiser, base)
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
        batch = pair_batch(views, self.settings.batch_size, self.generator, self.settings, device, self.latents, self.warper,
                           identity=bool(self.denoiser.config.identity_dim))
        clean = batch["target"]
        noise = torch.randn(clean.shape, generator=self.generator).to(device)
        timesteps = torch.randint(
            self.noise_schedule.config.num_train_timesteps, (clean.shape[0],), generator=self.generator
        ).to(device)
        noisy = self.noise_schedule.add_noise(clean, noise, timesteps)
        prediction_type = self.noise_schedule.config.prediction_type
        if prediction_type == "v_prediction":
            target = self.noise_schedule.get_velocity(clean, noise, timesteps)
        elif prediction_type == "sample":
            target = clean
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
        self, views: FaceViews, time_limit_s: float | None = None, log: Callable[[str], None] = print,
        on_step: Callable[[int, float], None] | None = None,
    ) -> Path:
        """Train up to ``settings.steps`` (or until ``time_limit_s``); returns the EMA checkpoint's path.
        ``views`` is any dataset with :class:`FaceViews`' interface (photos, renders, surfaces,
        coefficients and ``pairs()``), channel-last images at the generator's pixel size.
        ``on_step(step, loss)`` runs after every step (progress, previews; an exception it raises
        stops the training between two steps, so :meth:`save` then writes a state that resumes exactly)."""
        self._check_views(views)
        started = time.monotonic()
        running = None
        self.module.train()
        while self.step < self.settings.steps:
            loss = self.training_step(views)
            running = loss if running is None else 0.95 * running + 0.05 * loss
            if on_step is not None:
                on_step(self.step, loss)
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
        if config.identity_dim:
            descriptors = getattr(views, "descriptors", None)
            if descriptors is None or descriptors.shape[1:] != (config.identity_dim,):
                found = "none" if descriptors is None else f"{descriptors.shape[1]} values"
                raise TalkingFaceError(
                    f"this generator has a {config.identity_dim}-value identity token but the training data's identity "
                    f"descriptors have {found}: train it on data with descriptors of that width (synthetic faces give "
                    "ArcFace-wide ones), or without the identity token"
                )
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
        path = self.output_dir / self.checkpoint_file
        write_state_folder(accelerator, self.output_dir / STATE_FOLDER, {"pairs": self.generator.get_state()},
                           self._write_state)
        if accelerator.is_main_process:
            save_tgdm(*self.checkpoint_model())
        accelerator.wait_for_everyone()
        return path

    def checkpoint_model(self) -> tuple[TGDMDenoiser, Path, dict[str, str]]:
        """The EMA model to ship, its path and its extra metadata."""
        model = self.ema.copy_to(TGDMDenoiser(self.denoiser.config))
        metadata = {"training_step": str(self.step)}
        if self.vae is not None and getattr(self.vae, "name", ""):
            metadata["trained_with_vae"] = self.vae.name
        return model, self.output_dir / self.checkpoint_file, metadata

    def state_info(self) -> dict:
        """Small values of the run for ``trainer_state.json``."""
        raw = self.accelerator.unwrap_model(self.module).denoiser
        return {
            "step": self.step, "ema_updates": self.ema.updates,
            "config": json.loads(raw.config.to_json()), "settings": dataclasses.asdict(self.settings),
            "processes": self.accelerator.num_processes, "loss_scaler": scaler_state(self.accelerator),
        }

    def _write_state(self, folder: Path) -> None:
        raw = self.accelerator.unwrap_model(self.module).denoiser
        save_model_weights(raw, folder)
        save_weights(self.ema.shadow, folder / EMA_STATE_FILE)
        save_optimizer(self.optimizer, folder)
        write_trainer_state(folder, self.state_format, self.state_info())

    def load_state(self, folder: Path) -> None:
        """Continue from a state written by :meth:`save`; a different model config is refused."""
        info = read_trainer_state(folder, self.state_format, "TGDM")
        config = self.denoiser.config
        if TGDMConfig.from_json(json.dumps(info["config"])) != config:
            raise TalkingFaceError(
                f"the run in {folder.parent} trained a different model config; use the same model options, or a new --out folder"
            )
        load_model_weights(self.accelerator.unwrap_model(self.module).denoiser, folder)
        self.ema.load_state_dict({"shadow": load_file(str(folder / EMA_STATE_FILE)), "updates": info["ema_updates"]})
        load_optimizer(self.optimizer, folder)
        restore_scaler(self.accelerator, info.get("loss_scaler"))
        rng = load_rng_states(folder, self.accelerator.process_index)
        if rng is not None:
            self.generator.set_state(rng["pairs"])
        else:  # resumed on more processes than saved it: a fresh, still reproducible draw
            self.generator.manual_seed(self.settings.seed + 7919 * info["step"] + self.accelerator.process_index)
        self.step = int(info["step"])
