"""Audio to motion: load audio, the audio-to-landmark model, and drive a portrait's lips and jaw."""
from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import torch

from ..pipelines.audio.expression import landmarks_to_expression
from ..pipelines.audio.io import (
    AUDIO_SUFFIXES,
    LENGTH_POLICIES,
    Audio,
    fit_comfy_to_frames,
    fit_to_frames,
    is_silent,
    prepare_speech,
    read_audio_file,
    trim_comfy,
)
from ..pipelines.audio.landmark_model import LandmarkCompletionTransformer, load_landmark_model
from ..pipelines.audio.landmarks import TalkingLandmarks, audio_to_landmarks, resting_landmarks
from ..pipelines.audio.motion import HEAD_MOTIONS
from ..pipelines.audio.motion import head_motion as make_head_motion
from ..pipelines.errors import TalkingFaceError
from ..pipelines.morphable.coefficients import FaceCoefficients
from ..pipelines.morphable.model import MorphableModel
from . import host
from .base import InputFileNode, TalkingFaceNode
from .render import render_coefficients

CATEGORY = "TalkingFace/audio"
MODEL_FOLDER = "talkingface"
logger = logging.getLogger(__name__)


def speech_and_sound(node: TalkingFaceNode, audio: dict, frames: int, fps: float, length_policy: str) -> tuple[Audio, dict, int, bool]:
    """What the audio-driven nodes need from their AUDIO input: the models' mono 16 kHz copy and the
    sound for the video (all channels, the given rate), both matched to the frames, the frame count,
    and whether it is silence (a warning in the log: the mouth rests)."""
    speech, frames = fit_to_frames(prepare_speech(audio), frames, fps, length_policy)
    sound = fit_comfy_to_frames(audio, frames, fps, length_policy)
    silent = is_silent(speech)
    if silent:
        logger.warning("%s: the audio is silent, so the mouth rests (no speech motion) for its %d frames", node.DISPLAY_NAME, frames)
    return speech, sound, frames, silent


def timing_and_motion_inputs(frames_tooltip: str, seed_tooltip: str) -> dict:
    """The inputs of the audio-driven nodes on the video's timing and the head motion, in widget order."""
    return {
        "fps": ("FLOAT", {"default": 25.0, "min": 1.0, "max": 120.0, "step": 0.01,
                          "tooltip": "Frame rate of the video to make."}),
        "frames": ("INT", {"default": 0, "min": 0, "max": 1_000_000, "tooltip": frames_tooltip}),
        "length_policy": (
            list(LENGTH_POLICIES),
            {"default": "pad",
             "tooltip": "When the audio is shorter than the frames: pad with silence, loop it, or trim the "
             "frames to the audio. Longer audio is always cut."},
        ),
        "head_motion": (
            list(HEAD_MOTIONS),
            {"default": "idle",
             "tooltip": "hold: the portrait's pose throughout; reference: pose, blinks and gaze from "
             "motion_reference; idle: gentle seeded head motion with blinks."},
        ),
        "seed": ("INT", {"default": 0, "min": 0, "max": 2**32 - 1, "tooltip": seed_tooltip}),
        "motion_strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 3.0, "step": 0.05,
                                      "tooltip": "Scales idle or reference head motion."}),
    }


WINDOWS_PER_BATCH_INPUT = ("INT", {"default": 64, "min": 1, "max": 4096,
                                   "tooltip": "Model windows run at once; lower it if memory runs out."})
MOTION_REFERENCE_INPUT = ("TALK_COEFFS", {"tooltip": "Coefficients of a reference video for head_motion=reference."})


def portrait_row(
    node: TalkingFaceNode, portrait: FaceCoefficients, portrait_frame: int, head_motion: str,
    motion_reference: FaceCoefficients | None,
) -> FaceCoefficients:
    """The portrait row to animate, after checking it exists and that a reference head motion has its input."""
    if not 0 <= portrait_frame < portrait.frames:
        raise node.fail(f"portrait_frame {portrait_frame} does not exist: the portrait has {portrait.frames} frames")
    if head_motion == "reference" and motion_reference is None:
        raise node.fail("head_motion is 'reference' but nothing is connected to motion_reference")
    return portrait[portrait_frame]


