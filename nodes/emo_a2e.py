"""Emo-A2E nodes: load the emotion-aware audio-to-expression model and drive a portrait with speech and a text emotion."""
from __future__ import annotations

import math

import torch

from ..pipelines.audio.emo_a2e import (
    NO_AUDIO_MOTIONS,
    EmoA2ETransformer,
    check_expression_dim,
    emotion_only_expression,
    load_emo_a2e,
    predict_expression,
    with_expression,
)
from ..pipelines.audio.io import SAMPLE_RATE, Audio
from ..pipelines.audio.motion import head_motion as make_head_motion
from ..pipelines.emotion.emotion import TextEmotion
from ..pipelines.morphable.coefficients import FaceCoefficients
from ..pipelines.morphable.model import MorphableModel
from . import host
from .audio import (
    MOTION_REFERENCE_INPUT,
    WINDOWS_PER_BATCH_INPUT,
    AudioModelLoader,
    portrait_row,
    speech_and_sound,
    timing_and_motion_inputs,
)
from .base import TalkingFaceNode

EMO_MODEL_TYPE = "TALK_EMO_A2E_MODEL"


class LoadEmoA2EModel(AudioModelLoader):
    DISPLAY_NAME = "Load Emo-A2E Model"
    DESCRIPTION = (
        "Loads Emo-A2E, the emotion-aware audio-to-expression transformer (speech + text emotion → 3DMM "
        "expression), from a .safetensors checkpoint in ComfyUI/models/talkingface/ written by "
        "scripts/train_emo_a2e.py. It works with emotions from the text encoder it was trained with."
    )
    RETURN_TYPES = (EMO_MODEL_TYPE,)
    RETURN_NAMES = ("emo_model",)
    OUTPUT_TOOLTIPS = ("The Emo-A2E model.",)
    CHECKPOINT = "Emo-A2E"
    OBTAIN = (
        "No trained model ships or can be downloaded: train one with `python -m scripts.train_emo_a2e "
        "--out runs/emo` (with the text encoder you use in Load CLIP Emotion) and copy runs/emo/best.safetensors "
        "there under this name"
    )
    load = staticmethod(load_emo_a2e)


class AudioToExpression(TalkingFaceNode):
    DISPLAY_NAME = "Audio to Expression (Emo-A2E)"
    DESCRIPTION = (
        "Speech and a text emotion → the portrait's expression for every video frame (Emo-A2E, any length in "
        "sliding windows), with the head held, moved like a reference sequence, or gently idling. Without audio "
        "it makes an emotion-only sequence of the given number of frames."
    )
    CATEGORY = "TalkingFace/audio"
    RETURN_TYPES = ("TALK_COEFFS", "AUDIO", "INT", "FLOAT")
    RETURN_NAMES = ("coefficients", "audio", "frames", "fps")
    OUTPUT_TOOLTIPS = (
        "The talking coefficient sequence, one row per frame: the portrait's identity, texture and light; "
        "expression from Emo-A2E; pose, blinks and gaze from the head motion.",
        "The audio as given (its channels and sample rate), cut, padded or looped to the frames: the video's sound (silence without audio).",
        "Number of video frames.",
        "Frame rate of the sequence.",
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "emo_model": (EMO_MODEL_TYPE, {"tooltip": "From Load Emo-A2E Model."}),
                "face_model": ("TALK_FACE_MODEL", {"tooltip": "From Load 3DMM; the model the portrait was fitted with "
                                                   "and the Emo-A2E model was trained for."}),
                "portrait": ("TALK_COEFFS", {"tooltip": "The speaker's coefficients (e.g. fitted to the portrait): "
                                             "identity, pose and resting expression."}),
                "portrait_frame": ("INT", {"default": 0, "min": 0, "max": 1_000_000,
                                           "tooltip": "Row of the portrait coefficients to animate; its expression "
                                           "is the speaker's neutral (resting) face."}),
                "emotion": ("TALK_EMOTION", {"tooltip": "From Text Emotion, encoded by the text encoder the Emo-A2E "
                                             "model was trained with."}),
                **timing_and_motion_inputs(
                    "Frames to make; 0 follows the audio's length (required without audio).",
                    "Seed of the idle head motion and of the emotion-only animation.",
                ),
                "no_audio_motion": (
                    list(NO_AUDIO_MOTIONS),
                    {"default": "animated",
                     "tooltip": "Without audio: hold the emotion's face still, or let its strength wander gently."},
                ),
                "windows_per_batch": WINDOWS_PER_BATCH_INPUT,
            },
            "optional": {
                "audio": ("AUDIO", {"tooltip": "Speech from Load Audio or any node that outputs AUDIO; leave it "
                                    "unconnected for an emotion-only sequence."}),
                "motion_reference": MOTION_REFERENCE_INPUT,
            },
        }

    def run(
        self,
        emo_model: EmoA2ETransformer,
        face_model: MorphableModel,
        portrait: FaceCoefficients,
        portrait_frame: int,
        emotion: TextEmotion,
        fps: float,
        frames: int,
        length_policy: str,
        head_motion: str,
        seed: int,
        motion_strength: float,
        no_audio_motion: str,
        windows_per_batch: int,
        audio: dict | None = None,
        motion_reference: FaceCoefficients | None = None,
    ) -> tuple[FaceCoefficients, dict, int, float]:
        if not isinstance(emo_model, EmoA2ETransformer):
            raise self.fail(f"emo_model must come from Load Emo-A2E Model, got {type(emo_model).__name__}")
        if not isinstance(emotion, TextEmotion):
            raise self.fail(f"emotion must come from Text Emotion (TALK_EMOTION), got {type(emotion).__name__}")
        check_expression_dim(emo_model.config, face_model.dims.expression, f"the face model '{face_model.name}'")
        portrait = portrait_row(self, portrait, portrait_frame, head_motion, motion_reference)
        if audio is None:
            if frames == 0:
                raise self.fail("no audio is connected: set frames to the length of the emotion-only sequence, "
                                "or connect speech to audio")
            speech = Audio(torch.zeros(max(1, math.ceil(frames / fps * SAMPLE_RATE))), SAMPLE_RATE)
            sound, silent = speech.to_comfy(), True
        else:
            speech, sound, frames, silent = speech_and_sound(self, audio, frames, fps, length_policy)
        base = make_head_motion(face_model, portrait, frames, fps, head_motion, motion_reference, seed, motion_strength)
        neutral = portrait.expression[0].float()
        device = host.torch_device()
        try:
            emo_model.to(device)
            if silent:  # no speech: the emotion alone, as without audio
                expression = emotion_only_expression(emo_model, frames, fps, emotion, neutral, no_audio_motion, seed)
            else:
                expression = predict_expression(emo_model, speech, fps, frames, emotion, neutral,
                                                windows_per_batch=windows_per_batch, on_batch=host.Progress(frames).report)
        finally:
            emo_model.to(host.offload_device())
        return (with_expression(face_model, base, expression.cpu()), sound, frames, float(fps))


NODE_CLASSES = (LoadEmoA2EModel, AudioToExpression)
