"""The pack's ComfyUI nodes: thin wrappers that validate inputs and call ``pipelines``."""
from __future__ import annotations

from . import face_preview, host
from .audio import NODE_CLASSES as AUDIO_NODES
from .coefficients import LoadCoefficients, SaveCoefficients
from .dubbing import DUBBING_NODES
from .emo_a2e import NODE_CLASSES as EMO_A2E_NODES
from .emotion import EMOTION_NODES
from .face import FACE_NODES
from .generator import LoadGenerator, TGDMSampler
from .mesh import ExportMesh
from .morphable import Load3DMM
from .motion import MOTION_NODES
from .pose import POSE_NODES
from .render import Render3DMMTarget, RenderTexturedTarget
from .swap import FaceSwap, FaceSwapEveryFace

host.register_model_folders()
face_preview.register_routes()

NODE_CLASSES = (
    Load3DMM,
    Render3DMMTarget,
    RenderTexturedTarget,
    ExportMesh,
    SaveCoefficients,
    LoadCoefficients,
    *FACE_NODES,
    *POSE_NODES,
    *MOTION_NODES,
    *AUDIO_NODES,
    *EMOTION_NODES,
    *EMO_A2E_NODES,
    LoadGenerator,
    TGDMSampler,
    *DUBBING_NODES,
    FaceSwap,
    FaceSwapEveryFace,
)
NODE_CLASS_MAPPINGS = {f"TalkingFace{cls.__name__}": cls for cls in NODE_CLASSES}
NODE_DISPLAY_NAME_MAPPINGS = {f"TalkingFace{cls.__name__}": cls.DISPLAY_NAME for cls in NODE_CLASSES}
