"""Load Generator and TGDM Sampler: paint a source face's texture onto rendered 3DMM targets."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..pipelines.errors import TalkingFaceError
from ..pipelines.generator import inputs as generator_inputs
from ..pipelines.generator import sampler as sampling
from ..pipelines.generator.checkpoint import load_tgdm
from ..pipelines.generator.tgdm import TGDMDenoiser
from ..pipelines.generator.vae import VAE_FOLDER_HINT, DiffusersVAECodec, LatentCodec, load_vae
from ..pipelines.images import normalize_image_channels, resize_images
from ..pipelines.morphable.coefficients import FaceCoefficients
from . import host
from .base import ROOT_CATEGORY, TalkingFaceNode

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
CATEGORY = f"{ROOT_CATEGORY}/generate"
VAE_FOLDER = "vae"
NO_VAE = "none"
DEMO_GENERATOR = "tgdm_demo_64px.safetensors"
OBTAIN_GENERATOR = (
    f"Pick {DEMO_GENERATOR}, which ships with the pack, or train a generator with `python -m scripts.train_tgdm` "
    "(add --space latent for 512² latent mode) and copy its tgdm_ema.safetensors there under this name"
)
OBTAIN_VAE = (
    "It is the SD1.5 VAE the generator was trained with, e.g. vae-ft-mse-840000-ema-pruned.safetensors "
    "(stabilityai/sd-vae-ft-mse-original); or set vae_name to none and connect a Load VAE node"
)


@dataclass
class LoadedGenerator:
    """What travels on a TALK_GENERATOR socket: the denoiser (kept on the offload device), its dtype
    and, for a latent-mode generator, the VAE that encodes the source and decodes the frames."""

    model: TGDMDenoiser
    dtype: torch.dtype
    name: str
    vae: LatentCodec | None = None


class ComfyUIVAECodec(LatentCodec):
    """ComfyUI's VAE object (core Load VAE node, comfy/sd.py): ``vae.encode(pixels [B,H,W,C] 0..1)``
    gives the posterior's mode ``[B,c,h,w]`` unscaled and ``vae.decode(latents)`` gives ``[B,H,W,C]``
    0..1; it loads itself onto the GPU and splits batches by free memory. The latent scaling belongs
    to the model in ComfyUI, so it comes from the generator's config here."""

    def __init__(self, vae, scaling_factor: float, batch_size: int = 16) -> None:
        self.vae = vae
        self.scaling_factor = scaling_factor
        self.batch_size = batch_size
        self.latent_channels = int(getattr(vae, "latent_channels", 0))
        ratio = getattr(vae, "downscale_ratio", None)
        self.scale_factor = ratio if isinstance(ratio, int) else 0  # video/audio VAEs have non-integer ratios

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(images[..., :3]).float().cpu()

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents).float().cpu()


def _precision(choice: str, device: torch.device) -> torch.dtype:
    if choice == "fp32" or (choice == "auto" and device.type != "cuda"):
        return torch.float32
    if choice == "fp16":
        return torch.float16
    if choice == "auto" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def _vae_files() -> list[str]:
    """The VAE files in ComfyUI/models/vae/ the pack reads itself; others (.pt, .ckpt) go through a
    connected Load VAE node."""
    return [name for name in host.list_models(VAE_FOLDER) if name.lower().endswith(".safetensors")]


def latent_codec(config, checkpoint: str, dtype: torch.dtype, vae=None, vae_name: str = NO_VAE) -> LatentCodec | None:
    """The VAE a latent-mode model (TGDM or dubbing) needs: a connected ComfyUI VAE, else the file picked
    in ``vae_name``; None for a pixel-mode model. Checked against the latents the model was trained on."""
    if not config.latent:
        return None
    if vae is not None:
        codec = ComfyUIVAECodec(vae, config.vae_scaling_factor)
    elif vae_name and vae_name != NO_VAE:
        # fp16 SD VAEs overflow to NaN (diffusers' force_upcast); bf16 and fp32 are safe.
        vae_dtype = torch.bfloat16 if dtype == torch.bfloat16 else torch.float32
        autoencoder = load_vae(host.model_path(VAE_FOLDER, vae_name), config.vae, host.offload_device(), vae_dtype)
        codec = DiffusersVAECodec(autoencoder, name=vae_name)
    else:
        raise TalkingFaceError(
            f"{checkpoint} is a latent-mode generator ({config.pixel_size}x{config.pixel_size}) and needs the "
            f"{config.vae} VAE it was trained with: put the VAE file into {VAE_FOLDER_HINT} and pick it in "
            "vae_name, or connect a Load VAE node to vae"
        )
    codec.check_matches(config, checkpoint)
    return codec


