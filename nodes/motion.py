"""Motion nodes: smooth coefficient sequences, mix source and driver (reenact / swap), edit with sliders."""
from __future__ import annotations

from ..pipelines.face.motion import PRESETS, SLIDERS, edit_coefficients, mix_coefficients, smooth_coefficients
from ..pipelines.morphable.coefficients import FaceCoefficients
from ..pipelines.morphable.model import MorphableModel
from .base import ROOT_CATEGORY, TalkingFaceNode

MOTION_CATEGORY = f"{ROOT_CATEGORY}/motion"
SMOOTH_CHOICES = {
    "pose_and_expression": ("rotation", "translation", "expression"),
    "pose": ("rotation", "translation"),
    "expression": ("expression",),
    "all_motion": ("rotation", "translation", "expression", "gaze", "lighting"),
}


class SmoothMotion(TalkingFaceNode):
    DISPLAY_NAME = "Smooth Motion"
    DESCRIPTION = "Removes jitter from a coefficient sequence with a One-Euro filter (smooths slow wobble, keeps fast motion)."
    CATEGORY = MOTION_CATEGORY
    RETURN_TYPES = ("TALK_COEFFS",)
    RETURN_NAMES = ("coefficients",)
    OUTPUT_TOOLTIPS = ("The smoothed sequence (identity and texture unchanged).",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "coefficients": ("TALK_COEFFS", {"tooltip": "A coefficient sequence, e.g. from Fit 3DMM on a video."}),
                "strength": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.05,
                                       "tooltip": "0 = unchanged, 1 = strongest smoothing."}),
                "fields": (list(SMOOTH_CHOICES), {"default": "pose_and_expression", "tooltip": "What to smooth."}),
                "fps": ("FLOAT", {"default": 25.0, "min": 1.0, "max": 240.0, "step": 0.01, "tooltip": "Frame rate of the sequence."}),
            }
        }

    def run(self, coefficients: FaceCoefficients, strength: float, fields: str, fps: float):
        if fields not in SMOOTH_CHOICES:
            raise self.fail(f"fields must be one of {list(SMOOTH_CHOICES)}, got '{fields}'")
        return (smooth_coefficients(coefficients, fps, strength, SMOOTH_CHOICES[fields]),)


_FIELD_GROUPS = {
    "identity": ("identity",),
    "texture": ("texture",),
    "lighting": ("lighting",),
    "expression": ("expression",),
    "pose": ("rotation", "translation"),
    "gaze": ("gaze",),
}


class ReplaceCoefficients(TalkingFaceNode):
    DISPLAY_NAME = "Replace Coefficients"
    DESCRIPTION = (
        "Builds the target coefficients: each part from the source (portrait) or the driver (video/target). "
        "'reenact' keeps the source's identity, texture and light with the driver's motion; 'swap' puts the "
        "source's identity and texture into the driver's frames, light included."
    )
    CATEGORY = MOTION_CATEGORY
    RETURN_TYPES = ("TALK_COEFFS",)
    RETURN_NAMES = ("coefficients",)
    OUTPUT_TOOLTIPS = ("One row per driver frame (or per source frame if the driver has one).",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        choice = (["preset", "source", "driver"], {"default": "preset",
                                                   "tooltip": "Take this part from the source or the driver; 'preset' follows the preset."})
        required = {
            "source": ("TALK_COEFFS", {"tooltip": "The portrait's (or swap source's) coefficients."}),
            "driver": ("TALK_COEFFS", {"tooltip": "The driving video's (or swap target's) coefficients."}),
            "preset": (list(PRESETS), {"default": "reenact", "tooltip": "reenact or swap; the switches below override parts."}),
        }
        for group in _FIELD_GROUPS:
            required[group] = (choice[0], {**choice[1], "tooltip": f"Where {group} comes from. " + choice[1]["tooltip"]})
        return {"required": required}

    def run(self, source: FaceCoefficients, driver: FaceCoefficients, preset: str, **groups: str):
        if preset not in PRESETS:
            raise self.fail(f"preset must be one of {list(PRESETS)}, got '{preset}'")
        choice = dict(PRESETS[preset])
        for group, fields in _FIELD_GROUPS.items():
            origin = groups.get(group, "preset")
            if origin != "preset":
                choice.update({field: origin for field in fields})
        return (mix_coefficients(source, driver, choice),)


class EditExpressionAndPose(TalkingFaceNode):
    DISPLAY_NAME = "Edit Expression and Pose"
    DESCRIPTION = (
        "Adds head rotation and expression sliders (jaw, smile, brows, blink) to every frame. The demo face "
        "uses its named directions; other 3DMMs (BFM) use directions derived from their landmark motion."
    )
    CATEGORY = MOTION_CATEGORY
    RETURN_TYPES = ("TALK_COEFFS",)
    RETURN_NAMES = ("coefficients",)
    OUTPUT_TOOLTIPS = ("The edited sequence.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        angle = {"default": 0.0, "min": -90.0, "max": 90.0, "step": 0.5}
        slider = {"default": 0.0, "min": -2.0, "max": 3.0, "step": 0.05}
        required = {
            "coefficients": ("TALK_COEFFS", {"tooltip": "The sequence to edit."}),
            "face_model": ("TALK_FACE_MODEL", {"tooltip": "The 3DMM the coefficients belong to."}),
            "pitch": ("FLOAT", {**angle, "tooltip": "Nod, degrees added to the x rotation (positive tips the face down)."}),
            "yaw": ("FLOAT", {**angle, "tooltip": "Turn, degrees added."}),
            "roll": ("FLOAT", {**angle, "tooltip": "Tilt, degrees added."}),
        }
        for name in SLIDERS:
            required[name] = ("FLOAT", {**slider, "tooltip": f"Amount of '{name}' added (1 = a full {name.replace('_', ' ')})."})
        return {"required": required}

    def run(self, coefficients: FaceCoefficients, face_model: MorphableModel, pitch: float, yaw: float, roll: float,
            **sliders: float):
        return (edit_coefficients(face_model, coefficients, (pitch, yaw, roll), sliders),)


MOTION_NODES = (SmoothMotion, ReplaceCoefficients, EditExpressionAndPose)
