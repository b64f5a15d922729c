"""Face Swap: the swap source's face on every frame of a target video, as one node."""
from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from ..pipelines.face.analysis import FaceAnalyzer
from ..pipelines.face.faces import AnalyzedFaces, detect_frames
from ..pipelines.face.selection import every_track
from ..pipelines.generator import sampler as sampling
from ..pipelines.generator.face_swap import (
    SwapResult,
    SwapSettings,
    SwapSource,
    swap_every_face,
    swap_faces,
    swap_source,
)
from ..pipelines.generator.vae import DiffusersVAECodec
from ..pipelines.morphable.coefficients import FIXED_DIMS, FaceCoefficients
from ..pipelines.morphable.model import MorphableModel
from ..pipelines.render.textured_target import DRAWN_MOUTH
from . import host
from .base import TalkingFaceNode
from .face_inputs import VideoRateInput
from .generator import CATEGORY, LoadedGenerator

logger = logging.getLogger(__name__)
# Below this share of the swapped face seen by a source photo a frame is mostly guessed: the user is told.
MIN_VISIBLE_FRACTION = 0.05
MOUTHS = ("drawn teeth", "source photo")


class SwapNode(TalkingFaceNode):
    """What both swap nodes share: the source and swap settings, the generator's sampler, the device
    moves and the warnings about frames passed through or barely seen by the source."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("images", "mask")
    OUTPUT_TOOLTIPS = (
        "The target frames with the swapped face, at the target's size.",
        "Where each frame was replaced (0 in frames passed through).",
    )

    @staticmethod
    def source_inputs() -> dict:
        return {
            "face_model": ("TALK_FACE_MODEL", {"tooltip": "From Load 3DMM: the model both Fit 3DMM nodes used."}),
            "source_faces": ("TALK_FACES", {"tooltip": "Analyze Faces of the swap source: one photo, or several photos "
                                                        "of the same person (same size) whose identity is averaged."}),
            "source_coefficients": ("TALK_COEFFS", {"tooltip": "Fit 3DMM of source_faces (with estimate_appearance on)."}),
        }

    @staticmethod
    def swap_inputs() -> dict:
        return {
            "resolution": ("INT", {"default": 256, "min": 64, "max": 2048, "step": 8,
                                   "tooltip": "Size of the face crop without a generator (a generator works at its own size)."}),
            "colour_match": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.05,
                                       "tooltip": "How far the face's colours move towards the target face's (1: same "
                                                  "mean and spread; 0: the source's own skin tone)."}),
            "relight": ("BOOLEAN", {"default": True, "tooltip": "Relight the source photo to each target frame's fitted lighting."}),
            "mouth": (list(MOUTHS), {"default": MOUTHS[0],
                                     "tooltip": "drawn teeth: a mouth interior where the target's lips part (closed-mouth "
                                                "source photo); source photo: keep what the warp carries."}),
            "erode": ("INT", {"default": 4, "min": 0, "max": 64, "tooltip": "Shrink the face mask by this many px (of a 256-px crop)."}),
            "blur": ("INT", {"default": 8, "min": 0, "max": 64, "tooltip": "Feather radius of the face mask in px (of a 256-px crop)."}),
            "sampler": (list(sampling.SCHEDULERS), {"default": "ddim", "tooltip": "With a generator: the denoising sampler."}),
            "steps": ("INT", {"default": 25, "min": 1, "max": 1000, "tooltip": "With a generator: denoising steps per frame."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                             "tooltip": "With a generator: seed of the initial noise (the same for every frame, against flicker)."}),
            "batch_size": ("INT", {"default": 8, "min": 1, "max": 256, "tooltip": "Frames per denoiser pass."}),
            "chunk_size": ("INT", {"default": 16, "min": 1, "max": 4096,
                                   "tooltip": "Frames swapped together; memory is bounded by the chunk, not the video."}),
        }

    @staticmethod
    def generator_input() -> dict:
        return {"generator": ("TALK_GENERATOR", {"tooltip": "From Load Generator. Leave empty for the weight-free swap."})}

    def swap(
        self, face_model: MorphableModel, source_faces: AnalyzedFaces, source_coefficients: FaceCoefficients,
        resolution: int, colour_match: float, relight: bool, mouth: str, erode: int, blur: int, sampler: str,
        steps: int, seed: int, batch_size: int, chunk_size: int, generator: LoadedGenerator | None,
        run: Callable[[SwapSource, SwapSettings, sampling.TGDMSampler | None], SwapResult],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Build the source, settings and sampler from the inputs, ``run`` the swap on the device and
        report frames passed through or barely seen."""
        if mouth not in MOUTHS:
            raise self.fail(f"mouth must be one of {MOUTHS}, got '{mouth}'")
        settings = SwapSettings(resolution=resolution, relight=relight, mouth=DRAWN_MOUTH if mouth == MOUTHS[0] else None,
                                erode=erode, blur=blur, colour_match=colour_match, chunk_size=chunk_size)
        size = generator.model.config.pixel_size if generator is not None else resolution
        source = swap_source(source_faces, source_coefficients, size)
        device = host.torch_device()
        movable = [face_model]
        diffusion = None
        if generator is not None:
            width = face_model.dims.flat_size + FIXED_DIMS["gaze"]
            if generator.model.config.coefficient_dim != width:
                raise self.fail(
                    f"{generator.name} was trained on {generator.model.config.coefficient_dim} coefficients per frame but "
                    f"{face_model.name} gives {width}: use the 3DMM the generator was trained with"
                )
            sampling_settings = sampling.SamplerSettings(scheduler=sampler, steps=steps, seed=seed, batch_size=batch_size,
                                                 chunk_size=chunk_size)
            diffusion = sampling.TGDMSampler(generator.model, sampling_settings, generator.vae)
            # A VAE the pack loaded moves with the model; ComfyUI's own VAE object manages its device.
            movable += [generator.model, *([generator.vae] if isinstance(generator.vae, DiffusersVAECodec) else [])]
        for part in movable:
            part.to(device)
        try:
            result = run(source, settings, diffusion)
        finally:
            for part in movable:
                part.to(host.offload_device())
        passed = (~result.swapped).nonzero().flatten().tolist()
        if passed:
            logger.warning("%s: no target face in frames %s; passed through unchanged", self.DISPLAY_NAME, _listed(passed))
        unseen = ((result.visible_fraction < MIN_VISIBLE_FRACTION) & result.swapped).nonzero().flatten().tolist()
        if unseen:
            logger.warning("%s: the source photos show almost none of the face in frames %s (the target is turned too "
                           "far from every source photo); add a source photo with a similar head pose", self.DISPLAY_NAME,
                           _listed(unseen))
        return result.images, result.masks


