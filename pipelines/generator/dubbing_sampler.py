"""Sampling the dubbing denoiser: diffusers schedulers (shared with TGDM), optional landmark guidance,
frames in batches. The noise of a frame depends on (seed, frame) only, so cutting a video into chunks
never changes a frame; the video job (:mod:`.dubbing_video`) feeds it one chunk at a time."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..errors import TalkingFaceError
from ..video import frame_chunks
from .dubbing import DubbingDenoiser, ReferenceFeatures
from .inputs import missing_vae_error, to_model_images
from .sampler import SCHEDULERS, frame_noise, make_scheduler
from .vae import LatentCodec


@dataclass(frozen=True)
class DubbingSettings:
    """``landmark_guidance`` 1 = no guidance (one denoiser pass per step); above 1 the mouth follows
    the landmarks more strongly (classifier-free guidance against the landmark-free prediction)."""

    scheduler: str = "ddim"
    steps: int = 20
    seed: int = 0
    landmark_guidance: float = 1.0
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.scheduler not in SCHEDULERS:
            raise TalkingFaceError(f"unknown sampler '{self.scheduler}': choose one of {SCHEDULERS}")
        if self.steps < 1 or self.batch_size < 1:
            raise TalkingFaceError("steps and batch size must each be at least 1")


class DubbingSampler:
    """Denoises lower faces with a :class:`DubbingDenoiser`; a latent-mode model needs ``vae``."""

    def __init__(self, model: DubbingDenoiser, settings: DubbingSettings, vae: LatentCodec | None = None) -> None:
        self.model = model
        self.settings = settings
        self.vae = vae
        self.denoiser_calls = 0
        if model.config.latent:
            if vae is None:
                raise missing_vae_error(model.config, "this dubbing model")
            vae.check_matches(model.config, "the dubbing model")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def to_denoised(self, images: torch.Tensor) -> torch.Tensor:
        """ComfyUI-style images ``[B, S, S, 3]`` 0..1 → what the model denoises (pixels -1..1, or scaled latents)."""
        if self.model.config.latent:
            return self.vae.encode(images).to(self.device, self.dtype)
        return to_model_images(images, self.device, self.dtype)

    def from_denoised(self, values: torch.Tensor) -> torch.Tensor:
        if self.model.config.latent:
            return self.vae.decode(values.float())
        return ((values.float().clamp(-1, 1) + 1) * 0.5).permute(0, 2, 3, 1).cpu()

    @torch.no_grad()
    def encode_references(self, images: torch.Tensor, landmarks: torch.Tensor) -> ReferenceFeatures:
        """K reference crops ``[K, S, S, 3]`` with their lip/jaw landmarks ``[K, 37, 2]`` (-1..1)."""
        values = self.to_denoised(images).unsqueeze(0)
        return self.model.encode_references(values, landmarks.to(self.device, self.dtype).unsqueeze(0))

    @torch.no_grad()
    def sample(
        self,
        templates: torch.Tensor,
        masks: torch.Tensor,
        landmarks: torch.Tensor,
        references: ReferenceFeatures,
        frames: Sequence[int],
        on_step: Callable[[int, int], None] | None = None,
        check_interrupted: Callable[[], None] | None = None,
    ) -> torch.Tensor:
        """Crops ``[n, S, S, 3]`` (CPU, 0..1) for template crops ``[n, S, S, 3]``, input masks ``[n, S, S]``
        and target landmarks ``[n, 37, 2]``; ``frames`` are the n frames' numbers in the video (their noise)."""
        config = self.model.config
        count = templates.shape[0]
        if masks.shape != templates.shape[:3] or landmarks.shape[0] != count or len(frames) != count:
            raise ValueError(
                f"dubbing inputs disagree: {count} templates, masks {tuple(masks.shape)}, {landmarks.shape[0]} landmark sets"
            )
        device, dtype = self.device, self.dtype
        mask = masks.to(device, dtype).unsqueeze(1)
        # masked pixels are grey (0 in the model range), before the VAE in latent mode
        masked = self.to_denoised(templates * (1 - masks.unsqueeze(-1)) + 0.5 * masks.unsqueeze(-1))
        landmarks = landmarks.to(device, dtype)
        scheduler = make_scheduler(self.settings.scheduler, config)
        scheduler.set_timesteps(self.settings.steps, device=device)
        shape = (config.denoised_channels, config.image_size, config.image_size)
        latents = frame_noise(self.settings.seed, frames, shape, True).to(device) * scheduler.init_noise_sigma
        step_generator = torch.Generator(device=device).manual_seed(self.settings.seed + int(frames[0]))
        for step, timestep in enumerate(scheduler.timesteps):
            model_input = scheduler.scale_model_input(latents, timestep)
            prediction = torch.empty_like(latents)
            for batch in frame_chunks(count, self.settings.batch_size):
                if check_interrupted is not None:
                    check_interrupted()
                prediction[batch] = self._predict(model_input[batch].to(dtype), timestep, masked[batch], mask[batch],
                                                  landmarks[batch], references.select(batch))
            latents = scheduler.step(prediction, timestep, latents, generator=step_generator).prev_sample
            if on_step is not None:
                on_step(step + 1, self.settings.steps)
        if check_interrupted is not None:
            check_interrupted()
        return self.from_denoised(latents)

    def _predict(self, noisy, timestep, masked, mask, landmarks, references: ReferenceFeatures) -> torch.Tensor:
        batch = noisy.shape[0]
        timesteps = timestep.to(self.device).expand(batch)
        guidance = self.settings.landmark_guidance
        self.denoiser_calls += 1
        if guidance == 1.0:
            return self.model(noisy, timesteps, masked, mask, landmarks, references).float()

        def two(x: torch.Tensor) -> torch.Tensor:
            return torch.cat([x, x])

        keep = torch.tensor([1.0, 0.0], device=self.device).repeat_interleave(batch)
        full, free = self.model(two(noisy), timesteps.repeat(2), two(masked), two(mask), two(landmarks),
                                references.repeat(2), keep).float().chunk(2)
        return free + guidance * (full - free)
