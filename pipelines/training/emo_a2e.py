"""Training of Emo-A2E on emotion-labelled talking clips (MEAD-like), with HF accelerate.

Clip files: one ``.safetensors`` per clip (:func:`save_emotion_clip` / :func:`load_emotion_clip`):

==============  ===========  ===============================================================
tensor          shape        meaning
==============  ===========  ===============================================================
audio           [N]          mono speech, 16 kHz float
expression      [F, E]       the face model's expression coefficients per video frame
neutral         [E]          the speaker's resting expression (e.g. fitted to a neutral clip)
identity        [I]          (optional) the speaker's identity coefficients, for landmark errors
==============  ===========  ===============================================================

metadata: ``format`` = ``talkingface.emotion_clip``, ``fps``, ``sample_rate`` (16000), ``emotion``
(one of the MEAD labels of :data:`MEAD_EMOTIONS`), ``level`` (MEAD intensity level 1–3),
``speaker`` (held-out splits go by speaker). A MEAD preprocessing step fits the face model to each
video (the Fit 3DMM stage) and writes these files.

Labels become conditions the way users give them: the label through a few prompt templates
("a happy face", …) into the text encoder (any :class:`EmotionTextEncoder`), the level as the intensity
(:data:`LEVEL_INTENSITY`). Training samples windows of ``target_frames`` frames and minimises L1
on the expression plus L1 on its frame-to-frame velocity (:func:`.loop.train_windows`, resumable
from ``checkpoint_dir/training_state``). Validation compares the model with two
baselines: the speaker's neutral expression in every frame, and the neutral plus the training
set's mean offset for the clip's emotion and level (it knows the emotion, not the speech).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from ..audio.emo_a2e import (
    EmoA2EConfig,
    EmoA2ETransformer,
    predict_expression,
    save_emo_a2e,
)
from ..audio.features import LogMel, mel_windows, padded_log_mel
from ..audio.io import SAMPLE_RATE, Audio
from ..audio.landmark_model import MOUTH_POINTS
from ..audio.landmarks import project_landmarks
from ..emotion.emotion import MEAD_EMOTIONS, EmotionTextEncoder, TextEmotion, emotion_encoder_id
from ..errors import ModelFileError, TalkingFaceError
from ..morphable.camera import PerspectiveCamera
from ..morphable.coefficients import FaceCoefficients
from ..morphable.model import MorphableModel
from .clip_files import read_clip_file, write_clip_file
from .emo_synthetic import LEVEL_INTENSITY, EmotionClip
from .loop import TrainConfig, WindowTask, train_windows, validation_l1, velocity_l1

CLIP_FORMAT = "talkingface.emotion_clip"
STATE_FORMAT = "talkingface.emo-a2e-training-state"
EMOTION_ADJECTIVES = {
    "neutral": "neutral", "angry": "angry", "contempt": "contemptuous", "disgusted": "disgusted",
    "fear": "fearful", "happy": "happy", "sad": "sad", "surprised": "surprised",
}
PROMPT_TEMPLATES = ("a {} face", "a person looking {}", "{}")


def emotion_prompts(emotion: str, templates: Sequence[str] = PROMPT_TEMPLATES) -> list[str]:
    if emotion not in EMOTION_ADJECTIVES:
        raise TalkingFaceError(f"unknown emotion label '{emotion}'; MEAD labels are {MEAD_EMOTIONS}")
    return [template.format(EMOTION_ADJECTIVES[emotion]) for template in templates]


def encode_prompts(encoder: EmotionTextEncoder, prompts: Sequence[str]) -> torch.Tensor:
    """Unit-norm embeddings ``[N, D]`` of ``prompts`` (as TALK_EMOTION carries them), checked."""
    if not isinstance(encoder, EmotionTextEncoder):
        raise TalkingFaceError("the text encoder needs an 'name' string and an 'encode(prompts)' method")
    with torch.no_grad():
        embeddings = torch.as_tensor(encoder.encode(list(prompts))).float().cpu()
    if embeddings.ndim != 2 or embeddings.shape[0] != len(prompts):
        raise TalkingFaceError(f"the text encoder returned {tuple(embeddings.shape)} for {len(prompts)} prompts")
    if not torch.isfinite(embeddings).all():
        raise TalkingFaceError("the text encoder returned non-finite embeddings")
    return torch.nn.functional.normalize(embeddings, dim=-1)


def clip_emotion(clip: EmotionClip, encoder: EmotionTextEncoder, template: str = PROMPT_TEMPLATES[0]) -> TextEmotion:
    """The TALK_EMOTION a user would give for a clip's label and level."""
    (prompt,) = emotion_prompts(clip.emotion, (template,))
    anchors = torch.zeros(len(MEAD_EMOTIONS))
    anchors[MEAD_EMOTIONS.index(clip.emotion)] = 1.0
    embedding = encode_prompts(encoder, [prompt])[0]
    encoder_id = emotion_encoder_id(encoder.name, embedding.shape[0])
    return TextEmotion(embedding, anchors, clip.intensity, prompt, encoder_id)


