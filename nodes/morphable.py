"""Load 3DMM: the Basel Face Model (user supplied) or the pack's procedural demo face."""
from __future__ import annotations

from ..pipelines.morphable.demo_model import demo_face_model
from ..pipelines.morphable.model import MorphableModel, load_face_model
from . import host
from .base import TalkingFaceNode

DEMO_MODEL_CHOICE = "demo face (built-in)"
SADTALKER_FOLDER = "BFM_Fitting"


def _face_model_name(model_name: str) -> str:
    """The name as given, or inside SadTalker's BFM_Fitting/ folder when only that has it, so a workflow
    naming BFM_model_front.mat runs with either layout."""
    if host.find_model("3dmm", model_name) is None and host.find_model("3dmm", f"{SADTALKER_FOLDER}/{model_name}"):
        return f"{SADTALKER_FOLDER}/{model_name}"
    return model_name


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

    @classmethod
    def VALIDATE_INPUTS(cls, model_name: str) -> bool | str:
        if model_name == DEMO_MODEL_CHOICE:
            return True
        return cls.check_model_file(
            "model_name", "3dmm", _face_model_name(model_name),
            "It is the Basel Face Model 2009 as Deep3DFaceRecon converts it (free for non-commercial research, "
            "requested from faces.dmi.unibas.ch), or SadTalker's BFM_Fitting folder; or pick "
            f"'{DEMO_MODEL_CHOICE}', which needs no file",
        )

    def run(self, model_name: str) -> tuple[MorphableModel]:
        return (face_model_for_choice(model_name),)


def face_model_for_choice(model_name: str) -> MorphableModel:
    """The model behind one of Load 3DMM's choices (also what the face editor's preview shows)."""
    if model_name == DEMO_MODEL_CHOICE:
        return demo_face_model()
    return load_face_model(host.model_path("3dmm", _face_model_name(model_name)))