class LoadGenerator(TalkingFaceNode):
    DISPLAY_NAME = "Load Generator"
    CATEGORY = CATEGORY
    DESCRIPTION = (
        "Loads a TGDM generator checkpoint (.safetensors with its config in the metadata) from "
        f"ComfyUI/models/talkingface/, or {DEMO_GENERATOR}, the small demo generator that ships with the pack "
        "(trained on synthetic demo faces only). Train one with `python -m scripts.train_tgdm`. Latent-mode (512²) "
        "generators also need the SD1.5 VAE they were trained with: connect a Load VAE node or pick the "
        "file from ComfyUI/models/vae/."
    )
    RETURN_TYPES = ("TALK_GENERATOR",)
    RETURN_NAMES = ("generator",)
    OUTPUT_TOOLTIPS = ("The TGDM denoiser with its source encoder, for TGDM Sampler.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "checkpoint": (
                    host.list_models("talkingface"),
                    {"tooltip": f"A TGDM checkpoint in ComfyUI/models/talkingface/, or {DEMO_GENERATOR} (ships with the pack)."},
                ),
                "precision": (
                    list(PRECISIONS),
                    {"default": "auto",
                     "tooltip": "auto: bf16 on a GPU that has it (fp16 otherwise), fp32 on the CPU."},
                ),
            },
            "optional": {
                "vae": ("VAE", {"tooltip": "For latent-mode generators: the SD1.5 VAE from a Load VAE node "
                                           "(the same VAE the generator was trained with). Ignored by pixel-mode generators."}),
                "vae_name": (
                    [NO_VAE, *_vae_files()],
                    {"default": NO_VAE,
                     "tooltip": "For latent-mode generators without a connected VAE: the SD1.5 VAE file in "
                                "ComfyUI/models/vae/ (e.g. vae-ft-mse-840000-ema-pruned.safetensors), loaded with "
                                "the config shipped in the pack. Ignored by pixel-mode generators."},
                ),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, checkpoint: str, vae_name: str = NO_VAE) -> bool | str:
        problems = [cls.check_model_file("checkpoint", "talkingface", checkpoint, OBTAIN_GENERATOR)]
        if vae_name not in (None, NO_VAE):
            problems.append(cls.check_model_file("vae_name", VAE_FOLDER, vae_name, OBTAIN_VAE))
        missing = [problem for problem in problems if problem is not True]
        return " | ".join(missing) if missing else True

    def run(self, checkpoint: str, precision: str, vae=None, vae_name: str = NO_VAE) -> tuple[LoadedGenerator]:
        if precision not in PRECISIONS:
            raise self.fail(f"precision must be one of {PRECISIONS}, got '{precision}'")
        path = host.model_path("talkingface", checkpoint)
        model = load_tgdm(path, host.offload_device())
        dtype = _precision(precision, host.torch_device())
        config = model.config
        codec = latent_codec(config, checkpoint, dtype, vae, vae_name)
        return (LoadedGenerator(model.to(dtype), dtype, checkpoint, codec),)


def _resized(images: torch.Tensor | None, size: int) -> torch.Tensor | None:
    """Channel-last images at the generator's size (the model works at one fixed resolution)."""
    if images is None or images.shape[1:3] == (size, size):
        return images
    return resize_images(images, size)


