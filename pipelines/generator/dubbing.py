"""The dubbing denoiser of paper 2 (landmark-based diffusion): regenerates the lower face of a template
frame so that its mouth follows target lip and jaw landmarks.

Inputs per frame: the noisy target, the template frame with its lower face masked out plus the mask
(concatenated with the noisy target, as inpainting models do), the target landmarks (TalkFormer
tokens, :mod:`.talkformer`) and K reference frames of the same person with their landmarks (encoded
once per video by the reference encoder, attended to by implicit warping).

Pixel mode works on images at ``image_size``²; latent mode on the user's SD1.5 VAE latents (the masked
template and the references are VAE-encoded, the mask is brought to the latent grid): the same
network, the same code path, only what "denoised space" means changes (:func:`to_denoised_space`).
One ``.safetensors`` file holds the weights with the config as JSON in its metadata.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..audio.landmark_model import MOUTH_POINTS
from ..checkpoints import (
    CheckpointConfig,
    load_weights_strictly,
    read_checkpoint_metadata,
    read_checkpoint_weights,
    save_checkpoint,
)
from ..errors import ModelFileError, TalkingFaceError
from .blocks import Downsample, ResBlock, Upsample, timestep_features
from .config import PREDICTION_TYPES, SPACES
from .mouth_warp import reference_base
from .talkformer import LandmarkTokenizer, TalkFormer
from .tgdm import SourceEncoder

FILE_FORMAT = "talkingface.dubbing"
FILE_VERSION = "1"
TGDM_FORMAT = "talkingface.tgdm"
# TGDM's targets plus the clean image itself ("sample", x0), the dubbing default.
DUBBING_PREDICTION_TYPES = (*PREDICTION_TYPES, "sample")


@dataclass(frozen=True)
class DubbingConfig(CheckpointConfig):
    """Sizes and switches of :class:`DubbingDenoiser`; the U-Net layout and latent-mode fields mean
    what they mean in :class:`~.config.TGDMConfig` (so the same schedulers and VAE checks apply).

    ``prediction_type`` defaults to ``"sample"`` (the model predicts the clean frame): most of a dubbed
    frame is given, and a clean-image target converges far faster than ε, whose low-noise regime a
    briefly trained model misses, leaving residual noise in every sample (seen in the first learning
    check: ε-MSE 0.36 at t = 50 after 1050 steps, noise over the whole output).
    ``landmark_points`` lip and jaw points (iBUG-68 jaw 0–16 and lips 48–67) condition the model;
    ``reference_frames`` is how many references the sampler and trainer give it (attention takes any
    number); ``fps`` is the frame rate of the footage it was trained on.
    ``reference_base`` (with ``"sample"``): the clean frame is predicted as a correction of a base, the
    template outside the mask and inside it the reference nearest in mouth shape warped onto the target
    landmarks (:mod:`.mouth_warp`), which also joins the input; an untrained model outputs exactly that
    base. Off in files written before the switch existed (they predicted the frame from scratch)."""

    DESCRIPTION = "dubbing"
    LEGACY_DEFAULTS = {"reference_base": False}

    image_size: int = 256
    image_channels: int = 3
    base_channels: int = 64
    channel_multipliers: tuple[int, ...] = (1, 2, 4, 4)
    blocks_per_level: int = 1
    attention_resolutions: tuple[int, ...] = (32, 16)
    attention_head_channels: int = 32
    reference_base_channels: int = 32
    reference_frames: int = 4
    landmark_points: int = len(MOUTH_POINTS)
    token_width: int = 128
    coordinate_frequencies: int = 6
    norm_groups: int = 8
    prediction_type: str = "sample"
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    space: str = "pixel"
    vae: str = "sd15"
    latent_channels: int = 4
    vae_scale_factor: int = 8
    vae_scaling_factor: float = 0.18215
    fps: float = 25.0
    reference_base: bool = False

    def __post_init__(self) -> None:
        problems = []
        if self.image_size % (2 ** (len(self.channel_multipliers) - 1)):
            problems.append(f"image_size {self.image_size} is not divisible by 2**(levels-1)")
        if self.prediction_type not in DUBBING_PREDICTION_TYPES:
            problems.append(f"prediction_type must be one of {DUBBING_PREDICTION_TYPES}, got '{self.prediction_type}'")
        if self.space not in SPACES:
            problems.append(f"space must be one of {SPACES}, got '{self.space}'")
        if self.reference_base and self.prediction_type != "sample":
            problems.append("reference_base predicts a correction of the warped reference: it needs prediction_type 'sample'")
        if self.latent and (self.vae_scale_factor < 2 or self.vae_scale_factor & (self.vae_scale_factor - 1)):
            problems.append(f"vae_scale_factor must be a power of two >= 2, got {self.vae_scale_factor}")
        if self.landmark_points != len(MOUTH_POINTS):
            problems.append(f"landmark_points must be {len(MOUTH_POINTS)} (iBUG-68 jaw and lips)")
        for name in ("reference_frames", "token_width", "coordinate_frequencies"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1")
        if not self.fps > 0:
            problems.append(f"fps must be positive, got {self.fps}")
        for channels in self.level_channels + (self.reference_base_channels,):
            if channels % self.norm_groups:
                problems.append(f"{channels} channels are not divisible into {self.norm_groups} norm groups")
        if problems:
            raise ModelFileError("invalid dubbing config (checkpoint metadata or training options): " + "; ".join(problems))

    @property
    def latent(self) -> bool:
        return self.space == "latent"

    @property
    def denoised_channels(self) -> int:
        return self.latent_channels if self.latent else self.image_channels

    @property
    def pixel_size(self) -> int:
        return self.image_size * self.vae_scale_factor if self.latent else self.image_size

    @property
    def level_channels(self) -> tuple[int, ...]:
        return tuple(self.base_channels * m for m in self.channel_multipliers)

    @property
    def source_level_channels(self) -> tuple[int, ...]:
        """Widths of the reference encoder (TGDM's source encoder, reused) at every level."""
        return tuple(self.reference_base_channels * m for m in self.channel_multipliers)

    @property
    def level_resolutions(self) -> tuple[int, ...]:
        return tuple(self.image_size // 2**i for i in range(len(self.channel_multipliers)))

    def attends_at(self, level: int) -> bool:
        return self.level_resolutions[level] in self.attention_resolutions


@dataclass
class ReferenceFeatures:
    """The reference encoder's features of K reference frames, ``[R, K, C, h, w]`` per U-Net level
    (R = 1 shared by every frame, or one set per frame), with the references' landmarks ``[R, K, P, 2]``
    and, for a ``reference_base`` model, the references themselves ``[R, K, c, S, S]`` (denoised space).
    Computed once per video and reused at every denoising step."""

    levels: list[torch.Tensor]
    landmarks: torch.Tensor
    images: torch.Tensor | None = None

    @property
    def batch(self) -> int:
        return self.landmarks.shape[0]

    def select(self, index: slice) -> ReferenceFeatures:
        if self.batch == 1:
            return self
        return ReferenceFeatures([level[index] for level in self.levels], self.landmarks[index],
                                 None if self.images is None else self.images[index])

    def detach(self) -> ReferenceFeatures:
        return ReferenceFeatures([level.detach() for level in self.levels], self.landmarks.detach(),
                                 None if self.images is None else self.images.detach())

    def repeat(self, times: int) -> ReferenceFeatures:
        if self.batch == 1 or times == 1:
            return self
        return ReferenceFeatures([level.repeat(times, 1, 1, 1, 1) for level in self.levels], self.landmarks.repeat(times, 1, 1, 1),
                                 None if self.images is None else self.images.repeat(times, 1, 1, 1, 1))

    def repeat_interleave(self, times: int) -> ReferenceFeatures:
        """Each set ``times`` times in a row (one set per frame when each set serves ``times`` frames)."""
        return ReferenceFeatures([level.repeat_interleave(times, 0) for level in self.levels],
                                 self.landmarks.repeat_interleave(times, 0),
                                 None if self.images is None else self.images.repeat_interleave(times, 0))


class DubbingDenoiser(nn.Module):
    """Predicts the frame with its lower face regenerated (or ε, or v: ``prediction_type``). Images are
    -1..1 channel-first; in latent mode ``noisy``, ``masked`` and the references are scaled VAE
    latents at ``image_size``², while ``mask`` may be given at pixel size (it is averaged down to the latent grid). Landmarks are crop coordinates in
    -1..1 (:func:`crop_coordinates`). ``landmark_keep`` ``[B]`` (0 or 1) swaps the landmark tokens of
    a sample for a learned null set: the trainer's dropout, landmark guidance, and the ablation."""

    def __init__(self, config: DubbingConfig) -> None:
        super().__init__()
        self.config = config
        embedding = 4 * config.base_channels
        groups = config.norm_groups
        channels = config.level_channels
        reference_channels = config.source_level_channels
        self.time_embedding = nn.Sequential(
            nn.Linear(config.base_channels, embedding), nn.SiLU(), nn.Linear(embedding, embedding)
        )
        self.reference_encoder = SourceEncoder(config)
        self.tokenizer = LandmarkTokenizer(config.landmark_points, config.token_width, config.coordinate_frequencies)

        def talkformer(level: int) -> TalkFormer:
            return TalkFormer(channels[level], reference_channels[level], config.token_width,
                              config.attention_head_channels, groups, config.coordinate_frequencies)

        # noisy target ⊕ masked template ⊕ mask (⊕ the warped-reference base)
        inputs = (3 if config.reference_base else 2) * config.denoised_channels + 1
        self.input = nn.Conv2d(inputs, channels[0], 3, padding=1)
        self.encoder = nn.ModuleList()
        self.encoder_attention = nn.ModuleDict()
        self.downsamples = nn.ModuleList()
        previous = channels[0]
        for level, width in enumerate(channels):
            blocks = []
            for index in range(config.blocks_per_level):
                blocks.append(ResBlock(previous, width, groups, embedding))
                previous = width
                if config.attends_at(level):
                    self.encoder_attention[f"{level}_{index}"] = talkformer(level)
            self.encoder.append(nn.ModuleList(blocks))
            if level < len(channels) - 1:
                self.downsamples.append(Downsample(width))
        deepest = len(channels) - 1
        self.middle_in = ResBlock(previous, previous, groups, embedding)
        self.middle_attention = talkformer(deepest)
        self.middle_out = ResBlock(previous, previous, groups, embedding)
        self.decoder = nn.ModuleList()
        self.decoder_attention = nn.ModuleDict()
        self.upsamples = nn.ModuleList()
        for level in reversed(range(len(channels))):
            width = channels[level]
            blocks = []
            for index in range(config.blocks_per_level):
                blocks.append(ResBlock(previous + width, width, groups, embedding))
                previous = width
                if config.attends_at(level):
                    self.decoder_attention[f"{level}_{index}"] = talkformer(level)
            self.decoder.append(nn.ModuleList(blocks))
            if level > 0:
                self.upsamples.append(Upsample(width))
        self.output_norm = nn.GroupNorm(groups, channels[0])
        self.output = nn.Conv2d(channels[0], config.denoised_channels, 3, padding=1)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    def encode_references(self, references: torch.Tensor, landmarks: torch.Tensor) -> ReferenceFeatures:
        """``references [R, K, c, S, S]`` (denoised space) and their landmarks ``[R, K, P, 2]``."""
        if references.ndim != 5:
            raise TalkingFaceError(f"references must be [sets, frames, channels, height, width], got {tuple(references.shape)}")
        sets, count = references.shape[:2]
        self._check_denoised("reference", references.flatten(0, 1))
        self._check_landmarks("reference landmarks", landmarks, (sets, count))
        levels = self.reference_encoder(references.flatten(0, 1))
        return ReferenceFeatures([level.unflatten(0, (sets, count)) for level in levels], landmarks,
                                 references if self.config.reference_base else None)

    def forward(
        self,
        noisy: torch.Tensor,
        timesteps: torch.Tensor,
        masked: torch.Tensor,
        mask: torch.Tensor,
        landmarks: torch.Tensor,
        references: ReferenceFeatures,
        landmark_keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        config = self.config
        batch = noisy.shape[0]
        self._check_denoised("noisy", noisy)
        self._check_denoised("masked template", masked)
        self._check_landmarks("target landmarks", landmarks, (batch,))
        if mask.ndim != 4 or mask.shape[:2] != (batch, 1) or mask.shape[2] != mask.shape[3]:
            raise ValueError(f"the mask must be [{batch}, 1, S, S], got {tuple(mask.shape)}")
        if references.batch not in (1, batch):
            raise TalkingFaceError(f"{references.batch} reference sets for {batch} frames: give one set or one per frame")
        if mask.shape[-1] != config.image_size:
            mask = F.interpolate(mask, size=(config.image_size, config.image_size), mode="area")
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(batch)
        embedding = F.silu(self.time_embedding(timestep_features(timesteps, config.base_channels).to(noisy.dtype)))
        target_tokens = self.tokenizer(landmarks, landmark_keep)
        reference_landmarks = references.landmarks.to(noisy.dtype)
        if landmark_keep is not None and references.batch != batch:
            # one shared reference set, but whether landmarks are kept differs per sample
            reference_landmarks = reference_landmarks.expand(batch, -1, -1, -1)
        reference_tokens = self.tokenizer(reference_landmarks, landmark_keep)

        def attend(block: TalkFormer, h: torch.Tensor, level: int) -> torch.Tensor:
            return block(h, target_tokens, references.levels[level], reference_tokens)

        mask = mask.to(noisy.dtype)
        conditions = [noisy, masked, mask]
        if config.reference_base:
            base = self.base(masked, mask, landmarks, references, landmark_keep)
            conditions.append(base)
        h = self.input(torch.cat(conditions, dim=1))
        skips = []
        for level, blocks in enumerate(self.encoder):
            for index, block in enumerate(blocks):
                h = block(h, embedding)
                if f"{level}_{index}" in self.encoder_attention:
                    h = attend(self.encoder_attention[f"{level}_{index}"], h, level)
                skips.append(h)
            if level < len(self.downsamples):
                h = self.downsamples[level](h)
        deepest = len(self.encoder) - 1
        h = self.middle_out(attend(self.middle_attention, self.middle_in(h, embedding), deepest), embedding)
        for step, blocks in enumerate(self.decoder):
            level = deepest - step
            for index, block in enumerate(blocks):
                h = block(torch.cat([h, skips.pop()], dim=1), embedding)
                if f"{level}_{index}" in self.decoder_attention:
                    h = attend(self.decoder_attention[f"{level}_{index}"], h, level)
            if step < len(self.upsamples):
                h = self.upsamples[step](h)
        output = self.output(F.silu(self.output_norm(h)))
        return output + base if config.reference_base else output

    def base(self, masked: torch.Tensor, mask: torch.Tensor, landmarks: torch.Tensor, references: ReferenceFeatures,
             landmark_keep: torch.Tensor | None = None) -> torch.Tensor:
        """What a ``reference_base`` model corrects (:func:`.mouth_warp.reference_base`); ``mask`` at ``image_size``."""
        if references.images is None:
            raise TalkingFaceError("this dubbing model starts from a warped reference frame: encode the references "
                                   "with this model's encode_references, which keeps the reference images")
        batch = masked.shape[0]
        images = references.images.to(masked.dtype).expand(batch, *references.images.shape[1:])
        reference_landmarks = references.landmarks.to(masked.dtype).expand(batch, *references.landmarks.shape[1:])
        return reference_base(masked, mask, landmarks, images, reference_landmarks, landmark_keep)

    def _check_denoised(self, name: str, images: torch.Tensor) -> None:
        config = self.config
        size, channels = config.image_size, config.denoised_channels
        if images.ndim != 4 or images.shape[1] != channels or images.shape[2:] != (size, size):
            what = f"VAE latents with {channels} channels" if config.latent else f"images with {channels} channels"
            raise TalkingFaceError(
                f"the dubbing model works on {size}x{size} {what}; the {name} input is {tuple(images.shape)}"
            )

    def _check_landmarks(self, name: str, landmarks: torch.Tensor, leading: tuple[int, ...]) -> None:
        expected = (*leading, self.config.landmark_points, 2)
        if tuple(landmarks.shape) != expected:
            raise TalkingFaceError(f"the {name} must be {expected} (lip and jaw points), got {tuple(landmarks.shape)}")


def crop_coordinates(points: torch.Tensor, size: int) -> torch.Tensor:
    """Pixel positions in a ``size``-px crop (pixel centres at +0.5) → the model's -1..1 coordinates."""
    return points / size * 2 - 1


def save_dubbing(model: DubbingDenoiser, path: str | Path, extra_metadata: dict[str, str] | None = None) -> None:
    metadata = {"format": FILE_FORMAT, "version": FILE_VERSION, "config": model.config.to_json()}
    metadata.update(extra_metadata or {})
    save_checkpoint(model, path, metadata)


def read_dubbing_metadata(path: str | Path) -> dict[str, str]:
    return read_checkpoint_metadata(path, "dubbing checkpoint")


def load_dubbing(path: str | Path, device: torch.device | str = "cpu") -> DubbingDenoiser:
    """Build the dubbing denoiser its file describes and load every weight strictly. A TGDM generator
    file, or any other kind, is refused with a message saying which loader it belongs to."""
    path = Path(path)
    metadata = read_dubbing_metadata(path)
    found = metadata.get("format")
    if found == TGDM_FORMAT:
        raise ModelFileError(
            f"{path.name} is a TGDM generator checkpoint, not a dubbing model: load it with Load Generator, "
            "and pick a dubbing checkpoint (trained with `python -m scripts.train_dubbing`) here"
        )
    if found != FILE_FORMAT:
        kind = f"format '{found}'" if found else "no 'format' entry in its metadata"
        raise ModelFileError(
            f"{path.name} is not a dubbing checkpoint ({kind}, expected '{FILE_FORMAT}'); "
            "train one with `python -m scripts.train_dubbing`"
        )
    if metadata.get("version") != FILE_VERSION:
        raise ModelFileError(f"{path.name} is dubbing checkpoint version {metadata.get('version')!r}; this pack reads {FILE_VERSION!r}")
    model = DubbingDenoiser(DubbingConfig.from_metadata(metadata, path.name))
    load_weights_strictly(model, read_checkpoint_weights(path), path.name, "dubbing")
    return model.to(device).eval()
