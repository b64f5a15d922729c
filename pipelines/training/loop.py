"""The training loop of the window transformers (the landmark completion transformer, Emo-A2E).

AdamW with a linear warm-up and a cosine decay, under HF accelerate (CPU, one or many GPUs, mixed
precision as configured by ``accelerate config``); validation every ``validate_every`` steps and
at the end, keeping ``best.safetensors`` and ``last.safetensors``; and a resumable state
(:mod:`.state`: safetensors and JSON, never pickle) in ``checkpoint_dir/training_state`` at every
validation: running again with the same folder continues exactly where the run stopped.

Exact continuation needs every random draw to be part of that state: the training windows are
shuffled from (seed, epoch) alone (:class:`ShuffledWindows`), so the step says where the data
stands; dropout draws from torch's global generators, whose states are saved per process; the data
loaders draw their worker seeds from generators of their own, not from the global ones.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import TalkingFaceError
from .state import (
    STATE_FOLDER,
    global_rng_states,
    load_model_weights,
    load_optimizer,
    load_rng_states,
    read_trainer_state,
    restore_global_rng,
    restore_scaler,
    save_model_weights,
    save_optimizer,
    scaler_state,
    write_state_folder,
    write_trainer_state,
)


@dataclass
class TrainConfig:
    steps: int = 2000
    batch_size: int = 32
    learning_rate: float = 5e-4
    weight_decay: float = 0.01
    warmup_steps: int = 100
    velocity_weight: float = 1.0
    validate_every: int = 200
    train_windows: int = 100_000
    validation_windows: int = 512
    seed: int = 0
    num_workers: int = 0
    # Landmark model only: windows whose references are one frame repeated (a still portrait, the
    # pack's main use).
    portrait_references: float = 0.5


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """The learning-rate factor at ``step``: a linear warm-up, then a cosine decay to 0 at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def velocity_l1(predicted: torch.Tensor, target: torch.Tensor, velocity_weight: float) -> torch.Tensor:
    """L1 on ``[B, T, ...]`` values plus ``velocity_weight`` × L1 on their frame-to-frame motion."""
    loss = (predicted - target).abs().mean()
    if predicted.shape[1] > 1 and velocity_weight > 0:
        loss = loss + velocity_weight * (predicted.diff(dim=1) - target.diff(dim=1)).abs().mean()
    return loss


@torch.no_grad()
def validation_l1(
    model: nn.Module, loader: DataLoader,
    candidates: Callable[[nn.Module, dict[str, torch.Tensor]], Sequence[torch.Tensor]],
) -> list[float]:
    """Mean absolute error per value, over the validation windows, of each of ``candidates(model,
    batch)`` (the model's prediction and baselines, each broadcasting to ``batch["target"]``)."""
    model.eval()
    sums, count = None, 0
    device = next(model.parameters()).device
    for batch in loader:
        batch = {key: value.to(device) for key, value in batch.items()}
        target = batch["target"]
        errors = torch.stack([(candidate - target).abs().sum() for candidate in candidates(model, batch)]).cpu()
        sums = errors if sums is None else sums + errors
        count += target.numel()
    model.train()
    return (sums / count).tolist()


class ShuffledWindows(Sampler[int]):
    """The indices of a dataset in a new order every epoch, drawn from (seed, epoch) alone, starting
    anywhere in an epoch (:meth:`start_at`): a resumed run draws what the uninterrupted one would."""

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.seed = seed
        self.epoch = 0
        self.skip = 0

    def start_at(self, epoch: int, skip: int) -> None:
        self.epoch, self.skip = epoch, skip

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        yield from torch.randperm(self.size, generator=generator)[self.skip:].tolist()

    def __len__(self) -> int:
        return self.size - self.skip


@dataclass(frozen=True)
class WindowTask:
    """What a model brings to :func:`train_windows`: ``loss(model, batch)``, ``evaluate(model,
    validation_loader)`` returning a result with ``model_l1``, ``describe(result)`` naming the
    baselines for the log, and ``save_model(model, path, metadata)`` for its checkpoint files."""

    name: str
    state_format: str
    loss: Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]
    evaluate: Callable[[nn.Module, DataLoader], Any]
    describe: Callable[[Any], str]
    save_model: Callable[[nn.Module, Path, dict[str, str]], None]


