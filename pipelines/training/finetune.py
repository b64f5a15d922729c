"""Training a TGDM generator on one person's prepared footage: from a base generator or from scratch.

The run lives in its own folder (the trainer's EMA checkpoint and its pickle-free resumable state,
:mod:`.state`); the finished generator is copied to the file the user named, which must not exist:
nothing the user has is ever overwritten. Interrupting (an exception from ``on_step``, such as
ComfyUI's Cancel) saves the state between two steps, so running again with the same name continues
exactly where it stopped. Out of GPU memory, the batch is halved until one fits.
"""
from __future__ import annotations

import dataclasses
import gc
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import TalkingFaceError
from ..generator.config import TGDMConfig
from ..generator.inputs import GeneratorInputs
from ..generator.sampler import SamplerSettings, TGDMSampler
from ..generator.tgdm import TGDMDenoiser
from ..morphable.model import MorphableModel
from .footage import TrainingFootage
from .pair_warp import PairWarper
from .state import STATE_FOLDER, read_trainer_state
from .tgdm import STATE_FORMAT, TGDMTrainer, TrainingSettings, with_coefficient_statistics
from .video_shards import VideoFaceShards

# Sampling steps of the previews shown while training (a glimpse, not the final quality).
PREVIEW_STEPS = 10


@dataclass(frozen=True)
class FinetuneSettings:
    steps: int = 1000
    batch_size: int = 8
    learning_rate: float = 1e-4
    resolution: int = 64
    channels: int = 32  # base width of a generator trained from scratch (a base brings its own)
    time_limit_s: float = 0.0  # 0: none
    preview_every: int = 100  # 0: no previews
    checkpoint_every: int = 500
    ema_decay: float = 0.995
    seed: int = 0

    def __post_init__(self) -> None:
        check_training_numbers(self, ("steps", "batch_size", "channels", "checkpoint_every"))


def check_training_numbers(settings, counts: tuple[str, ...]) -> None:
    """The settings every fine-tuning shares: ``counts`` at least 1, a positive learning rate, and a
    resolution the generators' down-sampling takes."""
    for name in counts:
        if getattr(settings, name) < 1:
            raise TalkingFaceError(f"{name} must be at least 1, got {getattr(settings, name)}")
    if settings.learning_rate <= 0:
        raise TalkingFaceError(f"learning_rate must be positive, got {settings.learning_rate}")
    if settings.resolution < 16 or settings.resolution % 8:
        raise TalkingFaceError(f"resolution must be a multiple of 8 of at least 16 px, got {settings.resolution}")


@dataclass(frozen=True)
class FinetuneResult:
    path: Path  # the saved generator
    step: int  # steps trained in all (an interrupted and resumed run counts every step)
    batch_size: int  # the batch that was trained with (smaller than asked when memory ran out)
    loss: float | None  # the last step's loss (None when the run had nothing left to train)
    notes: list[str]


