"""Render 3DMM Target: coefficients to TGDM's target image I_3d and the maps built with it."""
from __future__ import annotations

import torch

from ..pipelines.morphable.coefficients import FaceCoefficients
from ..pipelines.morphable.model import MorphableModel
from ..pipelines.render.camera import PerspectiveCamera
from ..pipelines.render.renderer import FaceRenderer, normals_to_image
from ..pipelines.video import frame_chunks
from . import host
from .base import TalkingFaceNode


class Render3DMMTarget(TalkingFaceNode):
    DISPLAY_NAME = "Render 3DMM Target"
    DESCRIPTION = (
        "Renders a coefficient sequence with the 3DMM: the SH-lit textured face on black (TGDM's target "
        "image I_3d), its mask, a normal map and a surface-coordinate map, one frame per coefficient row."
    )
    RETURN_TYPES = ("IMAGE", "MASK", "IMAGE", "IMAGE")
    RETURN_NAMES = ("render", "mask", "normals", "surface_coords")
    OUTPUT_TOOLTIPS = (
        "Textured, lit face on black (I_3d).",
        "1 where the face covers the pixel.",
        "Camera-space normals mapped from -1..1 to 0..1.",
        "Normalised mean-shape coordinates of the visible surface point (a PNCC map).",
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "face_model": ("TALK_FACE_MODEL", {"tooltip": "From Load 3DMM."}),
                "coefficients": ("TALK_COEFFS", {"tooltip": "One row per output frame."}),
                "resolution": (
                    "INT",
                    {"default": 256, "min": 64, "max": 2048, "step": 8,
                     "tooltip": "Output width and height; the Deep3DFaceRecon camera is scaled to it."},
                ),
                "batch_size": (
                    "INT",
                    {"default": 16, "min": 1, "max": 512,
                     "tooltip": "Frames rendered at once; lower it if a long video runs out of memory."},
                ),
            }
        }

    def run(
        self, face_model: MorphableModel, coefficients: FaceCoefficients, resolution: int, batch_size: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        if coefficients.frames == 0:
            raise self.fail("the coefficient sequence has no frames")
        face_model.check_coefficients(coefficients)
        device = host.torch_device()
        renderer = FaceRenderer(face_model.to(device), PerspectiveCamera.deep3d(resolution))
        progress = host.Progress(coefficients.frames)
        outputs: dict[str, list[torch.Tensor]] = {"image": [], "mask": [], "normals": [], "surface": []}
        try:
            for chunk in frame_chunks(coefficients.frames, batch_size):
                host.throw_if_interrupted()
                with torch.inference_mode():
                    maps = renderer.render(coefficients[chunk].to(device))
                outputs["image"].append(maps.image.cpu())
                outputs["mask"].append(maps.mask.cpu())
                outputs["normals"].append(normals_to_image(maps.normals, maps.mask).cpu())
                outputs["surface"].append(maps.surface.cpu())
                progress.advance(chunk.stop - chunk.start)
        finally:
            face_model.to(host.offload_device())
        return tuple(torch.cat(outputs[key]).float() for key in ("image", "mask", "normals", "surface"))