class FaceSwap(SwapNode):
    DISPLAY_NAME = "Face Swap"
    DESCRIPTION = (
        "Puts the source person's face into every target frame: identity and skin from the source photo(s), "
        "expression, head pose, gaze and lighting from each target frame, pasted back with colour matching so "
        "hair, background and everything outside the face stay the target's. With a generator, TGDM paints the "
        "face (conditioned on the source photo warped onto the swapped geometry and, if the generator has one, "
        "the source's ArcFace identity token); without one, the warped source photo itself is the face (no "
        "trained weights). Frames where the target face was not found are passed through unchanged. Pick which "
        "target face in the target's Analyze Faces (order and index, or most_similar with a reference image); "
        "Face Swap (Every Face) swaps everyone."
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                **cls.source_inputs(),
                "target_faces": ("TALK_FACES", {"tooltip": "Analyze Faces of the target image or video (missing_faces: "
                                                            "interpolate, so frames without the face pass through)."}),
                "target_coefficients": ("TALK_COEFFS", {"tooltip": "Fit 3DMM of target_faces (with estimate_appearance on, "
                                                                    "so the face is lit like the target)."}),
                **cls.swap_inputs(),
            },
            "optional": cls.generator_input(),
        }

    def run(
        self, face_model: MorphableModel, source_faces: AnalyzedFaces, source_coefficients: FaceCoefficients,
        target_faces: AnalyzedFaces, target_coefficients: FaceCoefficients, generator: LoadedGenerator | None = None,
        **swap_inputs,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        progress = host.Progress(target_faces.frames)

        def run(source: SwapSource, settings: SwapSettings, diffusion: sampling.TGDMSampler | None) -> SwapResult:
            return swap_faces(face_model, source, target_faces, target_coefficients, settings, diffusion,
                              on_frames=progress.report, check_interrupted=host.throw_if_interrupted)

        return self.swap(face_model, source_faces, source_coefficients, generator=generator, run=run, **swap_inputs)


class FaceSwapEveryFace(VideoRateInput, SwapNode):
    DISPLAY_NAME = "Face Swap (Every Face)"
    DESCRIPTION = (
        "Face Swap on every person in the target images at once: each face is found, followed through the video, "
        "fitted and swapped with the source person's face (a group photo or a scene with several people). Frames "
        "where a person is absent keep that person's area as it was; frames without anyone pass through."
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                **cls.source_inputs(),
                "analyzer": ("TALK_ANALYZER", {"tooltip": "From Load Face Analyzer: finds the target faces."}),
                "images": ("IMAGE", {"tooltip": "The target image or video frames."}),
                "fps": ("FLOAT", {"default": 25.0, "min": 1.0, "max": 240.0, "step": 0.001,
                                  "tooltip": "Frame rate of the target video (the fit smooths over time at it)."}),
                "temporal_smoothing": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.05,
                                                 "tooltip": "Video: smoothing of each person's fitted pose and expression "
                                                            "over time (as Fit 3DMM's)."}),
                **cls.swap_inputs(),
            },
            "optional": {**cls.generator_input(), **cls.video_info_input()},
        }

    def run(
        self, face_model: MorphableModel, source_faces: AnalyzedFaces, source_coefficients: FaceCoefficients,
        analyzer, images: torch.Tensor, fps: float, temporal_smoothing: float, generator: LoadedGenerator | None = None,
        video_info: dict | None = None, **swap_inputs,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        fps = self.video_fps(fps, video_info)
        if not hasattr(analyzer, "detect"):
            analyzer = FaceAnalyzer.wrap(analyzer)
        frames = images.shape[0]
        detection = host.Progress(frames)
        images, per_frame, _ = detect_frames(analyzer, images, on_frame=lambda frame: detection.report(frame + 1))
        tracks = every_track(per_frame)
        if not tracks:
            logger.warning("%s: no face in any of the %d target frames; they pass through unchanged", self.DISPLAY_NAME,
                           frames)
            return images, images.new_zeros(images.shape[:3])
        progress = host.Progress(frames * len(tracks))

        def run(source: SwapSource, settings: SwapSettings, diffusion: sampling.TGDMSampler | None) -> SwapResult:
            return swap_every_face(face_model, source, images, tracks, settings, diffusion, fps, temporal_smoothing,
                                   on_frames=progress.report, check_interrupted=host.throw_if_interrupted)

        return self.swap(face_model, source_faces, source_coefficients, generator=generator, run=run, **swap_inputs)


def _listed(frames: list[int], shown: int = 10) -> str:
    return ", ".join(map(str, frames[:shown])) + (f" and {len(frames) - shown} more" if len(frames) > shown else "")