class LoadAudio(InputFileNode):
    DISPLAY_NAME = "Load Audio (TalkingFace)"
    DESCRIPTION = (
        "Decodes an audio file from ComfyUI's input folder with soundfile (wav, flac, ogg, mp3; any bit depth, "
        "rate and channel count) into AUDIO, without torchaudio. Optionally cuts a part of it."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("AUDIO", "FLOAT")
    RETURN_NAMES = ("audio", "duration_seconds")
    OUTPUT_TOOLTIPS = ("The decoded audio, all channels at the file's sample rate.", "Length of the output in seconds.")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "file": (host.input_files(set(AUDIO_SUFFIXES)), {"tooltip": "An audio file in ComfyUI's input folder (any subfolder)."}),
                "start_seconds": (
                    "FLOAT",
                    {"default": 0.0, "min": 0.0, "max": 36000.0, "step": 0.01,
                     "tooltip": "Skip this much of the beginning."},
                ),
                "duration_seconds": (
                    "FLOAT",
                    {"default": 0.0, "min": 0.0, "max": 36000.0, "step": 0.01,
                     "tooltip": "Keep this much from the start point; 0 keeps everything to the end."},
                ),
            }
        }

    def run(self, file: str, start_seconds: float, duration_seconds: float) -> tuple[dict, float]:
        path = host.input_file(file)
        audio = read_audio_file(path)
        if audio["waveform"].shape[-1] == 0:
            raise self.fail(f"file '{file}' holds no audio samples: export it again from an audio editor, or pick another file")
        try:
            audio = trim_comfy(audio, start_seconds, duration_seconds)
        except TalkingFaceError as error:
            raise self.fail(f"file '{file}': {error}") from error
        return (audio, audio["waveform"].shape[-1] / audio["sample_rate"])


class AudioModelLoader(TalkingFaceNode):
    """Base of the audio chain's model loaders: a checkpoint from ComfyUI/models/talkingface/ read by
    ``load`` (a strict loader); ``CHECKPOINT`` names the kind of checkpoint ("an <x> checkpoint") and
    ``OBTAIN`` says how a user gets one."""

    CHECKPOINT: ClassVar[str]
    OBTAIN: ClassVar[str]
    load: ClassVar[Callable[[Path], torch.nn.Module]]
    CATEGORY = "TalkingFace/loaders"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "model_name": (
                    host.list_models(MODEL_FOLDER),
                    {"tooltip": f"An {cls.CHECKPOINT} checkpoint in {host.model_folder_hint(MODEL_FOLDER)}."},
                ),
            }
        }

    @classmethod
    def VALIDATE_INPUTS(cls, model_name: str) -> bool | str:
        return cls.check_model_file("model_name", MODEL_FOLDER, model_name, cls.OBTAIN)

    def run(self, model_name: str) -> tuple[torch.nn.Module]:
        if not model_name:
            raise self.fail(
                f"no checkpoint chosen: put an {self.CHECKPOINT} .safetensors file into {host.model_folder_hint(MODEL_FOLDER)}"
            )
        return (self.load(host.model_path(MODEL_FOLDER, model_name)),)


class LoadAudioToMotionModel(AudioModelLoader):
    DISPLAY_NAME = "Load Audio-to-Motion Model"
    DESCRIPTION = (
        "Loads the landmark completion transformer (audio → lip and jaw landmarks) from a .safetensors "
        "checkpoint in ComfyUI/models/talkingface/, written by scripts/train_audio_landmarks.py."
    )
    RETURN_TYPES = ("TALK_MOTION_MODEL",)
    RETURN_NAMES = ("motion_model",)
    OUTPUT_TOOLTIPS = ("The audio-to-landmark model.",)
    CHECKPOINT = "audio-to-motion"
    OBTAIN = (
        "No trained model ships or can be downloaded: train one with `python -m scripts.train_audio_landmarks "
        "--out runs/audio` and copy runs/audio/best.safetensors there under this name"
    )
    load = staticmethod(load_landmark_model)


