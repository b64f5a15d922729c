"""Sampling TGDM over a video: diffusers schedulers, two-condition classifier-free guidance, frames in
batches, chunks so memory does not grow with the video, progress and interruption hooks."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from ..errors import TalkingFaceError
from ..morphable.coefficients import CoefficientDims, FaceCoefficients
from ..video import frame_chunks
from .config import TGDMConfig
from .distilled import DISTILLED_SCHEDULER
from .tgdm import SourceFeatures, TGDMDenoiser
from .vae import VAE_FOLDER_HINT, LatentCodec

SCHEDULERS = ("ddim", "dpmpp_2m", "euler", "lcm")
# TGDM also runs few-step students (generator/distilled.py); other diffusion models have none.
TGDM_SCHEDULERS = (*SCHEDULERS, DISTILLED_SCHEDULER)


def make_scheduler(name: str, config: TGDMConfig):
    """A diffusers scheduler matching the noise schedule and prediction type the model was trained with.
    Predicted clean images are clipped to -1..1 in pixel mode only: VAE latents have a wider range."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, LCMScheduler

    common = {
        "num_train_timesteps": config.num_train_timesteps,
        "beta_schedule": config.beta_schedule,
        "prediction_type": config.prediction_type,
    }
    clip = not config.latent
    if name in ("ddim", DISTILLED_SCHEDULER):  # a student jumps between the timesteps DDIM visits
        return DDIMScheduler(**common, clip_sample=clip, set_alpha_to_one=True, timestep_spacing="trailing")
    if name == "dpmpp_2m":
        return DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2, timestep_spacing="trailing")
    if name == "euler":
        return EulerDiscreteScheduler(**common, timestep_spacing="trailing")
    if name == "lcm":
        return LCMScheduler(**common, clip_sample=clip, timestep_spacing="trailing")
    raise TalkingFaceError(f"unknown sampler '{name}': choose one of {TGDM_SCHEDULERS}")


@dataclass(frozen=True)
class SamplerSettings:
    """``batch_size`` frames go through the denoiser at once; ``chunk_size`` frames are denoised
    together from noise to image, so memory is bounded by the chunk, not the video.
    Guidance scales of 1 disable guidance (one denoiser pass per step instead of three)."""

    scheduler: str = "ddim"
    steps: int = 25
    seed: int = 0
    texture_guidance: float = 1.0
    geometry_guidance: float = 1.0
    batch_size: int = 8
    chunk_size: int = 16
    same_noise: bool = True

    def __post_init__(self) -> None:
        if self.scheduler not in TGDM_SCHEDULERS:
            raise TalkingFaceError(f"unknown sampler '{self.scheduler}': choose one of {TGDM_SCHEDULERS}")
        if self.steps < 1 or self.batch_size < 1 or self.chunk_size < 1:
            raise TalkingFaceError("steps, batch size and chunk size must each be at least 1")

    @property
    def guided(self) -> bool:
        return self.texture_guidance != 1.0 or self.geometry_guidance != 1.0


