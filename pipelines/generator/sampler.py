"""Sampling TGDM over a video: diffusers schedulers, two-condition classifier-free guidance, frames in
batches, chunks so memory does not grow with the video, progress and interruption hooks."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from ..errors import TalkingFaceError
from ..video import frame_chunks
from .config import TGDMConfig
from .distilled import DISTILLED_SCHEDULER
from .inputs import GeneratorInputs, missing_vae_error, to_channels_first, to_model_images, warp_condition
from .tgdm import SourceFeatures, TGDMDenoiser
from .vae import LatentCodec

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


def frame_noise(seed: int, frames: range, shape: tuple[int, ...], same_noise: bool) -> torch.Tensor:
    """Initial noise on the CPU (identical on every device), a function of (seed, frame) only, so the
    frames do not depend on how the video is cut into chunks."""
    generator = torch.Generator()
    noises = []
    for frame in frames:
        generator.manual_seed((seed * 1_000_003 + (0 if same_noise else frame)) % (2**63))
        noises.append(torch.randn(shape, generator=generator))
    return torch.stack(noises)


@dataclass
class _Conditions:
    """One denoiser batch's conditions on the device, prepared once per chunk; the keep vectors
    mark the three guidance variants (full conditions, geometry only, nothing)."""

    render: torch.Tensor
    coefficients: torch.Tensor
    source: SourceFeatures
    surface: torch.Tensor | None
    identity: torch.Tensor | None
    warped: torch.Tensor | None
    geometry_keep: torch.Tensor
    texture_keep: torch.Tensor


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
            # The schedule stays on the CPU: schedulers index and branch on timestep values, which
            # would wait for the GPU at every step if the values lived there.
            scheduler.set_timesteps(settings.steps)
            device_timesteps = scheduler.timesteps.to(device)
            noise = frame_noise(settings.seed, range(chunk.start, chunk.stop), shape, settings.same_noise)
            latents = noise.to(device) * scheduler.init_noise_sigma
            step_generator = torch.Generator(device=device).manual_seed(settings.seed + chunk_index)
            # The conditions go to the device once per chunk, not at every step (each copy from
            # the host stalls the GPU).
            batches = list(frame_chunks(chunk.stop - chunk.start, settings.batch_size))
            conditions = [
                self._conditions(inputs, slice(chunk.start + batch.start, chunk.start + batch.stop), source.select(batch))
                for batch in batches
            ]
            for step, timestep in enumerate(scheduler.timesteps):
                prediction = torch.empty_like(latents)
                model_input = scheduler.scale_model_input(latents, timestep)
                for batch, condition in zip(batches, conditions, strict=True):
                    if check_interrupted is not None:
                        check_interrupted()
                    prediction[batch] = self._predict(model_input[batch], device_timesteps[step], condition)
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

    def _conditions(self, inputs: GeneratorInputs, frames: slice, source: SourceFeatures) -> _Conditions:
        device, dtype = self.device, self.dtype
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
        batch = render.shape[0]
        keep = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]], device=device).repeat_interleave(batch, dim=1)
        return _Conditions(render, coefficients, source, surface, identity, warped, keep[0], keep[1])

    def _predict(self, noisy: torch.Tensor, timestep: torch.Tensor, conditions: _Conditions) -> torch.Tensor:
        """One guided (or plain) denoiser prediction; ``timestep`` is already on the device."""
        settings = self.settings
        render, coefficients, source = conditions.render, conditions.coefficients, conditions.source
        surface, identity, warped = conditions.surface, conditions.identity, conditions.warped
        noisy = noisy.to(render.dtype)
        batch = noisy.shape[0]
        timesteps = timestep.expand(batch)
        self.denoiser_calls += 1
        if not settings.guided:
            return self.model(noisy, timesteps, render, coefficients, source, surface, identity, warped_source=warped).float()
        return guided_prediction(
            self.model, noisy, timesteps, render, coefficients, source, surface, identity, warped,
            settings.texture_guidance, settings.geometry_guidance, conditions.geometry_keep, conditions.texture_keep,
        )


def guided_prediction(
    model: TGDMDenoiser, noisy: torch.Tensor, timesteps: torch.Tensor, render: torch.Tensor, coefficients: torch.Tensor,
    source: SourceFeatures, surface: torch.Tensor | None, identity: torch.Tensor | None, warped: torch.Tensor | None,
    texture_guidance: float, geometry_guidance: float,
    geometry_keep: torch.Tensor | None = None, texture_keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """The denoiser's prediction under two-condition classifier-free guidance, in float32: three
    variants in one pass (full conditions, geometry only, nothing), weighed InstructPix2Pix-style so
    geometry and texture are guided separately. Model-layout inputs, one row per sample. The keep
    vectors ``[3B]`` that mark the variants are made here unless given (the sampler's step loop
    makes them once per chunk, so that it copies nothing to the device)."""
    batch = noisy.shape[0]

    def three(x: torch.Tensor | None) -> torch.Tensor | None:
        return None if x is None else torch.cat([x, x, x])

    if geometry_keep is None or texture_keep is None:
        keep = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]], device=noisy.device).repeat_interleave(batch, dim=1)
        geometry_keep, texture_keep = keep[0], keep[1]
    full, geometry, unconditional = model(
        three(noisy), timesteps.repeat(3), three(render), three(coefficients), source.repeat(3),
        three(surface), three(identity), geometry_keep, texture_keep, three(warped),
    ).float().chunk(3)
    return unconditional + geometry_guidance * (geometry - unconditional) + texture_guidance * (full - geometry)