def train_windows(
    model: nn.Module,
    train_set: Dataset,
    validation_set: Dataset,
    train_config: TrainConfig,
    task: WindowTask,
    checkpoint_dir: str | Path | None = None,
    log: Callable[[str], None] = print,
    until_step: int | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> tuple[nn.Module, list[tuple[int, Any]]]:
    """Train ``model`` (which has a ``config`` with ``to_json()``) up to ``train_config.steps``, or
    stop after ``until_step`` with its state saved (to split a run over several jobs; the schedule
    still spans ``steps``). Returns the unwrapped model in eval mode and ``(step, evaluation)`` of
    each validation of this call. A state in ``checkpoint_dir`` is continued; one of a different
    model config is refused. ``on_step(step, loss)`` runs after every step; an exception it raises
    (an interrupt) saves the state first, so the run continues exactly from that step."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    if len(train_set) < train_config.batch_size * accelerator.num_processes:
        raise TalkingFaceError(
            f"train_windows ({len(train_set)}) must be at least the batch size across processes "
            f"({train_config.batch_size * accelerator.num_processes})"
        )
    optimizer = torch.optim.AdamW(model.parameters(), lr=train_config.learning_rate, weight_decay=train_config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, partial(warmup_cosine, warmup_steps=train_config.warmup_steps, total_steps=train_config.steps)
    )
    sampler = ShuffledWindows(len(train_set), train_config.seed)
    train_loader = DataLoader(train_set, batch_size=train_config.batch_size, sampler=sampler, drop_last=True,
                              num_workers=train_config.num_workers, generator=torch.Generator().manual_seed(train_config.seed))
    validation_loader = DataLoader(validation_set, batch_size=train_config.batch_size, generator=torch.Generator())
    model, optimizer, train_loader, validation_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, validation_loader, scheduler
    )
    steps_per_epoch = len(train_loader)
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    state_folder = checkpoint_dir / STATE_FOLDER if checkpoint_dir is not None else None
    step, best = 0, math.inf
    if state_folder is not None and state_folder.is_dir():
        info = read_trainer_state(state_folder, task.state_format, task.name)
        unwrapped = accelerator.unwrap_model(model)
        if info["model_config"] != json.loads(unwrapped.config.to_json()):
            raise TalkingFaceError(
                f"the run in {checkpoint_dir} trained a different {task.name} config; use the same model options, "
                "or a new checkpoint folder"
            )
        load_model_weights(unwrapped, state_folder)
        load_optimizer(optimizer, state_folder)
        scheduler.load_state_dict(info["scheduler"])
        restore_scaler(accelerator, info.get("loss_scaler"))
        rng = load_rng_states(state_folder, accelerator.process_index)
        if rng is not None:
            restore_global_rng(rng)
        step, best = int(info["step"]), float(info["best_validation_l1"])
        log(f"resumed at step {step}")

    def save(result: Any) -> None:
        accelerator.wait_for_everyone()
        unwrapped = accelerator.unwrap_model(model)
        if accelerator.is_main_process:
            metadata = {"step": str(step), "validation_l1": f"{result.model_l1:.6f}"}
            task.save_model(unwrapped, checkpoint_dir / "last.safetensors", metadata)
            if result.model_l1 < best:
                task.save_model(unwrapped, checkpoint_dir / "best.safetensors", metadata)
        save_state(min(best, result.model_l1))

    def save_state(best_so_far: float) -> None:
        unwrapped = accelerator.unwrap_model(model)

        def write_main(folder: Path) -> None:
            save_model_weights(unwrapped, folder)
            save_optimizer(optimizer, folder)
            write_trainer_state(folder, task.state_format, {
                "step": step, "best_validation_l1": best_so_far,
                "model_config": json.loads(unwrapped.config.to_json()),
                "train_config": dataclasses.asdict(train_config), "scheduler": scheduler.state_dict(),
                "processes": accelerator.num_processes, "loss_scaler": scaler_state(accelerator),
            })

        write_state_folder(accelerator, state_folder, global_rng_states(), write_main)

    last_step = train_config.steps if until_step is None else min(until_step, train_config.steps)
    history: list[tuple[int, Any]] = []
    model.train()
    while step < last_step:
        epoch, batches_done = divmod(step, steps_per_epoch)
        sampler.start_at(epoch, batches_done * train_config.batch_size * accelerator.num_processes)
        for batch in train_loader:
            loss = task.loss(model, batch)
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            if step % train_config.validate_every == 0 or step == last_step:
                result = task.evaluate(model, validation_loader)
                history.append((step, result))
                log(f"step {step}: loss {loss.item():.4f}, validation L1 {result.model_l1:.4f} ({task.describe(result)})")
                if checkpoint_dir is not None:
                    save(result)
                best = min(best, result.model_l1)
            if on_step is not None:
                try:
                    on_step(step, loss.item())
                except BaseException:
                    if checkpoint_dir is not None:
                        save_state(best)
                    raise
            if step >= last_step:
                break
    return accelerator.unwrap_model(model).eval(), history


# ---- command line (scripts/train_*.py) ---------------------------------------------------------
TRAIN_OPTIONS = ("steps", "batch_size", "warmup_steps", "validate_every", "validation_windows", "seed", "num_workers",
                 "learning_rate", "weight_decay", "velocity_weight")


def add_field_options(group: argparse._ActionsContainer, defaults: object, names: Sequence[str]) -> None:
    """``--kebab-case`` options for the named fields of a dataclass instance, typed and defaulted by
    its values (a tuple field takes one or more values)."""
    for name in names:
        value = getattr(defaults, name)
        flag = f"--{name.replace('_', '-')}"
        if isinstance(value, tuple):
            group.add_argument(flag, type=type(value[0]), nargs="+", default=list(value))
        else:
            group.add_argument(flag, type=type(value), default=value)


def fields_from_options(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    """The values of :func:`add_field_options`' options, by field name (lists back to tuples)."""
    return {name: tuple(value) if isinstance(value, list) else value
            for name, value in ((name, getattr(args, name)) for name in names)}


def add_data_options(parser: argparse.ArgumentParser, clip_seconds: float, validation_help: str) -> argparse._ArgumentGroup:
    """The "data" option group of a trainer script: clip folders, or synthetic clips (whose own
    options the script adds to the returned group) written to ``--write-clips`` or trained on."""
    data = parser.add_argument_group("data")
    data.add_argument("--train", type=Path, help="folder of training clips")
    data.add_argument("--validation", type=Path, help=validation_help)
    data.add_argument("--clip-seconds", type=float, default=clip_seconds, help="length of each synthetic clip")
    data.add_argument("--write-clips", type=Path, help="only write the synthetic clips to this folder")
    return data


def add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, help="checkpoint folder (running again with it continues the run)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")


