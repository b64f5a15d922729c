"""Render 3DMM Target (coefficients to TGDM's target image I_3d and its maps) and Render Textured
Target (the source photo carried onto the target geometry)."""
from __future__ import annotations

import logging

import torch

from ..pipelines.images import normalize_image_channels
from ..pipelines.morphable.camera import PerspectiveCamera
from ..pipelines.morphable.coefficients import FaceCoefficients
from ..pipelines.morphable.model import MorphableModel
from ..pipelines.render.frames import RenderedFrames, render_frames
from ..pipelines.render.mouth import lips_apart
from ..pipelines.render.renderer import FaceRenderer
from ..pipelines.render.texture_transfer import TextureTransfer
from ..pipelines.render.textured_target import DRAWN_MOUTH, render_textured_frames
from . import host
from .base import TalkingFaceNode

logger = logging.getLogger(__name__)
# Below this share of the target face seen by the source a frame is mostly guessed: the user is told.
MIN_VISIBLE_FRACTION = 0.05


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
        frames = render_coefficients(self, face_model, coefficients, resolution, batch_size)
        return frames.image, frames.mask, frames.normals, frames.surface


def render_coefficients(
    node: TalkingFaceNode, face_model: MorphableModel, coefficients: FaceCoefficients, resolution: int, batch_size: int
) -> RenderedFrames:
    """What Render 3DMM Target and Render Talking Preview share: checks that fail in ``node``'s name,
    then :func:`render_frames` on the host's device with progress and Cancel."""
    if coefficients.frames == 0:
        raise node.fail("the coefficient sequence has no frames")
    face_model.check_coefficients(coefficients)
    renderer = FaceRenderer(face_model.to(host.torch_device()), PerspectiveCamera.deep3d(resolution))
    try:
        return render_frames(renderer, coefficients, batch_size, on_frames=host.Progress(coefficients.frames).report)
    finally:
        face_model.to(host.offload_device())