def _warp_inputs(warped_source: torch.Tensor, warp_mask: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The warped source and its mask at the generator's size; a mask softened by resizing is made
    binary again, so a pixel counts as seen only where most of it was."""
    warped = _resized(normalize_image_channels(warped_source, "warped_source")[0], size)
    mask = warp_mask.reshape(-1, *warp_mask.shape[-2:])
    mask = (_resized(mask.unsqueeze(-1), size)[..., 0] > 0.5).float()
    return warped * mask.unsqueeze(-1), mask


class TGDMSampler(TalkingFaceNode):
    DISPLAY_NAME = "TGDM Sampler"
    CATEGORY = CATEGORY
    DESCRIPTION = (
        "Generates one face crop per render: the source face's texture painted onto the geometry, pose, "
        "expression and lighting of each I_3d render by denoising. Long videos run in chunks, so memory "
        "does not grow with the number of frames; Cancel stops within one batch."
    )
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    OUTPUT_TOOLTIPS = ("One generated face crop per render frame, at the generator's resolution (its VAE's output size in latent mode).",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "generator": ("TALK_GENERATOR", {"tooltip": "From Load Generator."}),
                "source_image": ("IMAGE", {"tooltip": "The face whose texture is copied: one image, or one per frame."}),
                "render": ("IMAGE", {"tooltip": "I_3d renders from Render 3DMM Target, one per output frame."}),
                "coefficients": ("TALK_COEFFS", {"tooltip": "The coefficients the renders were made from (one row per frame, or one row for all)."}),
                "sampler": (list(sampling.TGDM_SCHEDULERS), {"default": "ddim", "tooltip": (
                    "ddim and dpmpp_2m are deterministic. distilled: only for a few-step student made by "
                    "`python -m scripts.distill_tgdm` (and only it runs one), 1 to 4 steps with one pass each, its "
                    "teacher's guidance built in (leave both guidance inputs at 1).")}),
                "steps": ("INT", {"default": 25, "min": 1, "max": 1000,
                                  "tooltip": "Denoising steps per frame (a distilled student: 1 to the steps it was distilled for)."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                                 "tooltip": "Seed of the initial noise."}),
                "texture_guidance": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 20.0, "step": 0.1,
                                               "tooltip": "How strongly the source texture is followed; 1 = no guidance."}),
                "geometry_guidance": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 20.0, "step": 0.1,
                                                "tooltip": "How strongly the render's geometry is followed; 1 = no guidance."}),
                "batch_size": ("INT", {"default": 8, "min": 1, "max": 256, "tooltip": "Frames per denoiser pass; lower it if the GPU runs out of memory."}),
                "chunk_size": ("INT", {"default": 32, "min": 1, "max": 4096, "tooltip": "Frames denoised together; memory is bounded by the chunk, not the video."}),
                "same_noise": ("BOOLEAN", {"default": True, "tooltip": "Start every frame from the same noise, which reduces flicker in videos."}),
            },
            "optional": {
                "target_surface": ("IMAGE", {"tooltip": "surface_coords of the renders (Render 3DMM Target), for generators trained with surface encodings."}),
                "source_surface": ("IMAGE", {"tooltip": "surface_coords of a render of the source's own coefficients."}),
                "warped_source": ("IMAGE", {"tooltip": "Render Textured Target's warped_source for the same frames: needed by "
                                                       "generators trained on the warped source (all new checkpoints)."}),
                "warp_mask": ("MASK", {"tooltip": "Render Textured Target's warp_mask, with warped_source."}),
            },
        }

    def run(
        self, generator: LoadedGenerator, source_image: torch.Tensor, render: torch.Tensor,
        coefficients: FaceCoefficients, sampler: str, steps: int, seed: int, texture_guidance: float,
        geometry_guidance: float, batch_size: int, chunk_size: int, same_noise: bool,
        target_surface: torch.Tensor | None = None, source_surface: torch.Tensor | None = None,
        warped_source: torch.Tensor | None = None, warp_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor]:
        model = generator.model
        config = model.config
        frames = render.shape[0] if render.ndim == 4 else 0
        if coefficients.frames not in (1, frames):
            raise self.fail(f"{coefficients.frames} coefficient rows for {frames} renders: give one row per render")
        flat = generator_inputs.flat_coefficients(coefficients.repeat_to(frames))
        if flat.shape[1] != config.coefficient_dim:
            raise self.fail(
                f"the coefficients have {flat.shape[1]} values per frame but {generator.name} was trained on "
                f"{config.coefficient_dim}: use the 3DMM the generator was trained with"
            )
        if source_image.ndim == 4 and source_image.shape[0] not in (1, frames):
            raise self.fail(f"{source_image.shape[0]} source images for {frames} renders: give one, or one per render")
        size = config.pixel_size
        if config.warp_condition and (warped_source is None or warp_mask is None):
            raise self.fail(
                f"{generator.name} was trained on the source warped onto each target: add a Render Textured Target node "
                "(same face model, source crop and coefficients) and connect its warped_source and warp_mask here"
            )
        warps = (None, None)
        if config.warp_condition:
            counts = (warped_source.shape[0] if warped_source.ndim == 4 else 1, warp_mask.reshape(-1, *warp_mask.shape[-2:]).shape[0])
            if counts != (frames, frames):
                raise self.fail(
                    f"{counts[0]} warped_source and {counts[1]} warp_mask frames for {frames} renders: "
                    "warp the same target coefficients the renders were made from"
                )
            warps = _warp_inputs(warped_source, warp_mask, size)
        inputs = generator_inputs.GeneratorInputs(
            source=_resized(normalize_image_channels(source_image, "source_image")[0], size),
            renders=_resized(normalize_image_channels(render, "render")[0], size),
            coefficients=flat,
            target_surfaces=_resized(None if target_surface is None else normalize_image_channels(target_surface, "target_surface")[0], size),
            source_surface=_resized(None if source_surface is None else normalize_image_channels(source_surface, "source_surface")[0], size),
            warped_sources=warps[0],
            warp_masks=warps[1],
        )
        settings = sampling.SamplerSettings(
            scheduler=sampler, steps=steps, seed=seed, texture_guidance=texture_guidance,
            geometry_guidance=geometry_guidance, batch_size=batch_size, chunk_size=chunk_size, same_noise=same_noise,
        )
        progress = host.Progress(steps * -(-frames // chunk_size))
        device = host.torch_device()
        # A VAE the pack loaded moves with the model; ComfyUI's own VAE object manages its device.
        movable = [model, *([generator.vae] if isinstance(generator.vae, DiffusersVAECodec) else [])]
        for part in movable:
            part.to(device)
        try:
            images = sampling.TGDMSampler(model, settings, generator.vae).sample(
                inputs, on_step=lambda step, total: progress.advance(), check_interrupted=host.throw_if_interrupted
            )
        finally:
            for part in movable:
                part.to(host.offload_device())
        return (images.float(),)
