"""One-file model checkpoints: weights in safetensors, the format tag, version and config as metadata.

The one layer every model file goes through, after diffusers' ``ConfigMixin`` and its loader:
:class:`CheckpointConfig` is the JSON round trip of a config dataclass (unknown fields refused,
lists back to tuples, the file named in every error), :class:`WeightMismatch` compares a file's
tensors with what a model expects (missing, unexpected, wrong-shape keys) and
:func:`load_weights_strictly` loads only when nothing is off.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import ModelFileError, TalkingFaceError

ConfigType = TypeVar("ConfigType", bound="CheckpointConfig")


class CheckpointConfig:
    """Mixin for the config dataclasses that travel as JSON in a checkpoint's ``config`` metadata.
    ``DESCRIPTION`` names the model in messages; ``LEGACY_DEFAULTS`` gives fields added after files
    were first written the value those older files were trained with."""

    DESCRIPTION: ClassVar[str] = "model"
    LEGACY_DEFAULTS: ClassVar[Mapping[str, Any]] = {}

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls: type[ConfigType], text: str) -> ConfigType:
        """The config ``text`` describes; JSON lists become the dataclass's tuples. Fields this
        version does not know are refused (they would change the model silently)."""
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise ModelFileError(f"the {cls.DESCRIPTION} config in the checkpoint is not valid JSON: {error}") from error
        if not isinstance(values, dict):
            raise ModelFileError(f"the {cls.DESCRIPTION} config in the checkpoint is not a JSON object")
        unknown = sorted(set(values) - {field.name for field in dataclasses.fields(cls)})
        if unknown:
            raise ModelFileError(
                f"the {cls.DESCRIPTION} config has unknown settings this version does not know: {unknown}; it was "
                "written by another version of the pack: update the pack, or train or convert it with this one"
            )
        values = {name: tuple(value) if isinstance(value, list) else value for name, value in values.items()}
        return cls(**{**cls.LEGACY_DEFAULTS, **values})

    @classmethod
    def from_metadata(cls: type[ConfigType], metadata: Mapping[str, str], file_name: str) -> ConfigType:
        """The config in a checkpoint's metadata; every problem is a :class:`ModelFileError` naming the file."""
        if "config" not in metadata:
            raise ModelFileError(f"{file_name} has no 'config' in its metadata: it is not a {cls.DESCRIPTION} "
                                 "checkpoint written by this pack")
        try:
            return cls.from_json(metadata["config"])
        except TypeError as error:  # a field of the wrong kind, e.g. a string where a number belongs
            raise ModelFileError(f"{file_name} has an unusable {cls.DESCRIPTION} config: {error}") from error
        except TalkingFaceError as error:  # unknown fields, or values the config's own checks refuse
            raise ModelFileError(f"{file_name}: {error}") from error


@dataclass(frozen=True)
class WeightMismatch:
    """How a file's tensors differ from what a model expects, key by key."""

    missing: list[str]
    unexpected: list[str]
    wrong_shapes: list[tuple[str, tuple[int, ...], tuple[int, ...]]]  # (key, in the file, expected)

    @classmethod
    def between(cls, expected: Mapping[str, Sequence[int]], tensors: Mapping[str, torch.Tensor]) -> WeightMismatch:
        """``expected`` maps each key to its shape (a state dict's tensors or their shapes)."""
        shapes = {key: tuple(getattr(value, "shape", value)) for key, value in expected.items()}
        return cls(
            missing=sorted(set(shapes) - set(tensors)),
            unexpected=sorted(set(tensors) - set(shapes)),
            wrong_shapes=[(key, tuple(tensors[key].shape), shapes[key])
                          for key in sorted(set(shapes) & set(tensors)) if tuple(tensors[key].shape) != shapes[key]],
        )

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.wrong_shapes)

    def shape_notes(self) -> list[str]:
        """``"key (found) (expected shape)"`` for every wrong-shape key."""
        return [f"{key} {found} (expected {needed})" for key, found, needed in self.wrong_shapes]

    def labelled(self, listing) -> list[str]:
        """``missing …``, ``unexpected …``, ``wrong shape …`` for the kinds present, each list
        written by ``listing`` (a function of a list of strings)."""
        parts = (("missing", self.missing), ("unexpected", self.unexpected), ("wrong shape", self.shape_notes()))
        return [f"{label} {listing(keys)}" for label, keys in parts if keys]

    def problems(self, needs: str = "the config") -> list[str]:
        """Sentences as diffusers' loader words them: how many are missing or extra with a few
        examples, then up to three wrong shapes with what ``needs`` (e.g. "the config") needs."""
        problems = []
        if self.missing:
            problems.append(f"missing {len(self.missing)} weights, e.g. {self.missing[:3]}")
        if self.unexpected:
            problems.append(f"{len(self.unexpected)} weights the config does not use, e.g. {self.unexpected[:3]}")
        problems += [f"'{key}' is {found}, {needs} needs {needed}" for key, found, needed in self.wrong_shapes[:3]]
        return problems


def save_checkpoint(
    model: nn.Module,
    path: str | Path,
    metadata: dict[str, str],
    dtype: torch.dtype | None = None,
) -> None:
    """Write ``model``'s weights (cast to ``dtype`` when given) with ``metadata`` into one file."""
    tensors = {name: value.detach().to("cpu", dtype).contiguous() for name, value in model.state_dict().items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)


def read_checkpoint_metadata(path: str | Path, description: str) -> dict[str, str]:
    """The metadata of a checkpoint, read without loading its weights (wrong files fail cheaply)."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{description} '{path.name}' not found")
    try:
        with safe_open(str(path), framework="pt") as handle:
            return handle.metadata() or {}
    except Exception as error:  # safetensors raises its own types for a corrupt header
        raise ModelFileError(f"{path.name} could not be read as safetensors: {error}") from error


def read_checkpoint_weights(path: str | Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as error:
        raise ModelFileError(f"{Path(path).name} could not be read as safetensors: {error}") from error


def load_weights_strictly(model: nn.Module, weights: dict[str, torch.Tensor], file_name: str, description: str) -> None:
    """Load ``weights`` into ``model`` only when every weight is there with the right shape and none is
    extra; otherwise raise one error that names a few of each problem (as diffusers' loader reports)."""
    mismatch = WeightMismatch.between(model.state_dict(), weights)
    if mismatch:
        raise ModelFileError(f"{file_name} does not match its own {description} config: " + "; ".join(mismatch.problems()))
    model.load_state_dict(weights, strict=True)
