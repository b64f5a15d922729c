"""What travels on a TALK_EMOTION socket: a text emotion in CLIP space, with its strength."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from ..errors import TalkingFaceError

# The eight emotions of MEAD, the order of every per-emotion table in the pack.
MEAD_EMOTIONS = ("neutral", "angry", "contempt", "disgusted", "fear", "happy", "sad", "surprised")


@runtime_checkable
class EmotionTextEncoder(Protocol):
    """What the emotion code and Emo-A2E training need from a text encoder: a ``name`` for its
    embedding space (``open_clip:ViT-B-32``, ``comfy:SD1ClipModel``) and unit-norm pooled embeddings."""

    name: str

    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        """Unit-norm pooled embeddings ``[len(prompts), D]`` (float32, CPU)."""


def emotion_encoder_id(encoder_name: str, emotion_dim: int) -> str:
    """The ``encoder`` string of TALK_EMOTION values, which trained models record: the encoder's name
    and embedding size, since one name (e.g. a ComfyUI CLIP class) can come in several widths."""
    return f"{encoder_name}:{emotion_dim}"


@dataclass(frozen=True)
class TextEmotion:
    """An emotion prompt (or a blend of two) encoded by one CLIP text encoder.

    ``embedding`` is the unit-norm pooled text embedding ``[D]``; models trained on one encoder's
    space check ``encoder`` before using it. ``anchor_weights`` ``[len(MEAD_EMOTIONS)]`` sum to 1:
    the zero-shot similarity of the prompt to the emotion anchor prompts, which needs no trained
    model. ``intensity`` scales the expression change (0: neutral, 1: as prompted, above 1: stronger).
    """

    embedding: torch.Tensor
    anchor_weights: torch.Tensor
    intensity: float
    prompt: str
    encoder: str

    @property
    def dominant_emotion(self) -> str:
        return MEAD_EMOTIONS[int(self.anchor_weights.argmax())]


# ---- prompts ----------------------------------------------------------------------------------
# The prompt each preset sends to the text encoder (also the first anchor phrasing of its emotion).
EMOTION_PRESETS: dict[str, str] = {
    "neutral": "a face with a neutral expression",
    "angry": "an angry face",
    "contempt": "a face showing contempt",
    "disgusted": "a disgusted face",
    "fear": "a frightened face",
    "happy": "a happy face",
    "sad": "a sad face",
    "surprised": "a surprised face",
}
# Several phrasings per emotion (same count each), pooled by zero_shot_weights: one wording's quirks count less.
EMOTION_ANCHORS: dict[str, tuple[str, ...]] = {
    "neutral": (EMOTION_PRESETS["neutral"], "a calm, expressionless face", "a relaxed face at rest"),
    "angry": (EMOTION_PRESETS["angry"], "a furious person glaring", "a face full of rage"),
    "contempt": (EMOTION_PRESETS["contempt"], "a scornful, smug smirk", "a disdainful face"),
    "disgusted": (EMOTION_PRESETS["disgusted"], "a face wrinkling its nose in disgust", "a repulsed, grossed-out face"),
    "fear": (EMOTION_PRESETS["fear"], "a scared, terrified person", "a face full of fear"),
    "happy": (EMOTION_PRESETS["happy"], "a joyful, smiling person", "a face beaming with delight"),
    "sad": (EMOTION_PRESETS["sad"], "a sorrowful, unhappy person", "a face about to cry"),
    "surprised": (EMOTION_PRESETS["surprised"], "an astonished, amazed person", "a shocked face with wide eyes"),
}
MAX_INTENSITY = 2.0
# On centred embeddings; CLIP's own logit scale (100) is sharper than a blend of emotions needs.
ZERO_SHOT_TEMPERATURE = 0.1


def preset_prompt(preset: str) -> str:
    if preset not in EMOTION_PRESETS:
        raise TalkingFaceError(f"unknown emotion preset '{preset}': choose one of {', '.join(MEAD_EMOTIONS)} or custom")
    return EMOTION_PRESETS[preset]


def anchor_prompts() -> tuple[str, ...]:
    """Every anchor phrasing, emotion by emotion in :data:`MEAD_EMOTIONS` order."""
    return tuple(prompt for emotion in MEAD_EMOTIONS for prompt in EMOTION_ANCHORS[emotion])


def zero_shot_weights(
    embedding: torch.Tensor,
    phrasing_embeddings: torch.Tensor,
    temperature: float = ZERO_SHOT_TEMPERATURE,
) -> torch.Tensor:
    """``[8]`` weights summing to 1: how close the prompt is to each emotion's anchor phrasings.

    A softmax of cosine similarity / temperature over every anchor phrasing, summed per emotion: the
    phrasings are averaged as probabilities, not as embeddings, so a prompt equal to any phrasing
    gets that phrasing's emotion as its top weight (an averaged embedding can sit nearer to another
    emotion's). Prompt and phrasings are centred first (the mean of all phrasings is removed): CLIP
    text embeddings share a large "a … face" component that would otherwise decide the similarity.
    """
    centre = phrasing_embeddings.mean(0)
    anchors = torch.nn.functional.normalize(phrasing_embeddings - centre, dim=-1)
    query = torch.nn.functional.normalize(embedding - centre, dim=-1)
    probabilities = torch.softmax(anchors @ query / temperature, dim=-1)
    return probabilities.view(len(MEAD_EMOTIONS), -1).sum(1)


def slerp(start: torch.Tensor, end: torch.Tensor, fraction: float) -> torch.Tensor:
    """Spherical interpolation between unit vectors (normalised lerp when they are (anti)parallel)."""
    cosine = float((start @ end).clamp(-1.0, 1.0))
    angle = torch.tensor(cosine).acos()
    if float(angle.sin()) < 1e-4:
        return torch.nn.functional.normalize(start * (1 - fraction) + end * fraction, dim=-1)
    mixed = (torch.sin((1 - fraction) * angle) * start + torch.sin(fraction * angle) * end) / angle.sin()
    return torch.nn.functional.normalize(mixed, dim=-1)


def check_intensity(intensity: float) -> float:
    if not isinstance(intensity, (int, float)) or not 0.0 <= float(intensity) <= MAX_INTENSITY:
        raise TalkingFaceError(
            f"intensity must be between 0 (neutral) and {MAX_INTENSITY} (twice as strong), got {intensity!r}"
        )
    return float(intensity)


def encode_text_emotion(
    embed: Callable[[tuple[str, ...]], torch.Tensor],
    encoder_name: str,
    prompt: str,
    intensity: float = 1.0,
    second_prompt: str = "",
    blend: float = 0.0,
    temperature: float = ZERO_SHOT_TEMPERATURE,
) -> TextEmotion:
    """Encode an emotion prompt (optionally blended with a second one) into a :class:`TextEmotion`.

    ``embed`` maps prompts to unit-norm embeddings ``[n, D]`` (a CLIP text encoder, possibly cached);
    ``blend`` 0 is all ``prompt``, 1 all ``second_prompt``: embeddings are slerped and the zero-shot
    weights mixed linearly.
    """
    prompt = (prompt or "").strip()
    second_prompt = (second_prompt or "").strip()
    if not prompt:
        raise TalkingFaceError("the emotion prompt is empty: describe the emotion (e.g. 'a bit scared') or pick a preset")
    intensity = check_intensity(intensity)
    if not 0.0 <= float(blend) <= 1.0:
        raise TalkingFaceError(f"blend must be between 0 (first prompt) and 1 (second prompt), got {blend!r}")
    if blend > 0 and not second_prompt:
        raise TalkingFaceError(f"blend is {blend} but the second prompt is empty: write a second prompt or set blend to 0")
    phrasings = embed(anchor_prompts())
    prompts = (prompt, second_prompt) if blend > 0 else (prompt,)
    embeddings = embed(prompts)
    if embeddings.shape[-1] != phrasings.shape[-1]:
        raise ValueError("the text encoder gave prompts and anchors of different sizes")
    weights = [zero_shot_weights(row, phrasings, temperature) for row in embeddings]
    if blend > 0:
        embedding = slerp(embeddings[0], embeddings[1], float(blend))
        anchor_weights = (1 - blend) * weights[0] + blend * weights[1]
        text = f"{prompt} ({1 - blend:.2f}) + {second_prompt} ({blend:.2f})"
    else:
        embedding, anchor_weights, text = embeddings[0], weights[0], prompt
    return TextEmotion(embedding, anchor_weights, intensity, text, emotion_encoder_id(encoder_name, embeddings.shape[-1]))


def describe_weights(emotion: TextEmotion, top: int = 3) -> str:
    """``"happy 0.62, neutral 0.21, surprised 0.08"``: the strongest zero-shot weights."""
    order = emotion.anchor_weights.argsort(descending=True)[:top]
    return ", ".join(f"{MEAD_EMOTIONS[int(k)]} {float(emotion.anchor_weights[k]):.2f}" for k in order)
