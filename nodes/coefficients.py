"""Save and load coefficient sequences as safetensors files (never pickle)."""
from __future__ import annotations

import hashlib
from pathlib import Path

from ..pipelines.morphable.coefficients import FaceCoefficients
from . import host
from .base import TalkingFaceNode

COEFFICIENT_SUFFIX = ".safetensors"


def coefficient_files() -> list[str]:
    root = host.input_directory()
    if not root.is_dir():
        return []
    return sorted(p.relative_to(root).as_posix() for p in root.rglob(f"*{COEFFICIENT_SUFFIX}") if p.is_file())


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


class LoadCoefficients(TalkingFaceNode):
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
                    coefficient_files(),
                    {"tooltip": "A .safetensors coefficient file from ComfyUI's input folder."},
                ),
            }
        }

    @classmethod
    def _path(cls, file: str) -> Path:
        return host.input_directory() / file

    @classmethod
    def IS_CHANGED(cls, file: str) -> str:
        path = cls._path(file)
        return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""

    @classmethod
    def VALIDATE_INPUTS(cls, file: str) -> bool | str:
        if not cls._path(file).is_file():
            return f"{cls.DISPLAY_NAME}: no file '{file}' in the input folder {host.input_directory()}"
        return True

    def run(self, file: str) -> tuple[FaceCoefficients, int]:
        coefficients = FaceCoefficients.load(self._path(file))
        return (coefficients, coefficients.frames)
