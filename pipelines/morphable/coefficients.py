"""3DMM coefficient sequences in the Deep3DFaceRecon layout.

A sequence holds one row per frame. The flat 257-d vector of Deep3DFaceRecon is
``identity(80) | expression(64) | texture(80) | rotation(3) | lighting(27) | translation(3)``;
gaze is ours and travels beside it.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import ModelFileError, TalkingFaceError

FLAT_FIELDS = ("identity", "expression", "texture", "rotation", "lighting", "translation")
ALL_FIELDS = FLAT_FIELDS + ("gaze",)
FIXED_DIMS = {"rotation": 3, "lighting": 27, "translation": 3, "gaze": 2}
FILE_FORMAT = "talkingface.coefficients"
FILE_VERSION = "1"


@dataclass(frozen=True)
class CoefficientDims:
    """Sizes of the model-dependent blocks; BFM09 (Deep3DFaceRecon) by default."""

    identity: int = 80
    expression: int = 64
    texture: int = 80

    def of(self, name: str) -> int:
        return FIXED_DIMS[name] if name in FIXED_DIMS else getattr(self, name)

    @property
    def flat_size(self) -> int:
        return sum(self.of(name) for name in FLAT_FIELDS)


BFM_DIMS = CoefficientDims()


@dataclass
class FaceCoefficients:
    """A sequence of 3DMM coefficients, every field shaped ``[T, d]``.

    rotation is Euler angles (x, y, z) in radians with R = Rz·Ry·Rx; lighting is 27 second-order
    spherical-harmonics coefficients (9 per colour channel, offset from ambient as in
    Deep3DFaceRecon); translation is in model units; gaze is (pitch, yaw) of both eyes, radians.
    """

    identity: torch.Tensor
    expression: torch.Tensor
    texture: torch.Tensor
    rotation: torch.Tensor
    lighting: torch.Tensor
    translation: torch.Tensor
    gaze: torch.Tensor

    def __post_init__(self) -> None:
        frames = None
        for name in ALL_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, torch.Tensor) or value.ndim != 2:
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise TalkingFaceError(f"coefficient field '{name}' must be a [frames, dims] tensor, got {shape}")
            if name in FIXED_DIMS and value.shape[1] != FIXED_DIMS[name]:
                raise TalkingFaceError(
                    f"coefficient field '{name}' must have {FIXED_DIMS[name]} values per frame, got {value.shape[1]}"
                )
            if frames is None:
                frames = value.shape[0]
            elif value.shape[0] != frames:
                raise TalkingFaceError(
                    f"coefficient field '{name}' has {value.shape[0]} frames but 'identity' has {frames}"
                )

    # construction -------------------------------------------------------------------------
    @classmethod
    def neutral(
        cls,
        frames: int = 1,
        dims: CoefficientDims = BFM_DIMS,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> FaceCoefficients:
        """The mean face, frontal, centred, ambient light, looking ahead."""
        return cls(**{name: torch.zeros(frames, dims.of(name), device=device, dtype=dtype) for name in ALL_FIELDS})

    @classmethod
    def from_flat(
        cls, flat: torch.Tensor, gaze: torch.Tensor | None = None, dims: CoefficientDims = BFM_DIMS
    ) -> FaceCoefficients:
        if flat.ndim == 1:
            flat = flat.unsqueeze(0)
        if flat.ndim != 2 or flat.shape[1] != dims.flat_size:
            raise TalkingFaceError(
                f"a flat coefficient vector must be [frames, {dims.flat_size}], got {tuple(flat.shape)}"
            )
        fields = dict(zip(FLAT_FIELDS, flat.split([dims.of(n) for n in FLAT_FIELDS], dim=1), strict=True))
        fields["gaze"] = gaze if gaze is not None else flat.new_zeros(flat.shape[0], 2)
        return cls(**{k: v.contiguous() for k, v in fields.items()})

    def to_flat(self) -> torch.Tensor:
        return torch.cat([getattr(self, name) for name in FLAT_FIELDS], dim=1)

    # properties -----------------------------------------------------------------------------
    @property
    def frames(self) -> int:
        return self.identity.shape[0]

    def __len__(self) -> int:
        return self.frames

    @property
    def dims(self) -> CoefficientDims:
        return CoefficientDims(self.identity.shape[1], self.expression.shape[1], self.texture.shape[1])

    @property
    def device(self) -> torch.device:
        return self.identity.device

    def fields(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in ALL_FIELDS}

    # sequence operations ----------------------------------------------------------------
    def map(self, fn) -> FaceCoefficients:
        """Apply ``fn`` to every field tensor."""
        return FaceCoefficients(**{name: fn(value) for name, value in self.fields().items()})

    def __getitem__(self, index) -> FaceCoefficients:
        if isinstance(index, int):
            index = slice(index, index + 1) if index != -1 else slice(-1, None)
        return self.map(lambda value: value[index])

    def to(self, *args, **kwargs) -> FaceCoefficients:
        return self.map(lambda value: value.to(*args, **kwargs))

    def replace(self, **fields: torch.Tensor) -> FaceCoefficients:
        return dataclasses.replace(self, **fields)

    def repeat_to(self, frames: int) -> FaceCoefficients:
        """Stretch a single-frame sequence over ``frames`` frames (other lengths must already match)."""
        if self.frames == frames:
            return self
        if self.frames != 1:
            raise TalkingFaceError(f"cannot stretch a {self.frames}-frame coefficient sequence to {frames} frames")
        return self.map(lambda value: value.expand(frames, -1).contiguous())

    @staticmethod
    def concat(sequences: Sequence[FaceCoefficients]) -> FaceCoefficients:
        if not sequences:
            raise ValueError("no coefficient sequences to join")
        dims = {seq.dims for seq in sequences}
        if len(dims) > 1:
            raise TalkingFaceError(f"cannot join coefficients of different face models {sorted(map(str, dims))}: fit them with the same Load 3DMM model")
        return FaceCoefficients(
            **{name: torch.cat([getattr(seq, name) for seq in sequences], dim=0) for name in ALL_FIELDS}
        )

    # files ----------------------------------------------------------------------------------
    def save(self, path: str | Path, extra_metadata: dict[str, str] | None = None) -> None:
        metadata = {"format": FILE_FORMAT, "version": FILE_VERSION, "dims": json.dumps(dataclasses.asdict(self.dims))}
        metadata.update(extra_metadata or {})
        tensors = {name: value.detach().to("cpu", torch.float32).contiguous() for name, value in self.fields().items()}
        save_file(tensors, str(path), metadata=metadata)

    @classmethod
    def load(cls, path: str | Path) -> FaceCoefficients:
        path = Path(path)
        if not path.is_file():
            raise ModelFileError(f"coefficient file '{path.name}' not found")
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                keys = set(handle.keys())
                if metadata.get("format") != FILE_FORMAT:
                    raise ModelFileError(
                        f"{path.name} is not a coefficient file (its metadata has no format='{FILE_FORMAT}'); "
                        "save coefficients with the Save Coefficients node"
                    )
                missing = [name for name in ALL_FIELDS if name not in keys]
                if missing:
                    raise ModelFileError(f"{path.name} is a coefficient file without the fields {missing}")
                return cls(**{name: handle.get_tensor(name) for name in ALL_FIELDS})
        except ModelFileError:
            raise
        except Exception as error:  # safetensors raises its own types for a corrupt header
            raise ModelFileError(f"{path.name} could not be read as safetensors: {error}") from error
