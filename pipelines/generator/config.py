"""The configuration of a TGDM denoiser; it travels as JSON in the checkpoint's metadata."""
from __future__ import annotations

from dataclasses import dataclass

from ..checkpoints import CheckpointConfig
from ..errors import ModelFileError
from ..morphable.coefficients import BFM_DIMS, FIXED_DIMS

# The Deep3DFaceRecon 257-d vector plus our gaze (pitch, yaw).
DEFAULT_COEFFICIENT_DIM = BFM_DIMS.flat_size + FIXED_DIMS["gaze"]
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
SPACES = ("pixel", "latent")


@dataclass(frozen=True)
class TGDMConfig(CheckpointConfig):
    """Sizes and switches of :class:`~.tgdm.TGDMDenoiser`.

    The U-Net has one level per entry of ``channel_multipliers``; level ``i`` works at
    ``image_size / 2**i``. Texture Attention runs in the encoder and decoder at every level whose
    resolution is in ``attention_resolutions`` and in the middle block.

    ``space="pixel"`` (the paper, the default) denoises ``image_channels``-channel images of
    ``image_size``². ``space="latent"`` denoises the ``latent_channels``-channel latents of the VAE
    named by ``vae`` (a config shipped in ``configs/``): ``image_size`` is then the latent size and
    the images the user sees (source, I_3d, surface maps, output) are ``pixel_size`` =
    ``image_size · vae_scale_factor`` pixels wide, e.g. 64 → 512 for the SD1.5 VAE.
    """

    DESCRIPTION = "TGDM"
    # Switches added after checkpoints were first written, with the value that older checkpoints (whose
    # config lacks the field) were trained with.
    LEGACY_DEFAULTS = {"warp_condition": False}

    image_size: int = 256
    image_channels: int = 3
    base_channels: int = 64
    channel_multipliers: tuple[int, ...] = (1, 2, 4, 4)
    blocks_per_level: int = 1
    attention_resolutions: tuple[int, ...] = (32,)
    attention_head_channels: int = 32
    source_base_channels: int = 32
    coefficient_dim: int = DEFAULT_COEFFICIENT_DIM
    norm_groups: int = 8
    # Fourier frequencies of the renderer's surface coordinates added to attention queries and keys
    # (0 switches the encoding off).
    surface_frequencies: int = 4
    # Width of an ArcFace identity embedding joined to the attention keys/values as one token (0: off).
    identity_dim: int = 0
    # "sample": the clean image as the warped source plus a learned correction (pixel space with
    # warp_condition), so an untrained model already starts from the no-weights reenactment.
    prediction_type: str = "epsilon"
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    space: str = "pixel"
    vae: str = "sd15"
    latent_channels: int = 4
    vae_scale_factor: int = 8
    # Latents are multiplied by this after encoding (and divided before decoding) so they have about
    # unit variance, as in Stable Diffusion.
    vae_scaling_factor: float = 0.18215
    # Width of the learned stem that brings the full-resolution I_3d render down to the latent grid.
    render_stem_channels: int = 32
    # The source photo warped onto the target geometry and its validity mask join I_3d at the input
    # (render/texture_transfer.py): the 3DMM's own correspondence instead of one attention must find.
    warp_condition: bool = True
    # Per-dimension mean and standard deviation of the training coefficients (empty: use them as they
    # are). Identity, texture and translation span very different ranges from expression and pose, so
    # AdaIN sees them standardised.
    coefficient_mean: tuple[float, ...] = ()
    coefficient_std: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        problems = []
        if self.image_size % (2 ** (len(self.channel_multipliers) - 1)):
            problems.append(f"image_size {self.image_size} is not divisible by 2**(levels-1)")
        if self.prediction_type == "sample" and not (self.warp_condition and not self.latent):
            problems.append("prediction_type 'sample' predicts a correction of the warped source: it needs warp_condition in pixel space")
        if self.prediction_type not in PREDICTION_TYPES:
            problems.append(f"prediction_type must be one of {PREDICTION_TYPES}, got '{self.prediction_type}'")
        if self.space not in SPACES:
            problems.append(f"space must be one of {SPACES}, got '{self.space}'")
        if self.latent and (self.vae_scale_factor < 2 or self.vae_scale_factor & (self.vae_scale_factor - 1)):
            problems.append(f"vae_scale_factor must be a power of two >= 2, got {self.vae_scale_factor}")
        if self.latent and (self.latent_channels < 1 or self.render_stem_channels < 1):
            problems.append("latent_channels and render_stem_channels must be positive")
        for name in ("coefficient_mean", "coefficient_std"):
            if len(getattr(self, name)) not in (0, self.coefficient_dim):
                problems.append(f"{name} must be empty or hold {self.coefficient_dim} values")
        if any(value <= 0 for value in self.coefficient_std):
            problems.append("coefficient_std must be positive")
        if bool(self.coefficient_mean) != bool(self.coefficient_std):
            problems.append("coefficient_mean and coefficient_std come together")
        for channels in self.level_channels + (self.source_base_channels,):
            if channels % self.norm_groups:
                problems.append(f"{channels} channels are not divisible into {self.norm_groups} norm groups")
        if problems:
            raise ModelFileError("invalid TGDM config (checkpoint metadata or training options): " + "; ".join(problems))

    @property
    def latent(self) -> bool:
        return self.space == "latent"

    @property
    def denoised_channels(self) -> int:
        """Channels of what the U-Net denoises: image channels, or VAE latent channels."""
        return self.latent_channels if self.latent else self.image_channels

    @property
    def pixel_size(self) -> int:
        """Side of the images going in (source, I_3d, surface maps) and coming out."""
        return self.image_size * self.vae_scale_factor if self.latent else self.image_size

    @property
    def condition_channels(self) -> int:
        """Pixel-space channels beside the noisy input: I_3d, and with ``warp_condition`` the warped
        source and its validity mask."""
        return self.image_channels * (2 if self.warp_condition else 1) + (1 if self.warp_condition else 0)

    @property
    def level_channels(self) -> tuple[int, ...]:
        return tuple(self.base_channels * m for m in self.channel_multipliers)

    @property
    def source_level_channels(self) -> tuple[int, ...]:
        return tuple(self.source_base_channels * m for m in self.channel_multipliers)

    @property
    def level_resolutions(self) -> tuple[int, ...]:
        return tuple(self.image_size // 2**i for i in range(len(self.channel_multipliers)))

    @property
    def embedding_dim(self) -> int:
        return 4 * self.base_channels

    def attends_at(self, level: int) -> bool:
        return self.level_resolutions[level] in self.attention_resolutions