@dataclass
class GeneratorInputs:
    """Everything the generator is conditioned on, ComfyUI-style channel-last images in 0..1.

    ``source`` is one image or one per frame; ``renders`` (I_3d) and ``coefficients`` (ρ̂, flat 257 +
    gaze) have one row per output frame. Surface maps are the renderer's surface coordinates of the
    target renders and of a render of the source's own coefficients. All images are at the
    generator's ``pixel_size`` (its latent size × the VAE's factor in latent mode)."""

    source: torch.Tensor  # [1 or T, H, W, C]
    renders: torch.Tensor  # [T, H, W, C]
    coefficients: torch.Tensor  # [T, D]
    target_surfaces: torch.Tensor | None = None  # [T, H, W, 3]
    source_surface: torch.Tensor | None = None  # [1 or T, H, W, 3]
    identity: torch.Tensor | None = None  # [1 or T, identity_dim]
    warped_sources: torch.Tensor | None = None  # [T, H, W, C] the source on each target's geometry, 0 where not valid
    warp_masks: torch.Tensor | None = None  # [T, H, W] 1 where the source saw the target's surface

    @property
    def frames(self) -> int:
        return self.renders.shape[0]

    def check(self, config: TGDMConfig) -> None:
        frames, size = self.frames, config.pixel_size
        expected = (size, size, config.image_channels)

        def need(name: str, value: torch.Tensor | None, shape: tuple[int, ...], per_frame_or_one: bool) -> None:
            if value is None:
                return
            rows_ok = value.shape[0] in ((1, frames) if per_frame_or_one else (frames,))
            if value.ndim != len(shape) + 1 or tuple(value.shape[1:]) != shape or not rows_ok:
                rows = "1 or " if per_frame_or_one else ""
                raise TalkingFaceError(
                    f"{name} must be [{rows}{frames}, {', '.join(map(str, shape))}] for this generator, got {tuple(value.shape)}"
                )

        if frames == 0:
            raise TalkingFaceError("there are no frames to generate (the render batch is empty)")
        need("the I_3d render", self.renders, expected, False)
        need("the source image", self.source, expected, True)
        need("the coefficients", self.coefficients, (config.coefficient_dim,), False)
        need("the target surface map", self.target_surfaces, (size, size, 3), False)
        need("the source surface map", self.source_surface, (size, size, 3), True)
        if config.identity_dim:
            need("the identity embedding", self.identity, (config.identity_dim,), True)
        if config.warp_condition:
            if self.warped_sources is None or self.warp_masks is None:
                raise TalkingFaceError(
                    "this generator is conditioned on the source warped onto each target: give the warped sources "
                    "and their masks (Render Textured Target's warped_source and warp_mask)"
                )
            need("the warped source", self.warped_sources, expected, False)
            need("the warp mask", self.warp_masks, (size, size), False)


def flat_coefficients(coeffs: FaceCoefficients) -> torch.Tensor:
    """ρ̂ as the generator reads it: the 257-d Deep3DFaceRecon vector and gaze, ``[T, 259]``."""
    return torch.cat([coeffs.to_flat(), coeffs.gaze], dim=1)


def generator_rows_to_coefficients(rows: torch.Tensor, dims: CoefficientDims) -> FaceCoefficients:
    """The inverse of :func:`flat_coefficients`."""
    return FaceCoefficients.from_flat(rows[:, : dims.flat_size], rows[:, dims.flat_size :], dims)