# ---- clip files ----------------------------------------------------------------------------
def save_emotion_clip(clip: EmotionClip, path: str | Path) -> None:
    tensors = {"audio": clip.audio, "expression": clip.expression, "neutral": clip.neutral}
    if clip.identity is not None:
        tensors["identity"] = clip.identity
    write_clip_file(path, CLIP_FORMAT, clip.fps, tensors,
                    {"emotion": clip.emotion, "level": str(clip.level), "speaker": clip.speaker})


def load_emotion_clip(path: str | Path) -> EmotionClip:
    path = Path(path)

    def read(handle, metadata: dict[str, str]) -> EmotionClip:
        keys = set(handle.keys())
        missing = [key for key in ("audio", "expression", "neutral") if key not in keys]
        missing += [key for key in ("fps", "emotion", "level", "speaker") if key not in metadata]
        if missing:
            raise ModelFileError(f"{path.name} is an emotion clip without {missing}")
        if metadata["emotion"] not in MEAD_EMOTIONS or int(metadata["level"]) not in LEVEL_INTENSITY:
            raise ModelFileError(
                f"{path.name}: emotion '{metadata['emotion']}' level {metadata['level']} is not a MEAD label "
                f"({MEAD_EMOTIONS}, levels {sorted(LEVEL_INTENSITY)})"
            )
        return EmotionClip(
            handle.get_tensor("audio"), handle.get_tensor("expression"), handle.get_tensor("neutral"),
            float(metadata["fps"]), metadata["emotion"], int(metadata["level"]), metadata["speaker"],
            handle.get_tensor("identity") if "identity" in keys else None,
        )

    clip = read_clip_file(path, CLIP_FORMAT, "an emotion training clip", read)
    if clip.expression.ndim != 2 or clip.neutral.shape != clip.expression.shape[1:]:
        raise ModelFileError(f"{path.name}: expression must be [F, E] and neutral [E], got "
                             f"{tuple(clip.expression.shape)} and {tuple(clip.neutral.shape)}")
    return clip


# ---- windows -------------------------------------------------------------------------------
@dataclass
class _PreparedClip:
    mel: torch.Tensor  # [80, M + 2·pad], starting at mel frame -pad
    first_mel: int
    clip: EmotionClip