class AudioToLandmarks(TalkingFaceNode):
    DISPLAY_NAME = "Audio to Landmarks"
    DESCRIPTION = (
        "Predicts the lip and jaw landmarks of a portrait for every video frame from speech (any length, in "
        "sliding windows), with the head held, moved like a reference sequence, or gently idling."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("TALK_LANDMARKS", "AUDIO", "INT", "FLOAT")
    RETURN_NAMES = ("landmarks", "audio", "frames", "fps")
    OUTPUT_TOOLTIPS = (
        "68 landmarks per frame: lip and jaw from the audio, the rest from the head motion.",
        "The audio as given (its channels and sample rate), cut, padded or looped to the frames: the video's sound.",
        "Number of video frames.",
        "Frame rate of the sequence.",
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "motion_model": ("TALK_MOTION_MODEL", {"tooltip": "From Load Audio-to-Motion Model."}),
                "face_model": ("TALK_FACE_MODEL", {"tooltip": "From Load 3DMM; the same model the portrait was fitted with."}),
                "portrait": ("TALK_COEFFS", {"tooltip": "The speaker's coefficients (e.g. fitted to the portrait)."}),
                "portrait_frame": ("INT", {"default": 0, "min": 0, "max": 1_000_000,
                                           "tooltip": "Row of the portrait coefficients to animate: its identity, "
                                           "pose, light and resting expression."}),
                "audio": ("AUDIO", {"tooltip": "Speech from Load Audio or any node that outputs AUDIO."}),
                **timing_and_motion_inputs("Frames to make; 0 follows the audio's length.", "Seed of the idle motion."),
                "windows_per_batch": WINDOWS_PER_BATCH_INPUT,
            },
            "optional": {"motion_reference": MOTION_REFERENCE_INPUT},
        }

    def run(
        self,
        motion_model: LandmarkCompletionTransformer,
        face_model: MorphableModel,
        portrait: FaceCoefficients,
        portrait_frame: int,
        audio: dict,
        fps: float,
        frames: int,
        length_policy: str,
        head_motion: str,
        seed: int,
        motion_strength: float,
        windows_per_batch: int,
        motion_reference: FaceCoefficients | None = None,
    ) -> tuple[TalkingLandmarks, dict, int, float]:
        portrait = portrait_row(self, portrait, portrait_frame, head_motion, motion_reference)
        speech, sound, frames, silent = speech_and_sound(self, audio, frames, fps, length_policy)
        base = make_head_motion(
            face_model, portrait, frames, fps, head_motion, motion_reference, seed, motion_strength
        )
        if silent:
            return (resting_landmarks(face_model, fps, base), sound, frames, float(fps))
        device = host.torch_device()
        on_batch = host.Progress(frames).report
        try:
            motion_model.to(device)
            landmarks = audio_to_landmarks(
                motion_model, face_model, speech, fps, base, portrait,
                windows_per_batch=windows_per_batch, on_batch=on_batch,
            )
        finally:
            motion_model.to(host.offload_device())
        landmarks.points = landmarks.points.cpu()
        return (landmarks, sound, frames, float(fps))


class LandmarksToExpression(TalkingFaceNode):
    DISPLAY_NAME = "Landmarks to Expression"
    DESCRIPTION = (
        "Fits the 3DMM expression to the lip and jaw landmarks of every frame (identity and head pose fixed), "
        "smoothed over time: a coefficient sequence for rendering or the generator."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("TALK_COEFFS", "FLOAT")
    RETURN_NAMES = ("coefficients", "landmark_error_px")
    OUTPUT_TOOLTIPS = ("The talking coefficient sequence, one row per frame.",
                       "Mean RMS distance between the landmarks and the fitted face (pixels at 224²).")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "face_model": ("TALK_FACE_MODEL", {"tooltip": "The 3DMM the landmarks were made with."}),
                "landmarks": ("TALK_LANDMARKS", {"tooltip": "From Audio to Landmarks."}),
                "smoothing": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 10.0, "step": 0.1,
                                        "tooltip": "Gaussian smoothing of the expression over time (sigma in frames; "
                                        "0 = off). Above ~1 it damps fast syllables."}),
            }
        }

    def run(self, face_model: MorphableModel, landmarks: TalkingLandmarks, smoothing: float) -> tuple[FaceCoefficients, float]:
        try:
            face_model.to(host.torch_device())
            coefficients, error = landmarks_to_expression(
                face_model, landmarks, smoothing, on_chunk=host.Progress(landmarks.frames).report
            )
        finally:
            face_model.to(host.offload_device())
        return (coefficients.to("cpu"), float(error.mean()))


class RenderTalkingPreview(TalkingFaceNode):
    DISPLAY_NAME = "Render Talking Preview"
    DESCRIPTION = "Renders the driven 3DMM as video frames and passes the audio along, for a video combine node."
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", "AUDIO")
    RETURN_NAMES = ("frames", "audio")
    OUTPUT_TOOLTIPS = ("The rendered face, one image per coefficient row.", "The audio, unchanged.")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "face_model": ("TALK_FACE_MODEL", {"tooltip": "From Load 3DMM."}),
                "coefficients": ("TALK_COEFFS", {"tooltip": "From Landmarks to Expression."}),
                "audio": ("AUDIO", {"tooltip": "The audio the frames follow (Audio to Landmarks' audio output)."}),
                "resolution": ("INT", {"default": 256, "min": 64, "max": 2048, "step": 8,
                                       "tooltip": "Output width and height."}),
                "batch_size": ("INT", {"default": 16, "min": 1, "max": 512,
                                       "tooltip": "Frames rendered at once; lower it if memory runs out."}),
            }
        }

    def run(self, face_model: MorphableModel, coefficients: FaceCoefficients, audio: dict, resolution: int,
            batch_size: int) -> tuple[torch.Tensor, dict]:
        return (render_coefficients(self, face_model, coefficients, resolution, batch_size).image, audio)


NODE_CLASSES = (LoadAudio, LoadAudioToMotionModel, AudioToLandmarks, LandmarksToExpression, RenderTalkingPreview)
