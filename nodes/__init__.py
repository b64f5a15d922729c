"""The pack's ComfyUI nodes: thin wrappers that validate inputs and call ``pipelines``."""
from __future__ import annotations

from . import host
from .audio import NODE_CLASSES as AUDIO_NODES
from .coefficients import LoadCoefficients, SaveCoefficients
from .emo_a2e import NODE_CLASSES as EMO_A2E_NODES
from .emotion import EMOTION_NODES
from .face import FACE_NODES
from .generator import LoadGenerator, TGDMSampler
from .morphable import Load3DMM
from .motion import MOTION_NODES
from .render import Render3DMMTarget, RenderTexturedTarget
from .swap import FaceSwap

host.register_model_folders()

NODE_CLASSES = (
    Load3DMM,
    Render3DMMTarget,
    RenderTexturedTarget,
    SaveCoefficients,
    LoadCoefficients,
    *FACE_NODES,
    *MOTION_NODES,
    *AUDIO_NODES,
    *EMOTION_NODES,
    *EMO_A2E_NODES,
    LoadGenerator,
    TGDMSampler,
    FaceSwap,
)
NODE_CLASS_MAPPINGS = {f"TalkingFace{cls.__name__}": cls for cls in NODE_CLASSES}
NODE_DISPLAY_NAME_MAPPINGS = {f"TalkingFace{cls.__name__}": cls.DISPLAY_NAME for cls in NODE_CLASSES}
