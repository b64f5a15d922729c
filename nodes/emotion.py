"""Text emotion: load an open_clip text encoder (or use a connected CLIP), encode an emotion prompt,
add the emotion to a coefficient sequence."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..pipelines.emotion.clip_text import (
    AUTO_MODEL_NAME,
    ComfyClipTextEncoder,
    OpenClipTextEncoder,
    encode_cached,
    load_open_clip_text_encoder,
)
from ..pipelines.emotion.directions import EmotionDirections, apply_emotion, emotion_directions_for
from ..pipelines.emotion.emotion import (
    MAX_INTENSITY,
    MEAD_EMOTIONS,
    EmotionTextEncoder,
    describe_weights,
    encode_text_emotion,
    preset_prompt,
)
from ..pipelines.emotion.emotion import TextEmotion as EmotionValue  # the node below takes the name
from ..pipelines.morphable.coefficients import FaceCoefficients
from ..pipelines.morphable.model import MorphableModel
from . import host
from .base import ROOT_CATEGORY, TalkingFaceNode

CUSTOM_PRESET = "custom"
FACE_MODEL_DIRECTIONS = "from face model (demo face)"
DIRECTION_TABLE_FOLDER = "talkingface"


class LoadCLIPEmotion(TalkingFaceNode):
    DISPLAY_NAME = "Load CLIP Emotion"
    DESCRIPTION = (
        "Loads the text tower of an open_clip CLIP from ComfyUI/models/clip/ or models/text_encoders/ for Text "
        "Emotion: a weights file plus its open_clip model name (e.g. ViT-B-32), a weights file with its open_clip "
        "config beside it as <name>.json, or any weights file inside an open_clip local-dir folder "
        "(open_clip_config.json + weights). Nothing is downloaded. A CLIP from ComfyUI's loaders can be connected "
        "to Text Emotion directly instead."
    )
    CATEGORY = f"{ROOT_CATEGORY}/loaders"
    RETURN_TYPES = ("TALK_CLIP_TEXT",)
    RETURN_NAMES = ("clip_text",)
    OUTPUT_TOOLTIPS = ("The open_clip text encoder (only the text tower is loaded).",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "clip_name": (
                    host.list_models("text_encoders"),
                    {"tooltip": "open_clip weights (.safetensors, or .bin/.pt/.pth read safely) from "
                     "ComfyUI/models/clip/ or models/text_encoders/."},
                ),
                "model_name": (
                    "STRING",
                    {"default": AUTO_MODEL_NAME,
                     "tooltip": "The open_clip architecture, e.g. ViT-B-32 or ViT-L-14 (add -quickgelu for OpenAI "
                     "weights). 'auto' reads the config next to the weights, or finds the one built-in "
                     "architecture that fits the file."},
                ),
            }
        }

    @classmethod
    def VALIDATE_INPUTS(cls, clip_name: str) -> bool | str:
        return cls.check_model_file(
            "clip_name", "text_encoders", clip_name,
            "It is open_clip weights, e.g. the folder CLIP-ViT-B-32-laion2B-s34B-b79K (open_clip_config.json + "
            "open_clip_model.safetensors) from Hugging Face's laion/CLIP-ViT-B-32-laion2B-s34B-b79K; or connect "
            "a ComfyUI CLIP to Text Emotion instead",
        )

    def run(self, clip_name: str, model_name: str) -> tuple[OpenClipTextEncoder]:
        return (load_open_clip_text_encoder(host.model_path("text_encoders", clip_name, "text encoder"), model_name),)


def _open_clip_embedder(encoder: OpenClipTextEncoder):
    def embed(prompts: Sequence[str]) -> torch.Tensor:
        encoder.to(host.torch_device())
        try:
            return encoder.encode(prompts)
        finally:
            encoder.to(host.offload_device())

    return embed


class TextEmotion(TalkingFaceNode):
    DISPLAY_NAME = "Text Emotion"
    DESCRIPTION = (
        "Turns an emotion written as text ('furious', 'quietly amused', 'a bit scared') or one of the eight MEAD "
        "presets into a TALK_EMOTION: its CLIP text embedding, its intensity, and zero-shot weights over the eight "
        "emotions (CLIP similarity to anchor phrasings) that Apply Emotion turns into expression. Connect either a "
        "Load CLIP Emotion output or a CLIP from ComfyUI's loaders."
    )
    CATEGORY = f"{ROOT_CATEGORY}/motion"
    RETURN_TYPES = ("TALK_EMOTION", "STRING")
    RETURN_NAMES = ("emotion", "weights")
    OUTPUT_TOOLTIPS = (
        "The encoded emotion (embedding, intensity, prompt, zero-shot emotion weights).",
        "The strongest zero-shot emotion weights as text, e.g. 'fear 0.61, neutral 0.30, sad 0.05'.",
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "prompt": (
                    "STRING",
                    {"default": "a bit scared", "multiline": True,
                     "tooltip": "The emotion in words. Used when preset is 'custom'."},
                ),
                "preset": (
                    [CUSTOM_PRESET, *MEAD_EMOTIONS],
                    {"default": CUSTOM_PRESET,
                     "tooltip": "One of MEAD's eight emotions with a built-in prompt (the prompt text is then "
                     "ignored), or 'custom' to use the prompt text."},
                ),
                "intensity": (
                    "FLOAT",
                    {"default": 1.0, "min": 0.0, "max": MAX_INTENSITY, "step": 0.05,
                     "tooltip": "0 = neutral face, 1 = the emotion as prompted, up to 2 = twice as strong."},
                ),
            },
            "optional": {
                "clip_text": ("TALK_CLIP_TEXT", {"tooltip": "From Load CLIP Emotion (open_clip)."}),
                "clip": ("CLIP", {"tooltip": "Or a ComfyUI CLIP (Load CLIP, Load Checkpoint): its pooled text "
                                  "embedding is used. Ignored when clip_text is connected."}),
                "second_prompt": (
                    "STRING",
                    {"default": "", "multiline": True,
                     "tooltip": "Optional second emotion to blend with the first (e.g. 'happy' + 'surprised')."},
                ),
                "blend": (
                    "FLOAT",
                    {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.05,
                     "tooltip": "0 = only the first prompt, 1 = only the second prompt; needs a second prompt."},
                ),
            },
        }

    def run(
        self,
        prompt: str,
        preset: str,
        intensity: float,
        clip_text: OpenClipTextEncoder | None = None,
        clip: Any = None,
        second_prompt: str = "",
        blend: float = 0.0,
    ) -> tuple[EmotionValue, str]:
        if preset != CUSTOM_PRESET:
            prompt = preset_prompt(preset)
        encoder: EmotionTextEncoder
        if clip_text is not None:
            owner, encoder = clip_text, clip_text
            embed = _open_clip_embedder(clip_text)
        elif clip is not None:
            owner, encoder = clip, ComfyClipTextEncoder(clip)
            embed = encoder.encode
        else:
            raise self.fail(
                "no text encoder connected: connect Load CLIP Emotion to 'clip_text', or a CLIP from Load CLIP / "
                "Load Checkpoint to 'clip'"
            )
        emotion = encode_text_emotion(
            lambda prompts: encode_cached(owner, embed, prompts),
            encoder.name, prompt, intensity, second_prompt, blend,
        )
        return (emotion, describe_weights(emotion))


class ApplyEmotion(TalkingFaceNode):
    DISPLAY_NAME = "Apply Emotion"
    DESCRIPTION = (
        "Adds a text emotion to every frame of a coefficient sequence (a fitted portrait, a driving video, a "
        "talking sequence): expression += intensity × Σ weight × emotion direction of the face model. The demo "
        "face's directions come from its named blendshapes; for BFM choose a direction table fitted by "
        "scripts/fit_emotion_directions.py (in ComfyUI/models/talkingface/)."
    )
    CATEGORY = f"{ROOT_CATEGORY}/motion"
    RETURN_TYPES = ("TALK_COEFFS",)
    RETURN_NAMES = ("coefficients",)
    OUTPUT_TOOLTIPS = ("The sequence with the emotion added to its expression (everything else unchanged).",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "coefficients": ("TALK_COEFFS", {"tooltip": "Any coefficient sequence of this face model."}),
                "emotion": ("TALK_EMOTION", {"tooltip": "From Text Emotion."}),
                "face_model": ("TALK_FACE_MODEL", {"tooltip": "The face model the coefficients belong to."}),
                "directions": (
                    [FACE_MODEL_DIRECTIONS, *host.list_models(DIRECTION_TABLE_FOLDER)],
                    {"default": FACE_MODEL_DIRECTIONS,
                     "tooltip": "Where the per-emotion expression directions come from: the face model's named "
                     "expressions (the demo face), or an emotion direction table (.safetensors) from "
                     "ComfyUI/models/talkingface/ fitted for BFM."},
                ),
                "ramp_in_frames": (
                    "INT",
                    {"default": 0, "min": 0, "max": 10000,
                     "tooltip": "Fade the emotion in over this many frames (0 = full strength from the first frame)."},
                ),
            }
        }

    @classmethod
    def VALIDATE_INPUTS(cls, directions: str) -> bool | str:
        if directions == FACE_MODEL_DIRECTIONS:
            return True
        return cls.check_model_file(
            "directions", DIRECTION_TABLE_FOLDER, directions,
            "Fit a direction table for your face model with `python -m scripts.fit_emotion_directions`, or pick "
            f"'{FACE_MODEL_DIRECTIONS}'",
        )

    def run(
        self,
        coefficients: FaceCoefficients,
        emotion: EmotionValue,
        face_model: MorphableModel,
        directions: str,
        ramp_in_frames: int,
    ) -> dict:
        if coefficients.frames == 0:
            raise self.fail("the coefficient sequence has no frames")
        if ramp_in_frames < 0:
            raise self.fail(f"ramp_in_frames must be 0 or more, got {ramp_in_frames}")
        face_model.check_coefficients(coefficients)
        edited = apply_emotion(coefficients, emotion, directions_for_choice(face_model, directions), ramp_in_frames)
        # The node's face preview (web/js/face_editor.js) draws this emotion on the model's average face.
        shown = {"weights": emotion.anchor_weights.tolist(), "intensity": emotion.intensity, "prompt": emotion.prompt}
        return {"ui": {"talkingface_emotion": [shown]}, "result": (edited,)}


def directions_for_choice(face_model: MorphableModel, choice: str) -> EmotionDirections:
    """The emotion directions behind one of Apply Emotion's choices (also what its preview draws)."""
    table = None if choice == FACE_MODEL_DIRECTIONS else host.model_path(DIRECTION_TABLE_FOLDER, choice)
    return emotion_directions_for(face_model, table)


EMOTION_NODES = (LoadCLIPEmotion, TextEmotion, ApplyEmotion)