def scratch_config(resolution: int, channels: int) -> TGDMConfig:
    """A pixel-space generator for ``resolution``² crops: levels down to about 16 px, texture attention on
    the levels of 32 px and less, the warped source as condition and the clean image as prediction
    (so an untrained model starts from the no-weights reenactment)."""
    multipliers = (1, 2, 2) if resolution <= 64 else (1, 2, 4, 4)
    levels = [resolution // 2**i for i in range(len(multipliers))]
    attention = tuple(size for size in levels if size <= 32)[:2] or (levels[-1],)
    groups = 8 if channels % 8 == 0 and channels >= 16 else 4
    return TGDMConfig(
        image_size=resolution, base_channels=channels, channel_multipliers=multipliers,
        attention_resolutions=attention, attention_head_channels=min(32, channels), source_base_channels=channels,
        norm_groups=groups, prediction_type="sample", warp_condition=True,
    )


def describe_config(config: TGDMConfig) -> str:
    space = f"latent ({config.image_size}² latents of the {config.vae} VAE)" if config.latent else "pixel"
    return (f"{config.pixel_size} px, {space} space, {config.base_channels} channels, levels "
            f"{list(config.channel_multipliers)}, warp condition {'on' if config.warp_condition else 'off'}, "
            f"identity token {config.identity_dim or 'none'}")


def check_base(base: TGDMDenoiser, name: str, resolution: int) -> None:
    """A base must be a pixel-space generator of the resolution asked for; the error names its settings."""
    check_pixel_base(base.config, name, resolution, "generator", describe_config(base.config))


def check_pixel_base(config, name: str, resolution: int, kind: str, described: str) -> None:
    """A base ``config`` (of a ``kind`` of model, ``described``) must be pixel-space at ``resolution``."""
    if config.latent:
        raise TalkingFaceError(
            f"base '{name}' is a latent-mode {kind} ({described}); training here makes pixel-space "
            f"{kind}s: pick a pixel-space base, or train from scratch")
    if config.pixel_size != resolution:
        raise TalkingFaceError(
            f"base '{name}' is a {config.pixel_size} px {kind} ({described}) but resolution is "
            f"{resolution}: set resolution to {config.pixel_size}, or train from scratch")


def check_new_file(path: Path) -> None:
    if path.exists():
        stem = path.stem
        raise TalkingFaceError(
            f"{path} exists already and is never overwritten: give another name, e.g. '{stem}_2'")


def _check_resumable(run_folder: Path, config: TGDMConfig) -> int:
    """The step an interrupted run in ``run_folder`` stopped at (0: none), refusing one of another model."""
    state = run_folder / STATE_FOLDER
    if not state.is_dir():
        return 0
    info = read_trainer_state(state, STATE_FORMAT, "TGDM")
    saved = TGDMConfig.from_json(json.dumps(info["config"]))
    if saved.to_json() != config.to_json():
        raise TalkingFaceError(
            f"an interrupted run of this name in {run_folder} trains another generator ({describe_config(saved)}); "
            f"this one would be {describe_config(config)}: use the settings and base it had to continue it, another "
            "name, or delete that folder to start afresh")
    return int(info["step"])


class PreviewSampler:
    """Samples one fixed pair of the footage (its first frame as source, a later one as target) with
    the current EMA weights: the target and the generated frame side by side, ``[H, 2W, 3]``."""

    def __init__(self, views: VideoFaceShards, face_model: MorphableModel, size: int) -> None:
        sources, targets = views.evaluation_pairs(per_video=1)
        source, target = sources[:1], targets[:1]
        photos = views.photos[source]
        self.truth = views.photos[target][0]
        warped, valid = PairWarper(face_model, size)(photos, views.coefficients[source], views.coefficients[target])
        self.inputs = GeneratorInputs(
            source=photos, renders=views.renders[target], coefficients=views.coefficients[target],
            target_surfaces=views.surfaces[target], source_surface=views.surfaces[source],
            identity=None if views.descriptors is None else views.descriptors[source],
            warped_sources=warped, warp_masks=valid,
        )

    @torch.no_grad()
    def __call__(self, trainer: TGDMTrainer) -> torch.Tensor:
        config = trainer.denoiser.config
        model = trainer.ema.copy_to(TGDMDenoiser(config)).eval()
        inputs = dataclasses.replace(
            self.inputs, identity=self.inputs.identity if config.identity_dim else None,
            warped_sources=self.inputs.warped_sources if config.warp_condition else None,
            warp_masks=self.inputs.warp_masks if config.warp_condition else None)
        sampled = TGDMSampler(model, SamplerSettings(steps=PREVIEW_STEPS, batch_size=1, chunk_size=1)).sample(inputs)
        return torch.cat([self.truth, sampled[0].cpu()], dim=1)


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _interrupted_between_steps(callback: Callable[[int, float], None]) -> Callable[[int, float], None]:
    """``callback`` whose exceptions are marked: they came after a finished step, so a save is exact."""

    def call(step: int, loss: float) -> None:
        try:
            callback(step, loss)
        except BaseException as error:
            error.between_steps = True  # type: ignore[attr-defined]
            raise

    return call


def finetune_generator(
    footage: TrainingFootage, output: Path, run_folder: Path, settings: FinetuneSettings,
    base: TGDMDenoiser | None = None, base_name: str = "",
    on_step: Callable[[int, float, torch.Tensor | None], None] | None = None,
    log: Callable[[str], None] = print,
) -> FinetuneResult:
    """Train on ``footage`` and save the EMA generator as ``output`` (a new file). ``on_step(step, loss,
    preview)`` runs after every step, with a preview image every ``preview_every`` steps (else None); an
    exception it raises (an interrupt) leaves ``run_folder`` resumable and propagates."""
    output, run_folder = Path(output), Path(run_folder)
    check_new_file(output)
    if base is not None:
        check_base(base, base_name, settings.resolution)
    views = VideoFaceShards(footage.folder, image_size=settings.resolution)
    if len(views) < settings.batch_size:
        raise TalkingFaceError(
            f"the footage has {len(views)} usable frames, fewer than batch_size {settings.batch_size}: lower "
            f"batch_size to {max(1, len(views))} or less, or prepare more footage of the person")
    if len(views) < 2:
        raise TalkingFaceError("the footage has one usable frame; training pairs two frames of the person: prepare more footage")
    if base is not None and base.config.coefficient_dim != views.coefficients.shape[1]:
        raise TalkingFaceError(
            f"base '{base_name}' takes {base.config.coefficient_dim} face coefficients but the footage was fitted with "
            f"a face model of {views.coefficients.shape[1]} ({describe_config(base.config)}): prepare the footage "
            "with the face model the base was trained with (the demo generator: the built-in demo face), or train "
            "from scratch")
    config = base.config if base is not None else with_coefficient_statistics(
        scratch_config(settings.resolution, settings.channels), views.coefficients)
    resumed_at = _check_resumable(run_folder, config)
    notes = [f"continued the interrupted run from step {resumed_at}"] if resumed_at else []
    if resumed_at >= settings.steps:
        notes.append(f"the run had reached step {resumed_at} already; steps {settings.steps} adds none")
    training = TrainingSettings(
        steps=settings.steps, batch_size=settings.batch_size, learning_rate=settings.learning_rate,
        ema_decay=settings.ema_decay, checkpoint_every=settings.checkpoint_every, seed=settings.seed,
    )
    run_folder.mkdir(parents=True, exist_ok=True)
    trainer = TGDMTrainer(config, training, run_folder, face_model=footage.face_model,
                          base=base if not resumed_at else None)
    preview = PreviewSampler(views, footage.face_model, settings.resolution) if settings.preview_every else None
    last_loss: float | None = None

    def step_done(step: int, loss: float) -> None:
        nonlocal last_loss
        last_loss = loss
        image = None
        if preview is not None and (step % settings.preview_every == 0 or step == settings.steps):
            image = preview(trainer)
        if on_step is not None:
            on_step(step, loss, image)

    started = time.monotonic()
    while True:
        limit = None
        if settings.time_limit_s > 0:
            limit = max(settings.time_limit_s - (time.monotonic() - started), 0.0)
        try:
            checkpoint = trainer.train(views, limit, log=log, on_step=_interrupted_between_steps(step_done))
            break
        except BaseException as error:
            if getattr(error, "between_steps", False):
                trainer.save()
                log(f"interrupted at step {trainer.step}: the state in {run_folder} resumes it")
                raise
            if not is_out_of_memory(error):
                raise
            batch = trainer.settings.batch_size
            free_memory()
            if batch == 1:
                raise TalkingFaceError(
                    f"out of memory even with batch_size 1 at resolution {settings.resolution} "
                    f"({describe_config(config)}): lower the resolution, train a smaller generator (fewer channels), "
                    "or free memory by closing other models") from None
            trainer.settings = dataclasses.replace(trainer.settings, batch_size=batch // 2)
            message = (f"batch_size {batch} ran out of memory; continuing with {batch // 2} "
                       f"(set batch_size to {batch // 2} next time)")
            notes.append(message)
            log(message)
    final_batch = trainer.settings.batch_size
    if final_batch != settings.batch_size:
        notes.append(f"batch_size {final_batch} fits in memory")
    if trainer.step < settings.steps:
        notes.append(f"the time limit stopped the training at step {trainer.step} of {settings.steps}")
    publish_checkpoint(checkpoint, output)
    shutil.rmtree(run_folder, ignore_errors=True)
    return FinetuneResult(output, trainer.step, final_batch, last_loss, notes)


def publish_checkpoint(checkpoint: Path, output: Path) -> None:
    """Copy the finished checkpoint to ``output`` without ever replacing a file that appeared meanwhile."""
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.name}.partial")
    shutil.copyfile(checkpoint, partial)
    try:
        os.link(partial, output)  # fails if output exists: no overwrite, even in a race
    except FileExistsError:
        raise TalkingFaceError(
            f"{output} appeared while training and is never overwritten; the trained model is kept as "
            f"{checkpoint}: copy it under another name") from None
    except OSError:  # a file system without hard links
        check_new_file(output)
        shutil.copyfile(partial, output)
    finally:
        partial.unlink(missing_ok=True)
