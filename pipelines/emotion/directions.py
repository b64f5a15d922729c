"""Per-emotion expression directions of a face model, and adding an emotion to coefficients.

An emotion moves the expression coefficients along ``d_k`` per MEAD emotion:
``expression = neutral + intensity · Σ_k w_k d_k`` with the zero-shot weights ``w`` of a
:class:`TextEmotion` (neutral's direction is zero, so its weight only dilutes the others).

* The demo face model has named semantic blendshapes; its directions are written down below as
  a facial-action recipe per emotion.
* BFM's 64 expression components have no names; its directions come from labelled data: a table
  fitted by :func:`fit_emotion_directions` (``python -m scripts.fit_emotion_directions``) from
  expression coefficients with emotion labels, saved as one safetensors file.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..checkpoints import read_checkpoint_metadata, read_checkpoint_weights
from ..errors import ModelFileError, TalkingFaceError
from ..morphable.coefficients import FaceCoefficients
from ..morphable.model import MorphableModel
from .emotion import MEAD_EMOTIONS, TextEmotion

TABLE_FORMAT = "talkingface.emotion_directions"
TABLE_VERSION = "1"
TABLE_FOLDER_HINT = "ComfyUI/models/talkingface/"
FIT_COMMAND = (
    "python -m scripts.fit_emotion_directions --labels labels.csv "
    "--output ComfyUI/models/talkingface/emotion_directions_bfm.safetensors"
)

# Facial actions per emotion (FACS-like, after Ekman's prototypes) in the demo model's named
# expressions, at full strength. squint also lifts the cheeks (the Duchenne smile's AU6).
DEMO_EMOTION_BLENDSHAPES: dict[str, dict[str, float]] = {
    "neutral": {},
    "angry": {"brow_furrow": 1.0, "lips_press": 0.6, "squint": 0.35, "nose_wrinkle": 0.25},
    "contempt": {"mouth_left": 0.6, "smile": 0.2, "squint": 0.15},  # a one-sided smirk
    "disgusted": {"nose_wrinkle": 1.0, "upper_lip_raise": 0.8, "brow_furrow": 0.4, "squint": 0.3, "frown": 0.2},
    "fear": {"brow_inner_raise": 0.8, "brow_raise": 0.5, "eye_wide": 0.8, "lip_stretch": 0.6, "jaw_open": 0.15},
    "happy": {"smile": 0.9, "squint": 0.3, "lips_part": 0.2},
    "sad": {"frown": 0.8, "brow_inner_raise": 0.8, "lower_lip_depress": 0.2, "squint": 0.1},
    "surprised": {"brow_raise": 1.0, "eye_wide": 0.9, "jaw_open": 0.5},
}


@dataclass(frozen=True)
class EmotionDirections:
    """``directions`` ``[8, n_exp]`` in :data:`MEAD_EMOTIONS` order (neutral's row zero) and the
    ``neutral`` expression ``[n_exp]`` they start from."""

    directions: torch.Tensor
    neutral: torch.Tensor
    source: str

    def __post_init__(self) -> None:
        if self.directions.ndim != 2 or self.directions.shape[0] != len(MEAD_EMOTIONS):
            raise TalkingFaceError(f"emotion directions must be [{len(MEAD_EMOTIONS)}, n_exp], got {tuple(self.directions.shape)}")
        if self.neutral.shape != self.directions.shape[1:]:
            raise TalkingFaceError(f"the neutral expression must be [{self.directions.shape[1]}], got {tuple(self.neutral.shape)}")

    @property
    def expression_dims(self) -> int:
        return self.directions.shape[1]

    def offset(self, emotion: TextEmotion) -> torch.Tensor:
        """``intensity · Σ_k w_k d_k``, the change from a neutral face ``[n_exp]``."""
        weights = emotion.anchor_weights.to(self.directions)
        if weights.shape != (len(MEAD_EMOTIONS),):
            raise TalkingFaceError(f"the emotion has {weights.shape[0]} anchor weights, expected {len(MEAD_EMOTIONS)}")
        return emotion.intensity * (weights @ self.directions)

    def expression(self, emotion: TextEmotion) -> torch.Tensor:
        """The expression coefficients ``[n_exp]`` of a neutral face showing ``emotion``."""
        return self.neutral + self.offset(emotion)

    # files ----------------------------------------------------------------------------------
    def save(self, path: str | Path, face_model: str, samples: Sequence[int] | None = None) -> None:
        config = {
            "emotions": list(MEAD_EMOTIONS),
            "expression_dims": self.expression_dims,
            "face_model": face_model,
            "samples": list(samples) if samples is not None else None,
        }
        metadata = {"format": TABLE_FORMAT, "version": TABLE_VERSION, "config": json.dumps(config)}
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tensors = {"directions": self.directions.float().contiguous(), "neutral": self.neutral.float().contiguous()}
        save_file(tensors, str(path), metadata=metadata)

    @classmethod
    def load(cls, path: str | Path) -> EmotionDirections:
        path = Path(path)
        metadata = read_checkpoint_metadata(path, "emotion direction table")
        if metadata.get("format") != TABLE_FORMAT:
            raise ModelFileError(
                f"{path.name} is not an emotion direction table (its metadata has no format='{TABLE_FORMAT}'); "
                f"make one with `{FIT_COMMAND}`"
            )
        config = json.loads(metadata.get("config", "{}"))
        if config.get("emotions") != list(MEAD_EMOTIONS):
            raise ModelFileError(f"{path.name} lists the emotions {config.get('emotions')}, expected {list(MEAD_EMOTIONS)}")
        tensors = read_checkpoint_weights(path)
        missing = [key for key in ("directions", "neutral") if key not in tensors]
        if missing:
            raise ModelFileError(f"{path.name} is an emotion direction table without {missing}")
        return cls(tensors["directions"].float(), tensors["neutral"].float(), source=f"{path.name} ({config.get('face_model')})")


def demo_emotion_directions(model: MorphableModel) -> EmotionDirections:
    """Directions built from the model's named expressions (the demo face model's blendshapes)."""
    needed = sorted({name for recipe in DEMO_EMOTION_BLENDSHAPES.values() for name in recipe})
    missing = [name for name in needed if name not in model.expression_names]
    if missing:
        raise TalkingFaceError(
            f"{model.name} has no named expressions {missing} to build emotions from, and no emotion direction "
            f"table was chosen: fit one from labelled expression coefficients with `{FIT_COMMAND}` and choose it "
            f"(from {TABLE_FOLDER_HINT}) in the 'directions' input"
        )
    directions = torch.zeros(len(MEAD_EMOTIONS), model.dims.expression)
    for row, emotion in enumerate(MEAD_EMOTIONS):
        for name, amount in DEMO_EMOTION_BLENDSHAPES[emotion].items():
            directions[row, model.expression_index(name)] = amount
    return EmotionDirections(directions, torch.zeros(model.dims.expression), source=f"{model.name} blendshapes")


def emotion_directions_for(model: MorphableModel, table: str | Path | None = None) -> EmotionDirections:
    """The table's directions when a table is given (checked against the model), else the model's own."""
    if table is None:
        return demo_emotion_directions(model)
    directions = EmotionDirections.load(table)
    if directions.expression_dims != model.dims.expression:
        raise ModelFileError(
            f"{Path(table).name} holds directions for {directions.expression_dims} expression coefficients but "
            f"{model.name} has {model.dims.expression}: fit a table for this face model (`{FIT_COMMAND}`)"
        )
    return directions


def fit_emotion_directions(
    labels: Sequence[str],
    expressions: torch.Tensor,
    intensities: torch.Tensor | None = None,
) -> tuple[EmotionDirections, list[int]]:
    """Least-squares emotion directions from labelled expression coefficients ``[N, n_exp]``.

    Each sample is modelled as ``x_i = neutral + s_i · d_k`` (``s_i`` its intensity, 1 when not
    given, e.g. MEAD's levels 1–3 scaled to 1/3, 2/3, 1): ``neutral`` is the mean of the neutral
    samples and ``d_k = Σ s_i (x_i − neutral) / Σ s_i²`` over the samples of emotion ``k``. Returns
    the directions and the sample count per emotion.
    """
    if expressions.ndim != 2 or expressions.shape[0] != len(labels):
        raise TalkingFaceError(f"expected one label per expression row, got {len(labels)} labels for {tuple(expressions.shape)}")
    unknown = sorted({label for label in labels if label not in MEAD_EMOTIONS})
    if unknown:
        raise TalkingFaceError(f"unknown emotion labels {unknown}: use {', '.join(MEAD_EMOTIONS)}")
    expressions = expressions.double()
    scale = torch.ones(len(labels), dtype=torch.float64) if intensities is None else intensities.double().reshape(-1)
    if scale.shape[0] != len(labels) or (scale <= 0).any():
        raise TalkingFaceError("intensities must be positive, one per expression row")
    index = torch.tensor([MEAD_EMOTIONS.index(label) for label in labels])
    counts = torch.bincount(index, minlength=len(MEAD_EMOTIONS))
    absent = [MEAD_EMOTIONS[k] for k in range(len(MEAD_EMOTIONS)) if counts[k] == 0]
    if absent:
        raise TalkingFaceError(f"no samples labelled {absent}: the table needs every MEAD emotion, neutral included")
    neutral = expressions[index == 0].mean(0)
    directions = torch.zeros(len(MEAD_EMOTIONS), expressions.shape[1], dtype=torch.float64)
    for k in range(1, len(MEAD_EMOTIONS)):
        chosen = index == k
        s = scale[chosen]
        directions[k] = (s[:, None] * (expressions[chosen] - neutral)).sum(0) / (s * s).sum()
    return EmotionDirections(directions.float(), neutral.float(), source="fitted"), counts.tolist()


def ramp_weights(frames: int, ramp_in_frames: int) -> torch.Tensor:
    """``[frames]`` 0 → 1 over the first ``ramp_in_frames`` frames (smoothstep), then 1."""
    if ramp_in_frames <= 0:
        return torch.ones(frames)
    t = (torch.arange(frames, dtype=torch.float32) / ramp_in_frames).clamp(max=1.0)
    return t * t * (3 - 2 * t)


def apply_emotion(
    coefficients: FaceCoefficients,
    emotion: TextEmotion,
    directions: EmotionDirections,
    ramp_in_frames: int = 0,
) -> FaceCoefficients:
    """``coefficients`` with the emotion's expression change added to every frame (ramped in)."""
    if directions.expression_dims != coefficients.dims.expression:
        raise TalkingFaceError(
            f"the coefficients have {coefficients.dims.expression} expression values but the emotion directions "
            f"({directions.source}) have {directions.expression_dims}: use the same face model"
        )
    offset = directions.offset(emotion).to(coefficients.expression)
    ramp = ramp_weights(coefficients.frames, ramp_in_frames).to(coefficients.expression)
    return coefficients.replace(expression=coefficients.expression + ramp[:, None] * offset)


def emotion_vertex_offsets(model: MorphableModel, directions: EmotionDirections) -> dict[str, torch.Tensor]:
    """Vertex offsets ``[N, 3]`` of each MEAD emotion at weight 1 and intensity 1 on ``model``: what
    Apply Emotion adds to a face (before its weights and intensity scale them)."""
    if directions.expression_dims != model.dims.expression:
        raise TalkingFaceError(
            f"the emotion directions ({directions.source}) have {directions.expression_dims} expression values but "
            f"{model.name} has {model.dims.expression}: use the same face model"
        )
    offsets = (directions.directions @ model.expression_basis.cpu()).view(len(MEAD_EMOTIONS), -1, 3)
    return dict(zip(MEAD_EMOTIONS, offsets, strict=True))