def training_clips(
    parser: argparse.ArgumentParser, args: argparse.Namespace, synthetic: Callable[[], tuple[list, list]] | None,
    synthetic_option: str, load: Callable[[Path], Any], save: Callable[[Any, Path], None],
) -> tuple[list, list] | None:
    """The train and validation clips the command line asks for: ``synthetic()`` ones when given
    (with ``--write-clips`` only written there as ``<folder>/<split>/clip_00000.safetensors``, …:
    then None), else those of the ``--train`` and ``--validation`` folders; ``synthetic_option``
    names the option that asks for synthetic clips."""
    if synthetic is not None:
        train, validation = synthetic()
        if args.write_clips:
            for split, clips in (("train", train), ("validation", validation)):
                (args.write_clips / split).mkdir(parents=True, exist_ok=True)
                for index, clip in enumerate(clips):
                    save(clip, args.write_clips / split / f"clip_{index:05d}.safetensors")
            print(f"wrote {len(train)} + {len(validation)} clips to {args.write_clips}")
            return None
    elif args.train and args.validation:
        train, validation = _clips_in(args.train, load), _clips_in(args.validation, load)
    else:
        parser.error(f"give --train and --validation folders, or {synthetic_option}")
    if args.out is None:
        parser.error("--out is required for training")
    return train, validation


def _clips_in(directory: Path, load: Callable[[Path], Any]) -> list:
    paths = sorted(directory.glob("*.safetensors"))
    if not paths:
        raise SystemExit(f"no .safetensors clips in {directory}")
    return [load(path) for path in paths]


def last_validation(history: list[tuple[int, Any]], out: Path) -> tuple[int, Any]:
    if not history:
        raise SystemExit(f"the run in {out} has already reached --steps: give more --steps to continue it, or a new --out")
    return history[-1]