def to_model_images(images: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """ComfyUI IMAGE ``[B, H, W, C]`` 0..1 → model range ``[B, C, H, W]`` -1..1."""
    return (images.to(device=device, dtype=torch.float32).permute(0, 3, 1, 2) * 2 - 1).to(dtype)


def to_channels_first(maps: torch.Tensor | None, device: torch.device, dtype: torch.dtype) -> torch.Tensor | None:
    return None if maps is None else maps.to(device=device, dtype=dtype).permute(0, 3, 1, 2)


def warp_condition(
    warped: torch.Tensor | None, valid: torch.Tensor | None, device: torch.device, dtype: torch.dtype
) -> torch.Tensor | None:
    """The denoiser's ``warped_source`` input from channel-last warped images (0..1) and masks
    ``[B, H, W]``: ``[B, C + 1, H, W]``, the colours in the model range and 0 wherever not valid."""
    if warped is None or valid is None:
        return None
    mask = valid.to(device=device, dtype=torch.float32).unsqueeze(1)
    colours = to_model_images(warped, device, torch.float32) * mask
    return torch.cat([colours, mask], dim=1).to(dtype)


def frame_noise(seed: int, frames: range, shape: tuple[int, ...], same_noise: bool) -> torch.Tensor:
    """Initial noise on the CPU (identical on every device), a function of (seed, frame) only, so the
    frames do not depend on how the video is cut into chunks."""
    generator = torch.Generator()
    noises = []
    for frame in frames:
        generator.manual_seed((seed * 1_000_003 + (0 if same_noise else frame)) % (2**63))
        noises.append(torch.randn(shape, generator=generator))
    return torch.stack(noises)


def missing_vae_error(config: TGDMConfig, generator_name: str = "this generator") -> TalkingFaceError:
    return TalkingFaceError(
        f"{generator_name} works on latents of the {config.vae} VAE and needs it to encode the source and decode "
        f"the frames: put the VAE file (for SD1.5 e.g. vae-ft-mse-840000-ema-pruned.safetensors) into "
        f"{VAE_FOLDER_HINT} and pick it in Load Generator, or connect a Load VAE node"
    )


def check_scheduler_fits(model: TGDMDenoiser, settings: SamplerSettings) -> None:
    """A few-step student runs only with the ``distilled`` scheduler, within its step count and without
    guidance of its own (it has its teacher's built in); that scheduler runs only students."""
    student = model.distillation
    if student is None:
        if settings.scheduler == DISTILLED_SCHEDULER:
            raise TalkingFaceError(
                f"the '{DISTILLED_SCHEDULER}' sampler runs few-step students made with `python -m scripts.distill_tgdm`, "
                "and this generator is not one: pick ddim (or dpmpp_2m, euler, lcm), or load its distilled student"
            )
        return
    if settings.scheduler != DISTILLED_SCHEDULER:
        raise TalkingFaceError(
            f"this generator is {student.describe()}: pick the '{DISTILLED_SCHEDULER}' sampler with 1 to "
            f"{student.student_steps} steps (the '{settings.scheduler}' sampler needs the teacher it was distilled from)"
        )
    if settings.steps > student.student_steps:
        raise TalkingFaceError(
            f"this generator is {student.describe()}: set steps to at most {student.student_steps}, or distil a "
            f"student for more steps (scripts.distill_tgdm --student-steps)"
        )
    if settings.guided:
        raise TalkingFaceError(
            f"this generator is {student.describe()}: set texture_guidance and geometry_guidance to 1 (for other "
            "guidance, distil a student with it)"
        )


class TGDMSampler:
    """Denoises frames with a :class:`TGDMDenoiser`; a latent-mode model needs ``vae`` to encode the
    source and decode each chunk. ``denoiser_calls`` counts the denoiser passes of the last run (for
    the overhead benchmark)."""

    def __init__(self, model: TGDMDenoiser, settings: SamplerSettings, vae: LatentCodec | None = None) -> None:
        self.model = model
        self.settings = settings
        self.vae = vae
        self.denoiser_calls = 0
        check_scheduler_fits(model, settings)
        if model.config.latent:
            if vae is None:
                raise missing_vae_error(model.config)
            vae.check_matches(model.config)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @torch.no_grad()
    def sample(
        self,
        inputs: GeneratorInputs,
        on_step: Callable[[int, int], None] | None = None,
        on_chunk: Callable[[int, int], None] | None = None,
        check_interrupted: Callable[[], None] | None = None,
    ) -> torch.Tensor:
        """All frames as a ComfyUI IMAGE ``[T, H, W, C]`` on the CPU."""
        frames = None
        for chunk, images in self.sample_chunks(inputs, on_step, on_chunk, check_interrupted):
            if frames is None:
                frames = images.new_empty((inputs.frames, *images.shape[1:]))
            frames[chunk] = images
        return frames

    @torch.no_grad()
    def sample_chunks(
        self,
        inputs: GeneratorInputs,
        on_step: Callable[[int, int], None] | None = None,
        on_chunk: Callable[[int, int], None] | None = None,
        check_interrupted: Callable[[], None] | None = None,
    ) -> Iterator[tuple[slice, torch.Tensor]]:
        """Yield ``(frame slice, IMAGE [n, H, W, C] on the CPU)`` chunk by chunk, so a caller can stream
        a long video to disk. ``on_step(step, steps)`` runs after every denoising step,
        ``on_chunk(frames_done, frames)`` after every chunk, and ``check_interrupted()`` before every
        denoiser batch (it raises to stop). In latent mode each chunk is decoded by the VAE in its
        own batches once it is denoised."""
        config = self.model.config
        inputs.check(config)
        settings = self.settings
        device = self.device
        self.denoiser_calls = 0
        shared_source = None
        if inputs.source.shape[0] == 1:
            shared_source = self._encode_source(inputs, slice(0, 1))
        shape = (config.denoised_channels, config.image_size, config.image_size)
        for chunk_index, chunk in enumerate(frame_chunks(inputs.frames, settings.chunk_size)):
            source = shared_source if shared_source is not None else self._encode_source(inputs, chunk)
            scheduler = make_scheduler(settings.scheduler, config)
            scheduler.set_timesteps(settings.steps, device=device)
            noise = frame_noise(settings.seed, range(chunk.start, chunk.stop), shape, settings.same_noise)
            latents = noise.to(device) * scheduler.init_noise_sigma
            step_generator = torch.Generator(device=device).manual_seed(settings.seed + chunk_index)
            for step, timestep in enumerate(scheduler.timesteps):
                prediction = torch.empty_like(latents)
                model_input = scheduler.scale_model_input(latents, timestep)
                for batch in frame_chunks(chunk.stop - chunk.start, settings.batch_size):
                    if check_interrupted is not None:
                        check_interrupted()
                    frames = slice(chunk.start + batch.start, chunk.start + batch.stop)
                    prediction[batch] = self._predict(model_input[batch], timestep, inputs, frames, source.select(batch))
                latents = scheduler.step(prediction, timestep, latents, generator=step_generator).prev_sample
                if on_step is not None:
                    on_step(step + 1, settings.steps)
            if config.latent:
                if check_interrupted is not None:
                    check_interrupted()
                images = self.vae.decode(latents.float())
            else:
                images = ((latents.float().clamp(-1, 1) + 1) * 0.5).permute(0, 2, 3, 1).cpu()
            yield chunk, images
            if on_chunk is not None:
                on_chunk(chunk.stop, inputs.frames)

    def _encode_source(self, inputs: GeneratorInputs, frames: slice) -> SourceFeatures:
        device, dtype = self.device, self.dtype
        surface = inputs.source_surface[frames] if inputs.source_surface is not None else None
        if self.model.config.latent:
            source = self.vae.encode(inputs.source[frames]).to(device, dtype)
        else:
            source = to_model_images(inputs.source[frames], device, dtype)
        return self.model.encode_source(source, to_channels_first(surface, device, dtype))

    def _predict(
        self, noisy: torch.Tensor, timestep: torch.Tensor, inputs: GeneratorInputs, frames: slice, source: SourceFeatures
    ) -> torch.Tensor:
        device, dtype = self.device, self.dtype
        settings = self.settings
        render = to_model_images(inputs.renders[frames], device, dtype)
        coefficients = inputs.coefficients[frames].to(device=device, dtype=dtype)
        surface = to_channels_first(
            None if inputs.target_surfaces is None else inputs.target_surfaces[frames], device, dtype
        )
        warped = warp_condition(
            None if inputs.warped_sources is None else inputs.warped_sources[frames],
            None if inputs.warp_masks is None else inputs.warp_masks[frames], device, dtype,
        )
        identity = inputs.identity
        if identity is not None:
            identity = identity.expand(render.shape[0], -1) if identity.shape[0] == 1 else identity[frames]
            identity = identity.to(device=device, dtype=dtype)
        noisy = noisy.to(dtype)
        batch = noisy.shape[0]
        timesteps = timestep.to(device).expand(batch)
        self.denoiser_calls += 1
        if not settings.guided:
            return self.model(noisy, timesteps, render, coefficients, source, surface, identity, warped_source=warped).float()
        return guided_prediction(
            self.model, noisy, timesteps, render, coefficients, source, surface, identity, warped,
            settings.texture_guidance, settings.geometry_guidance,
        )


def guided_prediction(
    model: TGDMDenoiser, noisy: torch.Tensor, timesteps: torch.Tensor, render: torch.Tensor, coefficients: torch.Tensor,
    source: SourceFeatures, surface: torch.Tensor | None, identity: torch.Tensor | None, warped: torch.Tensor | None,
    texture_guidance: float, geometry_guidance: float,
) -> torch.Tensor:
    """The denoiser's prediction under two-condition classifier-free guidance, in float32: three
    variants in one pass (full conditions, geometry only, nothing), weighed InstructPix2Pix-style so
    geometry and texture are guided separately. Model-layout inputs, one row per sample."""
    batch = noisy.shape[0]
    device = noisy.device

    def three(x: torch.Tensor | None) -> torch.Tensor | None:
        return None if x is None else torch.cat([x, x, x])

    geometry_keep = torch.tensor([1.0, 1.0, 0.0], device=device).repeat_interleave(batch)
    texture_keep = torch.tensor([1.0, 0.0, 0.0], device=device).repeat_interleave(batch)
    full, geometry, unconditional = model(
        three(noisy), timesteps.repeat(3), three(render), three(coefficients), source.repeat(3),
        three(surface), three(identity), geometry_keep, texture_keep, three(warped),
    ).float().chunk(3)
    return unconditional + geometry_guidance * (geometry - unconditional) + texture_guidance * (full - geometry)