class RenderTexturedTarget(TalkingFaceNode):
    DISPLAY_NAME = "Render Textured Target"
    DESCRIPTION = (
        "Reenactment with no trained weights: the source photo's texture carried onto each target frame's "
        "3DMM geometry (the same mesh under the source's and the target's coefficients gives every target "
        "pixel its place in the photo), relit to the target's lighting, with a mouth interior where the lips "
        "part. With Paste Back this is a complete talking-portrait or reenactment path. The warped source and "
        "its mask also condition TGDM Sampler."
    )
    RETURN_TYPES = ("IMAGE", "MASK", "IMAGE", "MASK")
    RETURN_NAMES = ("image", "mask", "warped_source", "warp_mask")
    OUTPUT_TOOLTIPS = (
        "The reenacted crops: warped face, colour-matched render where the photo does not show the surface, "
        "mouth interior, and the source crop around the face.",
        "The face and mouth: connect to Paste Back's face_mask.",
        "The (relit) warped source alone, black where the source did not see the surface (for TGDM Sampler).",
        "1 where the source saw the target's surface point (for TGDM Sampler).",
    )
    MOUTHS = ("auto", "drawn teeth", "source photo")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "face_model": ("TALK_FACE_MODEL", {"tooltip": "From Load 3DMM: the model both coefficient sets were fitted with."}),
                "source_image": ("IMAGE", {"tooltip": "The source face crop(s) the source coefficients were fitted to (Analyze Faces' crops): one, or one per frame."}),
                "source_coefficients": ("TALK_COEFFS", {"tooltip": "Fit 3DMM's coefficients of the source crop(s), one row per source image."}),
                "coefficients": ("TALK_COEFFS", {"tooltip": "The target frames (e.g. Replace Coefficients' output), one row per output frame."}),
                "resolution": ("INT", {"default": 256, "min": 64, "max": 2048, "step": 8,
                                       "tooltip": "Output width and height, in the crop's framing."}),
                "relight": ("BOOLEAN", {"default": True, "tooltip": "Divide out the photo's fitted lighting and apply the target's."}),
                "mouth": (list(cls.MOUTHS), {"default": cls.MOUTHS[0],
                                             "tooltip": "drawn teeth: a cavity with teeth where the target's lips part (for a closed-mouth photo); "
                                                        "source photo: keep what the warp carries (for a photo that shows its teeth); "
                                                        "auto: the photo's own mouth when its lips are apart, else drawn teeth."}),
                "batch_size": ("INT", {"default": 16, "min": 1, "max": 512,
                                       "tooltip": "Frames warped at once; lower it if a long video runs out of memory."}),
            },
            "optional": {
                "driving_image": ("IMAGE", {"tooltip": "The driving frames' face crops (Analyze Faces' crops of the driver), one per "
                                                       "output frame: their own teeth and tongue fill the mouth where the lips part."}),
                "driving_coefficients": ("TALK_COEFFS", {"tooltip": "Fit 3DMM's coefficients of those driving crops, with driving_image."}),
            },
        }

    def run(
        self, face_model: MorphableModel, source_image: torch.Tensor, source_coefficients: FaceCoefficients,
        coefficients: FaceCoefficients, resolution: int, relight: bool, mouth: str, batch_size: int,
        driving_image: torch.Tensor | None = None, driving_coefficients: FaceCoefficients | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        if mouth not in self.MOUTHS:
            raise self.fail(f"mouth must be one of {self.MOUTHS}, got '{mouth}'")
        frames = coefficients.frames
        if frames == 0:
            raise self.fail("the coefficients input has no frames")
        source_image = normalize_image_channels(source_image, "source_image")[0]
        if source_image.shape[1] != source_image.shape[2]:
            raise self.fail(
                f"source_image is {source_image.shape[2]}x{source_image.shape[1]}; connect the square face crops "
                "from Analyze Faces that the source coefficients were fitted to"
            )
        sources = source_image.shape[0]
        if source_coefficients.frames != sources:
            raise self.fail(
                f"{source_coefficients.frames} source_coefficients rows for {sources} source images: fit the same crops you connect"
            )
        if sources not in (1, frames):
            raise self.fail(f"{sources} source images for {frames} target frames: give one source, or one per frame")
        if (driving_image is None) != (driving_coefficients is None):
            raise self.fail("driving_image and driving_coefficients go together: connect both (the driver's crops and their fit) or neither")
        checked = [("source_coefficients", source_coefficients), ("coefficients", coefficients)]
        if driving_image is not None:
            driving_image = normalize_image_channels(driving_image, "driving_image")[0]
            if (driving_image.shape[0], driving_coefficients.frames) != (frames, frames) or driving_image.shape[1] != driving_image.shape[2]:
                raise self.fail(
                    f"driving_image ({driving_image.shape[0]} crops) and driving_coefficients ({driving_coefficients.frames} rows) "
                    f"need one square crop and one row per output frame ({frames}): connect the driver's Analyze Faces crops and their fit"
                )
            checked.append(("driving_coefficients", driving_coefficients))
        for name, coeffs in checked:
            if coeffs.dims != face_model.dims:
                raise self.fail(
                    f"{name} were made for a face model with {coeffs.dims} but {face_model.name} has {face_model.dims}: "
                    "fit the source and the targets with the 3DMM connected here"
                )
            bad = [i for i, row in enumerate(coeffs.to_flat()) if not torch.isfinite(row).all()]
            if bad:
                raise self.fail(f"{name} hold NaN or infinite values in frames {_frame_list(bad)}; check the fit that made them")
        device = host.torch_device()
        face_model.to(device)
        transfer = TextureTransfer(FaceRenderer(face_model, PerspectiveCamera.deep3d(resolution)))
        if mouth == "auto":
            with torch.inference_mode():
                photo_mouth_open = bool(lips_apart(transfer.renderer.render(source_coefficients.to(device)).landmarks).any())
            mouth = "source photo" if photo_mouth_open else "drawn teeth"
        look = DRAWN_MOUTH if mouth == "drawn teeth" else None
        try:
            result = render_textured_frames(transfer, source_coefficients, source_image, coefficients, relight, look,
                                            batch_size, driving_image, driving_coefficients,
                                            on_frames=host.Progress(frames).report)
        finally:
            face_model.to(host.offload_device())
        unseen = (result.visible_fraction < MIN_VISIBLE_FRACTION).nonzero().flatten().tolist()
        if unseen:
            logger.warning(
                "%s: the source photo shows almost none of the face in frames %s (the target is turned too far from "
                "the source); those frames show the colour-matched 3DMM render", self.DISPLAY_NAME, _frame_list(unseen),
            )
        return result.image.float(), result.mask.float(), result.warped.float(), result.valid.float()


def _frame_list(frames: list[int], shown: int = 10) -> str:
    listed = ", ".join(map(str, frames[:shown]))
    return listed + (f" and {len(frames) - shown} more" if len(frames) > shown else "")
