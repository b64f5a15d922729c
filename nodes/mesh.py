"""Export Mesh: coefficients to .glb / .obj files in the output folder, for Preview3D, Load3D and Blender."""
from __future__ import annotations

from ..pipelines.morphable.coefficients import FaceCoefficients
from ..pipelines.morphable.model import MorphableModel
from ..pipelines.render.mesh_export import COLOUR_MODES, face_meshes, write_glb, write_obj
from . import host
from .base import ROOT_CATEGORY, TalkingFaceNode

MESH_FORMATS = ("glb", "obj")


class ExportMesh(TalkingFaceNode):
    DISPLAY_NAME = "Export Mesh"
    DESCRIPTION = (
        "Writes the 3DMM face of a coefficient sequence as a 3D file with vertex colours into ComfyUI's output "
        "folder. glb: one file, later frames as morph targets (shape keys in Blender) played at fps. obj: one "
        "file per frame in a folder. Connect mesh_file to Preview 3D to look at it."
    )
    CATEGORY = f"{ROOT_CATEGORY}/render"
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("mesh_file",)
    OUTPUT_TOOLTIPS = ("Path of the file (the first frame's for obj) inside the output folder: Preview 3D's model_file.",)
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "face_model": ("TALK_FACE_MODEL", {"tooltip": "The 3DMM the coefficients belong to."}),
                "coefficients": ("TALK_COEFFS", {"tooltip": "One mesh per row (frame)."}),
                "file_format": (list(MESH_FORMATS), {"default": "glb",
                                                "tooltip": "glb: one animated file; obj: one file per frame."}),
                "colours": (list(COLOUR_MODES), {"default": "lit",
                                                "tooltip": "lit: skin under the fitted lighting, as rendered; "
                                                           "albedo: unlit skin colour."}),
                "posed": ("BOOLEAN", {"default": True,
                                      "tooltip": "Apply head rotation and translation; off: the face looks straight ahead."}),
                "fps": ("FLOAT", {"default": 25.0, "min": 1.0, "max": 240.0, "step": 0.01,
                                  "tooltip": "Playback rate of a glb's frames."}),
                "filename_prefix": ("STRING", {"default": "talkingface/face_mesh",
                                               "tooltip": "Path inside the output folder; a counter is appended so "
                                                          "no file is overwritten."}),
            }
        }

    def run(self, face_model: MorphableModel, coefficients: FaceCoefficients, file_format: str, colours: str,
            posed: bool, fps: float, filename_prefix: str) -> dict:
        if file_format not in MESH_FORMATS:
            raise self.fail(f"file_format must be one of {list(MESH_FORMATS)}, got '{file_format}'")
        if not filename_prefix.strip():
            raise self.fail("filename_prefix is empty: give a name such as talkingface/face_mesh")
        meshes = face_meshes(face_model, coefficients, colours, posed)
        output_root = host.output_directory()
        if file_format == "glb":
            path = host.next_free_path(output_root, filename_prefix.strip(), ".glb")
            write_glb(path, meshes, fps)
            summary = f"{meshes.frames} frame(s) in one glb"
        else:
            folder = host.next_free_path(output_root, filename_prefix.strip(), "obj")
            folder.mkdir()
            for frame in range(meshes.frames):
                host.throw_if_interrupted()
                write_obj(folder / f"frame_{frame + 1:05d}.obj", meshes, frame)
            path = folder / "frame_00001.obj"
            summary = f"{meshes.frames} obj file(s)"
        relative = path.relative_to(output_root.resolve()).as_posix()
        return {"ui": {"text": [f"saved {summary}: output/{relative}"]}, "result": (relative,)}