class EmotionWindows(Dataset):
    """``count`` windows drawn from ``clips`` with their conditions; window k is the same on every
    pass (seeded by k). Each draws one of the clip label's prompts."""

    def __init__(
        self,
        clips: Sequence[EmotionClip],
        config: EmoA2EConfig,
        encoder: EmotionTextEncoder,
        count: int,
        seed: int = 0,
        templates: Sequence[str] = PROMPT_TEMPLATES,
    ) -> None:
        if not clips:
            raise TalkingFaceError("no training clips")
        encoder_id = emotion_encoder_id(encoder.name, config.emotion_dim)
        if encoder_id != config.encoder:
            raise TalkingFaceError(f"the text encoder is '{encoder_id}' but the model config says '{config.encoder}'")
        self.config = config
        self.count = count
        self.seed = seed
        self.templates = tuple(templates)
        self.embeddings = {emotion: encode_prompts(encoder, emotion_prompts(emotion, self.templates))
                           for emotion in sorted({clip.emotion for clip in clips})}
        dims = {embedding.shape[1] for embedding in self.embeddings.values()}
        if dims != {config.emotion_dim}:
            raise TalkingFaceError(f"the text encoder gives {sorted(dims)}-d embeddings, the model takes {config.emotion_dim}")
        log_mel = LogMel()
        self.mel_config = log_mel.config
        self.prepared = []
        for clip in clips:
            if clip.frames < config.target_frames:
                raise TalkingFaceError(f"a clip of {clip.frames} frames is shorter than a training window")
            if clip.expression.shape[1] != config.expression_dim:
                raise TalkingFaceError(
                    f"clip of speaker {clip.speaker} has {clip.expression.shape[1]} expression coefficients, "
                    f"the model predicts {config.expression_dim}"
                )
            self.prepared.append(_PreparedClip(*padded_log_mel(log_mel, clip.audio), clip))

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        prepared = self.prepared[int(torch.randint(len(self.prepared), (1,), generator=generator))]
        clip = prepared.clip
        length = self.config.target_frames
        start = int(torch.randint(clip.frames - length + 1, (1,), generator=generator))
        window = torch.arange(start, start + length)
        prompt = int(torch.randint(len(self.templates), (1,), generator=generator))
        return {
            "neutral": clip.neutral.float(),
            "embedding": self.embeddings[clip.emotion][prompt],
            "intensity": torch.tensor(clip.intensity),
            "mel_windows": mel_windows(prepared.mel.unsqueeze(0), prepared.first_mel, window, clip.fps, self.mel_config)[0],
            "target": clip.expression[window].float(),
            "condition": torch.tensor(condition_index(clip.emotion, clip.level)),
        }


def condition_index(emotion: str, level: int) -> int:
    """Row of (emotion, level) in the emotion-mean baseline's table."""
    return MEAD_EMOTIONS.index(emotion) * len(LEVEL_INTENSITY) + level - 1


def emotion_mean_offsets(clips: Sequence[EmotionClip]) -> torch.Tensor:
    """``[8 · 3, E]``: the mean expression offset from the speaker's neutral for each (emotion, level)
    in ``clips`` (zero where a combination is absent)."""
    dim = clips[0].expression.shape[1]
    sums = torch.zeros(len(MEAD_EMOTIONS) * len(LEVEL_INTENSITY), dim)
    counts = torch.zeros(sums.shape[0], 1)
    for clip in clips:
        row = condition_index(clip.emotion, clip.level)
        sums[row] += (clip.expression - clip.neutral).sum(0)
        counts[row] += clip.frames
    return sums / counts.clamp_min(1)


@dataclass
class Evaluation:
    """Mean L1 per expression coefficient on the validation windows."""

    model_l1: float
    neutral_l1: float  # the speaker's neutral expression in every frame
    emotion_mean_l1: float  # neutral + the training set's mean offset of the clip's emotion and level


