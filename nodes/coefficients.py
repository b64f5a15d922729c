"""Save and load coefficient sequences as safetensors files (never pickle)."""
from __future__ import annotations

from ..pipelines.morphable.coefficients import FaceCoefficients
from . import host
from .base import InputFileNode, TalkingFaceNode

COEFFICIENT_SUFFIX = ".safetensors"


class SaveCoefficients(TalkingFaceNode):
    DISPLAY_NAME = "Save Coefficients"
    DESCRIPTION = "Writes a coefficient sequence into ComfyUI's output folder as .safetensors; never overwrites."
    RETURN_TYPES = ()
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "coefficients": ("TALK_COEFFS", {"tooltip": "The sequence to save."}),
                "filename_prefix": (
                    "STRING",
                    {"default": "talkingface/coefficients",
                     "tooltip": "Path inside the output folder; a counter is appended so no file is overwritten."},
                ),
            }
        }

    def run(self, coefficients: FaceCoefficients, filename_prefix: str) -> dict:
        if not filename_prefix.strip():
            raise self.fail("filename_prefix is empty: give a name such as talkingface/coefficients")
        output_root = host.output_directory()
        path = host.next_free_path(output_root, filename_prefix.strip(), COEFFICIENT_SUFFIX)
        coefficients.save(path)
        relative = path.relative_to(output_root.resolve()).as_posix()
        return {"ui": {"text": [f"saved {coefficients.frames} frames to output/{relative}"]}}


class LoadCoefficients(InputFileNode):
    DISPLAY_NAME = "Load Coefficients"
    DESCRIPTION = (
        "Reads a coefficient sequence saved by Save Coefficients. Copy the file into ComfyUI's input folder "
        "(any subfolder) to see it in the list."
    )
    RETURN_TYPES = ("TALK_COEFFS", "INT")
    RETURN_NAMES = ("coefficients", "frames")
    OUTPUT_TOOLTIPS = ("The loaded sequence.", "Number of frames in it.")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "file": (
                    host.input_files({COEFFICIENT_SUFFIX}),
                    {"tooltip": "A .safetensors coefficient file from ComfyUI's input folder."},
                ),
            }
        }

    def run(self, file: str) -> tuple[FaceCoefficients, int]:
        coefficients = FaceCoefficients.load(host.input_file(file))
        return (coefficients, coefficients.frames)
