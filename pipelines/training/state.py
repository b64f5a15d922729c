"""Resumable training state in safetensors and JSON only, never pickle.

A state folder holds the raw weights, the optimizer's tensors (its hyper-parameters as JSON in the
metadata), each process's random generator states as ``.safetensors`` files, and the step, config,
settings and the rest of the trainer's small values in ``trainer_state.json``. accelerate's
``save_state`` is not used because, even with ``safe_serialization=True``, only the model goes to
safetensors: the optimizer (``optimizer.bin``), scaler (``scaler.pt``), RNG states
(``random_states_N.pkl``) and registered objects (``custom_checkpoint_N.pkl``, read back with
``weights_only=False``) are pickled.

A folder is written beside its final place (``<name>.partial``) and swapped in only when complete,
so an interrupted save never leaves a broken state.
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..checkpoints import read_checkpoint_metadata
from ..errors import TalkingFaceError

STATE_FOLDER = "training_state"
STATE_FILE = "trainer_state.json"
MODEL_STATE_FILE = "model.safetensors"
OPTIMIZER_STATE_FILE = "optimizer.safetensors"


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


def save_weights(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file({name: value.detach().cpu().contiguous() for name, value in tensors.items()}, str(path))


def save_optimizer(optimizer: torch.optim.Optimizer, folder: Path) -> None:
    tensors, rest = optimizer_tensors(optimizer.state_dict())
    save_file(tensors, str(folder / OPTIMIZER_STATE_FILE), metadata={"optimizer": json.dumps(rest)})


def load_optimizer(optimizer: torch.optim.Optimizer, folder: Path) -> None:
    path = folder / OPTIMIZER_STATE_FILE
    rest = json.loads(read_checkpoint_metadata(path, "optimizer state")["optimizer"])
    optimizer.load_state_dict(optimizer_state(load_file(str(path)), rest))


def save_model_weights(model: nn.Module, folder: Path) -> None:
    save_weights(model.state_dict(), folder / MODEL_STATE_FILE)


def load_model_weights(model: nn.Module, folder: Path) -> None:
    model.load_state_dict(load_file(str(folder / MODEL_STATE_FILE)))


def _rng_path(folder: Path, process_index: int) -> Path:
    return folder / f"rng_process_{process_index}.safetensors"


def load_rng_states(folder: Path, process_index: int) -> dict[str, torch.Tensor] | None:
    """This process's generator states, or None when the run was saved by fewer processes."""
    path = _rng_path(folder, process_index)
    return load_file(str(path)) if path.is_file() else None


def global_rng_states() -> dict[str, torch.Tensor]:
    """torch's global CPU and CUDA generator states (what dropout draws from)."""
    states = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        states.update({f"torch_cuda_{index}": state for index, state in enumerate(torch.cuda.get_rng_state_all())})
    return states


def restore_global_rng(states: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(states["torch_cpu"])
    cuda = [states[f"torch_cuda_{index}"] for index in range(torch.cuda.device_count()) if f"torch_cuda_{index}" in states]
    if cuda and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def scaler_state(accelerator) -> dict | None:
    """The fp16 loss scaler's state (plain numbers), for ``trainer_state.json``."""
    return None if accelerator.scaler is None else accelerator.scaler.state_dict()


def restore_scaler(accelerator, state: dict | None) -> None:
    if accelerator.scaler is not None and state:
        accelerator.scaler.load_state_dict(state)


def write_state_folder(
    accelerator, folder: Path, rng_states: dict[str, torch.Tensor], write_main: Callable[[Path], None]
) -> None:
    """Write a complete state folder: every process its ``rng_states``, the main process the rest
    (``write_main(partial_folder)``, which writes ``trainer_state.json`` among others); then swap
    it in place of the previous one. Every process must call this."""
    partial = folder.with_name(folder.name + ".partial")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    accelerator.wait_for_everyone()
    save_file({name: state.contiguous() for name, state in rng_states.items()},
              str(_rng_path(partial, accelerator.process_index)))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_main(partial)
        previous = folder.with_name(folder.name + ".previous")
        if folder.is_dir():
            folder.rename(previous)
        partial.rename(folder)
        shutil.rmtree(previous, ignore_errors=True)
    accelerator.wait_for_everyone()


def write_trainer_state(folder: Path, state_format: str, info: dict) -> None:
    (folder / STATE_FILE).write_text(json.dumps({"format": state_format, "version": 1, **info}, indent=1, sort_keys=True))


def read_trainer_state(folder: Path, state_format: str, what: str) -> dict:
    """The ``trainer_state.json`` of a state folder, which must be a ``state_format`` one; a folder
    without it (a pickled accelerate state of an older version) is refused, never unpickled."""
    info_path = folder / STATE_FILE
    if not info_path.is_file():
        raise TalkingFaceError(
            f"{folder} holds no {STATE_FILE} (it may be a pickled state from an older version): "
            "start a new run folder, or delete that folder to start this one afresh"
        )
    info = json.loads(info_path.read_text())
    if info.get("format") != state_format:
        raise TalkingFaceError(f"{info_path} is not a {what} training state")
    return info
