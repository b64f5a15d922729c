"""Load 3DMM: the Basel Face Model (user supplied) or the pack's procedural demo face."""
from __future__ import annotations

from ..pipelines.morphable.demo_model import demo_face_model
from ..pipelines.morphable.model import MorphableModel, load_face_model
from . import host
from .base import TalkingFaceNode

DEMO_MODEL_CHOICE = "demo face (built-in)"


class Load3DMM(TalkingFaceNode):
    DISPLAY_NAME = "Load 3DMM"
    DESCRIPTION = (
        "Loads a parametric 3D face model. BFM_model_front.mat (Basel Face Model 2009 as converted by "
        "Deep3DFaceRecon, or SadTalker's BFM_Fitting folder) goes into ComfyUI/models/3dmm/; the built-in "
        "demo face needs no file."
    )
    RETURN_TYPES = ("TALK_FACE_MODEL",)
    RETURN_NAMES = ("face_model",)
    OUTPUT_TOOLTIPS = ("The 3DMM: mesh, identity/expression/albedo bases and 68 landmark vertices.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "model_name": (
                    [DEMO_MODEL_CHOICE, *host.list_models("3dmm")],
                    {
                        "default": DEMO_MODEL_CHOICE,
                        "tooltip": "A .mat file from ComfyUI/models/3dmm/ in the BFM_model_front.mat layout, "
                        "or the procedural demo face that ships with the pack.",
                    },
                ),
            }
        }

    def run(self, model_name: str) -> tuple[MorphableModel]:
        return (face_model_for_choice(model_name),)


def face_model_for_choice(model_name: str) -> MorphableModel:
    """The model behind one of Load 3DMM's choices (also what the face editor's preview shows)."""
    if model_name == DEMO_MODEL_CHOICE:
        return demo_face_model()
    return load_face_model(host.model_path("3dmm", model_name))