def predict(model: EmoA2ETransformer, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(batch["neutral"], batch["embedding"], batch["intensity"], batch["mel_windows"])


def evaluate(model: EmoA2ETransformer, loader: DataLoader, offsets: torch.Tensor) -> Evaluation:
    def candidates(model: EmoA2ETransformer, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        neutral = batch["neutral"].unsqueeze(1)
        return predict(model, batch), neutral, neutral + offsets.to(neutral.device)[batch["condition"]].unsqueeze(1)

    return Evaluation(*validation_l1(model, loader, candidates))


def train_emo_a2e(
    model_config: EmoA2EConfig,
    train_clips: Sequence[EmotionClip],
    validation_clips: Sequence[EmotionClip],
    encoder: EmotionTextEncoder,
    train_config: TrainConfig,
    checkpoint_dir: str | Path | None = None,
    log: Callable[[str], None] = print,
    until_step: int | None = None,
) -> tuple[EmoA2ETransformer, list[tuple[int, Evaluation]]]:
    """Train on windows of ``train_clips`` with their labels' prompts through ``encoder``, validated on
    ``validation_clips``, in :func:`.loop.train_windows` (its ``best``/``last.safetensors`` and
    resumable state go to ``checkpoint_dir``)."""
    torch.manual_seed(train_config.seed)
    train_set = EmotionWindows(train_clips, model_config, encoder, train_config.train_windows, seed=train_config.seed)
    validation_set = EmotionWindows(validation_clips, model_config, encoder, train_config.validation_windows,
                                    seed=10_000 + train_config.seed)
    offsets = emotion_mean_offsets(train_clips)
    task = WindowTask(
        name="Emo-A2E",
        state_format=STATE_FORMAT,
        loss=lambda model, batch: velocity_l1(predict(model, batch), batch["target"], train_config.velocity_weight),
        evaluate=lambda model, loader: evaluate(model, loader, offsets),
        describe=lambda result: f"neutral {result.neutral_l1:.4f}, emotion mean {result.emotion_mean_l1:.4f}",
        save_model=save_emo_a2e,
    )
    model = EmoA2ETransformer(model_config)
    return train_windows(model, train_set, validation_set, train_config, task, checkpoint_dir, log, until_step)


@dataclass
class ClipCheck:
    """Whole held-out clips run as users run them (sliding windows over the full audio): mean L1 per
    expression coefficient of the model and the two baselines, and the RMS lip/jaw landmark error
    (pixels at 224², when the clips carry identities and a face model is given). ``wrong_emotion_l1``
    is the model given the next MEAD emotion instead of the clip's: far above ``model_l1`` when the
    model uses its emotion condition rather than guessing the emotion from the voice."""

    model_l1: float
    neutral_l1: float
    emotion_mean_l1: float
    wrong_emotion_l1: float
    model_mouth_px: float | None = None
    neutral_mouth_px: float | None = None
    emotion_mean_mouth_px: float | None = None


def _mouth_points(face_model: MorphableModel, identity: torch.Tensor, expression: torch.Tensor) -> torch.Tensor:
    """Lip and jaw landmarks ``[F, 37, 2]`` (pixels at 224², frontal) of a speaker's expressions."""
    frames = expression.shape[0]
    coeffs = FaceCoefficients.neutral(frames, face_model.dims).replace(
        identity=identity.expand(frames, -1).contiguous(), expression=expression.contiguous()
    )
    return project_landmarks(face_model, coeffs, PerspectiveCamera.deep3d())[:, list(MOUTH_POINTS)]


@torch.no_grad()
def check_clips(
    model: EmoA2ETransformer,
    clips: Sequence[EmotionClip],
    encoder: EmotionTextEncoder,
    offsets: torch.Tensor,
    face_model: MorphableModel | None = None,
) -> ClipCheck:
    l1 = torch.zeros(3)
    wrong_l1 = torch.zeros(())
    mouth = torch.zeros(3)
    frames = 0
    use_landmarks = face_model is not None and all(clip.identity is not None for clip in clips)
    for clip in clips:
        audio = Audio(clip.audio, SAMPLE_RATE)
        predicted = predict_expression(model, audio, clip.fps, clip.frames, clip_emotion(clip, encoder), clip.neutral)
        other = MEAD_EMOTIONS[(MEAD_EMOTIONS.index(clip.emotion) + 1) % len(MEAD_EMOTIONS)]
        wrong = predict_expression(model, audio, clip.fps, clip.frames,
                                   clip_emotion(dataclasses.replace(clip, emotion=other), encoder), clip.neutral)
        wrong_l1 += (wrong.cpu() - clip.expression).abs().sum()
        neutral = clip.neutral.expand_as(clip.expression)
        emotion_mean = neutral + offsets[condition_index(clip.emotion, clip.level)]
        candidates = (predicted.cpu(), neutral, emotion_mean)
        l1 += torch.stack([(candidate - clip.expression).abs().sum() for candidate in candidates])
        frames += clip.frames
        if use_landmarks:
            truth = _mouth_points(face_model, clip.identity, clip.expression)
            mouth += torch.stack([
                (_mouth_points(face_model, clip.identity, candidate) - truth).square().sum(-1).mean(-1).sqrt().sum()
                for candidate in candidates
            ])
    coefficients = frames * clips[0].expression.shape[1]
    values = (l1 / coefficients).tolist()
    mouth_values = (mouth / frames).tolist() if use_landmarks else [None] * 3
    return ClipCheck(*values, float(wrong_l1 / coefficients), *mouth_values)
