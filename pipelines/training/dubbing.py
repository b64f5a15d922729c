"""Training the dubbing denoiser (paper 2): first on ground-truth landmarks, then end to end with the
audio → landmark model, whose predicted lip and jaw points reach the denoiser only through TalkFormer
tokens (and a ``reference_base`` model's warp), so the diffusion loss trains the landmark model too
(plus its own L1 + velocity loss, which keeps the points landmarks). In that joint stage the denoiser
keeps learning from the training landmarks; the loss from the predicted points trains only the
landmark model (see :class:`DubbingObjective`).

A training sample is a window of ``target_frames`` frames of one clip (one frame without a landmark
model): the landmark model's inputs for the window (reference landmark sets, mel windows, upper-face
points) and, for ``frames_per_window`` of its frames, the denoiser's: the target crop, the template
(the same frame with the lower face masked, its top edge jittered), the ground-truth lip and jaw
points, and K reference crops of the same clip with their points. Both stages run in
:func:`.loop.train_windows` (HF accelerate, exact pickle-free resume): every random draw of the loss
(noise, timesteps, landmark dropout) comes from torch's global generators, which the loop saves.

Clips: synthetic talking faces (the synthetic audio's mouth motion on rendered demo-face identities
with their skin pattern and background, :func:`synthetic_dubbing_clips`), or preprocessed real videos
(:func:`shard_clips`: frames, landmarks and, for video files with a sound track, the speech of
``preprocess_videos`` shards or Prepare Training Footage with audio; clips with sound train both
stages, silent ones the first).
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..audio.features import LogMel, mel_windows, padded_log_mel
from ..audio.landmark_model import (
    MOUTH_POINTS,
    POSE_POINTS,
    LandmarkCompletionTransformer,
    LandmarkModelConfig,
    save_landmark_model,
)
from ..audio.landmarks import eye_frames, project_landmarks, to_normalised, to_pixels
from ..errors import TalkingFaceError
from ..face.mouth import lower_face_input_mask, mouth_paste_mask
from ..generator.dubbing import DubbingConfig, DubbingDenoiser, ReferenceFeatures, crop_coordinates, save_dubbing
from ..generator.vae import LatentCodec
from ..morphable.camera import PerspectiveCamera
from ..morphable.model import MorphableModel
from ..render.renderer import FaceRenderer
from ..video import frame_chunks
from .audio_synthetic import MOUTH_DIRECTIONS, TalkingClip, synthetic_clip
from .loop import TrainConfig, WindowTask, train_windows, velocity_l1
from .synthetic_faces import SyntheticFaceSettings, SyntheticIdentity, photograph, random_identity
from .video_shards import VideoFaceShards

STATE_FORMAT = "talkingface.dubbing-training-state"
LANDMARK_SUFFIX = "_landmarks"
# How far the training masks' top edge wanders (fraction of the crop), so users may move it a little.
TOP_SHIFT_JITTER = 0.03
# Default extra weight of the mouth and jaw region in the diffusion loss (see DubbingObjective).
MOUTH_WEIGHT = 5.0


@dataclass
class DubbingClip:
    """One talking clip: ``frames`` ``[F, S, S, 3]`` 0..1 (a tensor or any row-indexable store),
    ``landmarks`` ``[F, 68, 2]`` in crop pixels, 16 kHz ``audio`` ``[N]`` (None: no sound), and for
    synthetic clips the true mouth weights ``[F, 3]`` (jaw_open, lip_pucker, smile)."""

    frames: object
    landmarks: torch.Tensor
    fps: float
    audio: torch.Tensor | None = None
    mouth: torch.Tensor | None = None

    @property
    def count(self) -> int:
        return self.landmarks.shape[0]


def synthetic_dubbing_clips(
    face_model: MorphableModel, clips: int, seconds: float, size: int, seed: int = 0, fps: float = 25.0,
    settings: SyntheticFaceSettings | None = None, with_templates: bool = False,
) -> list[DubbingClip] | list[tuple[DubbingClip, DubbingClip]]:
    """``clips`` synthetic speakers: the synthetic audio's syllables move the mouth of a random demo-face
    identity with its own skin pattern and background, rendered at ``size``² in the fitter's framing.

    ``with_templates``: each clip comes with a template clip, the same speaker and head motion saying
    something else (another clip's mouth motion): what dubbing starts from, for held-out evaluation."""
    settings = settings or SyntheticFaceSettings(image_size=size)
    renderer = FaceRenderer(face_model, PerspectiveCamera.deep3d(size))
    generator = torch.Generator().manual_seed(seed)
    mouth_columns = [face_model.expression_index(name) for name in MOUTH_DIRECTIONS]
    scale = size / PerspectiveCamera.deep3d().image_size

    def render(clip: TalkingClip, person: SyntheticIdentity) -> DubbingClip:
        coefficients = clip.coefficients
        coefficients.texture[:] = person.texture
        frames = torch.cat([
            photograph(renderer, coefficients[chunk], [person] * (chunk.stop - chunk.start))[0]
            for chunk in frame_chunks(coefficients.frames, 64)
        ])
        landmarks = project_landmarks(face_model, coefficients, PerspectiveCamera.deep3d()) * scale
        return DubbingClip(frames.half(), landmarks, fps, clip.audio, coefficients.expression[:, mouth_columns].clone())

    result = []
    for number in range(clips):
        clip_seed = seed * 100_003 + number
        clip = synthetic_clip(face_model, seconds, clip_seed, fps)
        person = random_identity(face_model, settings, generator)
        target = render(clip, person)
        if not with_templates:
            result.append(target)
            continue
        other = synthetic_clip(face_model, seconds, clip_seed + 50_000, fps)
        clip.coefficients.expression[:, mouth_columns] = other.coefficients.expression[:, mouth_columns]
        result.append((target, render(TalkingClip(other.audio, clip.landmarks, fps, clip.coefficients), person)))
    return result


def with_detector_jitter(clips: Sequence[DubbingClip], pixels: float, seed: int = 0) -> list[DubbingClip]:
    """``clips`` whose landmarks carry what a landmark detector adds to real footage: independent
    Gaussian jitter of ``pixels`` (crop pixels) per point and frame. Frames, audio and the true mouth
    weights stay as they are, so a model trained on these landmarks is still scored on the truth."""
    generator = torch.Generator().manual_seed(seed)
    return [dataclasses.replace(clip, landmarks=clip.landmarks + pixels * torch.randn(clip.landmarks.shape, generator=generator))
            for clip in clips]


def video_clip_rows(shards: VideoFaceShards, video: int) -> list[range]:
    """The rows of a preprocessed video that make clips: one per run of consecutive frames when the video
    has speech (frames left out without a face would shift the audio against the frames), else all."""
    return shards.frame_runs(video) if shards.has_audio(video) else [shards.video_rows(video)]


def rows_clip(shards: VideoFaceShards, rows: range) -> DubbingClip:
    """Rows of one video as a clip at the video's frame rate, with the speech under them when it has some;
    frames are read from the shards when drawn."""
    video = int(shards.videos[rows.start])
    return DubbingClip(RowView(shards.photos, rows), shards.landmarks[rows.start:rows.stop] * (shards.image_size / shards.crop_size),
                       shards.video_fps(video), shards.clip_audio(rows))


def shard_clips(shards: VideoFaceShards, min_frames: int = 2) -> list[DubbingClip]:
    """The preprocessed videos as clips (:func:`video_clip_rows`, :func:`rows_clip`); clips of fewer than
    ``min_frames`` frames are left out."""
    return [rows_clip(shards, rows) for video in shards.video_indices for rows in video_clip_rows(shards, video)
            if len(rows) >= max(min_frames, 2)]


def window_frames(landmarks: LandmarkModelConfig | None) -> int:
    """Consecutive frames a training window needs: 2, or with a landmark model trained jointly its
    ``target_frames`` + 1."""
    return 2 if landmarks is None else landmarks.target_frames + 1


def clips_with_sound(clips: Sequence[DubbingClip]) -> list[DubbingClip]:
    """The clips with speech, for joint training; all of them when none has any (the trainer then says why)."""
    return [clip for clip in clips if clip.audio is not None] or list(clips)


def landmark_output(path: Path) -> Path:
    """Where a joint run's fine-tuned landmark model goes: ``<name>_landmarks.safetensors`` beside ``path``."""
    return path.with_name(path.stem + LANDMARK_SUFFIX + path.suffix)


class RowView:
    """Rows ``start..stop`` of a row store, indexed from 0."""

    def __init__(self, store, rows: range) -> None:
        self.store, self.rows = store, rows

    def __getitem__(self, index: torch.Tensor) -> torch.Tensor:
        return self.store[torch.as_tensor(index) + self.rows.start]


@dataclass(frozen=True)
class TraineeConfig:
    """What a training run trains, compared on resume: the dubbing config and, jointly, the landmark model's."""

    dubbing: DubbingConfig
    landmarks: LandmarkModelConfig | None

    def to_json(self) -> str:
        return json.dumps({"dubbing": json.loads(self.dubbing.to_json()),
                           "landmarks": None if self.landmarks is None else json.loads(self.landmarks.to_json())})


class DubbingTrainee(nn.Module):
    """The denoiser, and in joint training the landmark model feeding it: one module, so accelerate
    syncs every gradient and the loop saves one state."""

    def __init__(self, denoiser: DubbingDenoiser, landmark_model: LandmarkCompletionTransformer | None = None) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.landmark_model = landmark_model

    @property
    def config(self) -> TraineeConfig:
        return TraineeConfig(self.denoiser.config, None if self.landmark_model is None else self.landmark_model.config)


class DubbingWindows(Dataset):
    """``count`` samples from ``clips``; sample k is the same on every pass (seeded by k). With a
    landmark model config, each sample is a window with the landmark model's inputs, else one frame."""

    def __init__(self, clips: Sequence[DubbingClip], config: DubbingConfig, count: int, seed: int = 0,
                 landmark_config: LandmarkModelConfig | None = None, frames_per_window: int = 2) -> None:
        if not clips:
            raise TalkingFaceError("no training clips")
        self.config, self.landmark_config = config, landmark_config
        self.count, self.seed = count, seed
        self.window = landmark_config.target_frames if landmark_config else 1
        self.picks = min(frames_per_window, self.window)
        self.clips = list(clips)
        for clip in self.clips:
            if clip.count < self.window + 1:
                raise TalkingFaceError(f"a clip of {clip.count} frames is shorter than a training window ({self.window + 1})")
            if clip.frames[torch.tensor([0])].shape[1:] != (config.pixel_size, config.pixel_size, 3):
                raise TalkingFaceError(f"training frames must be {config.pixel_size}x{config.pixel_size} RGB for this model")
        self.mels = None
        if landmark_config is not None:
            if any(clip.audio is None for clip in self.clips):
                raise TalkingFaceError(
                    "joint training needs clips with audio, and these have none (frame folders, silent videos, footage "
                    "prepared without audio, or shards written before speech was kept): preprocess video files with "
                    "their sound track again (or connect the audio to Prepare Training Footage), or train the generator "
                    "on ground-truth landmarks with these clips")
            off_rate = sorted({f"{clip.fps:g}" for clip in self.clips if abs(clip.fps - config.fps) > 0.02 * config.fps})
            if off_rate:
                raise TalkingFaceError(
                    f"clips at {', '.join(off_rate)} fps cannot train jointly a dubbing model made for {config.fps:g} fps "
                    "(the landmark model learns motion per frame): use footage at that rate, or a model with that fps")
            log_mel = LogMel()
            self.mel_config = log_mel.config
            self.mels = [padded_log_mel(log_mel, clip.audio) for clip in self.clips]

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        number = int(torch.randint(len(self.clips), (1,), generator=generator))
        clip = self.clips[number]
        size = self.config.pixel_size
        start = int(torch.randint(clip.count - self.window + 1, (1,), generator=generator))
        window = torch.arange(start, start + self.window)
        picks = torch.randperm(self.window, generator=generator)[: self.picks].sort().values
        frames = window[picks]
        references = torch.randint(clip.count, (self.config.reference_frames,), generator=generator)
        shift = float(torch.empty(()).uniform_(-TOP_SHIFT_JITTER, TOP_SHIFT_JITTER, generator=generator))
        target = clip.frames[frames].float()
        mask = lower_face_input_mask(clip.landmarks[frames], size, shift)
        sample = {
            "target": target,
            "masked": target * (1 - mask.unsqueeze(-1)) + 0.5 * mask.unsqueeze(-1),
            "mask": mask,
            # where the mouth and jaw are, in the target or the template's shape: the loss weighs it up
            "mouth_region": mouth_paste_mask(clip.landmarks[frames], clip.landmarks[frames][:, :17], size, shift,
                                             feather=max(size // 32, 1)),
            "landmarks": crop_coordinates(clip.landmarks[frames][:, list(MOUTH_POINTS)], size),
            "references": clip.frames[references].float(),
            "reference_landmarks": crop_coordinates(clip.landmarks[references][:, list(MOUTH_POINTS)], size),
        }
        if self.landmark_config is not None:
            points = clip.landmarks[window]
            normalised = to_normalised(points, eye_frames(points))
            sets = torch.randint(clip.count, (self.landmark_config.reference_sets,), generator=generator)
            all_points = clip.landmarks[sets]
            mel, first_mel = self.mels[number]
            origin, axis, scale = eye_frames(points[picks])
            sample.update({
                "motion_references": to_normalised(all_points, eye_frames(all_points)),
                "mel_windows": mel_windows(mel.unsqueeze(0), first_mel, window, clip.fps, self.mel_config)[0],
                "pose": normalised[:, list(POSE_POINTS)],
                "mouth": normalised[:, list(MOUTH_POINTS)],
                "picks": picks, "origin": origin, "axis": axis, "scale": scale,
            })
        return sample


def denoised_space(config: DubbingConfig, vae: LatentCodec | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Channel-last 0..1 images ``[..., S, S, 3]`` → channel-first model inputs (-1..1, or the frozen VAE's latents)."""
    def convert(images: torch.Tensor) -> torch.Tensor:
        flat = images.reshape(-1, *images.shape[-3:])
        if config.latent:
            return vae.encode(flat.float()).to(images.device)
        return flat.permute(0, 3, 1, 2) * 2 - 1
    return convert


@dataclass
class DubbingLosses:
    """Validation of one model on fixed noise: ``model_l1`` is the diffusion loss (the figure the loop
    keeps the best checkpoint by), ``no_landmarks`` the same with the landmark tokens dropped, and in
    joint training ``landmark_l1`` the landmark model's L1 in the normalised crop frame."""

    model_l1: float
    no_landmarks: float
    landmark_l1: float = float("nan")


@dataclass
class BatchLosses:
    """One batch's losses: ``diffusion`` with the training landmarks (what the denoiser learns from),
    and in joint training the landmark model's own ``landmark_l1`` and ``through_landmark_model``, the
    diffusion loss from its predicted points with the denoiser's weights held."""

    diffusion: torch.Tensor
    landmark_l1: torch.Tensor | None = None
    through_landmark_model: torch.Tensor | None = None

    @property
    def as_used(self) -> torch.Tensor:
        """The diffusion loss from the landmarks the model gets when dubbing: the landmark model's when there is one."""
        return self.diffusion if self.through_landmark_model is None else self.through_landmark_model

    def total(self, landmark_weight: float) -> torch.Tensor:
        if self.landmark_l1 is None:
            return self.diffusion
        return self.diffusion + self.through_landmark_model + landmark_weight * self.landmark_l1


@contextmanager
def held_weights(module: nn.Module) -> Iterator[None]:
    """Inside, ``module``'s parameters take no gradient (what passes through it still does)."""
    trainable = [parameter for parameter in module.parameters() if parameter.requires_grad]
    for parameter in trainable:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter in trainable:
            parameter.requires_grad_(True)


class DubbingObjective:
    """The losses of one training or validation batch. ``mouth_weight``: the squared error in the mouth
    and jaw region counts 1 + ``mouth_weight`` times, because most of the regenerated region (cheeks,
    neck, the background under the nose line) is predictable from what surrounds it, while the mouth,
    the point of dubbing, is a few percent of the pixels."""

    def __init__(self, config: DubbingConfig, vae: LatentCodec | None = None, landmark_drop: float = 0.1,
                 landmark_weight: float = 1.0, velocity_weight: float = 1.0, mouth_weight: float = 0.0) -> None:
        from diffusers import DDPMScheduler

        if config.latent and vae is None:
            raise TalkingFaceError("a latent-mode dubbing model trains on the VAE's latents: give the VAE")
        self.config = config
        self.to_model = denoised_space(config, vae)
        self.schedule = DDPMScheduler(num_train_timesteps=config.num_train_timesteps, beta_schedule=config.beta_schedule,
                                      prediction_type=config.prediction_type)
        self.landmark_drop, self.landmark_weight, self.velocity_weight = landmark_drop, landmark_weight, velocity_weight
        self.mouth_weight = mouth_weight

    def predicted_landmarks(self, model: DubbingTrainee, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The landmark model's lip and jaw points for the denoiser's frames ``[B·G, 37, 2]``, mapped
        into the crop, and the landmark model's own loss against the training landmarks."""
        predicted = model.landmark_model(batch["motion_references"], batch["mel_windows"], batch["pose"])
        landmark_loss = velocity_l1(predicted, batch["mouth"], self.velocity_weight)
        picked = predicted.gather(1, batch["picks"][..., None, None].expand(-1, -1, *predicted.shape[2:]))
        pixels = to_pixels(picked, (batch["origin"], batch["axis"], batch["scale"]))
        return crop_coordinates(pixels, self.config.pixel_size).flatten(0, 1), landmark_loss

    def __call__(self, model: DubbingTrainee, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None,
                 landmark_keep: torch.Tensor | None = None) -> BatchLosses:
        """The batch's losses. Draws come from ``generator`` (validation) or torch's global generators
        (training, saved by the loop for exact resume).

        In joint training the denoiser still learns from the training landmarks, and the landmark model
        learns through the denoiser: the same noisy frames are denoised a second time from the predicted
        points, with the denoiser's weights held, so that loss trains only the landmark model. (Training
        the denoiser on the predicted points instead taught it to trust landmarks less: lip sync fell
        from 0.81 to 0.72 in the learning check with an early-stopped landmark model; see RESULTS.)"""
        denoiser = model.denoiser
        picks = batch["target"].shape[1]
        clean = self.to_model(batch["target"])
        masked = self.to_model(batch["masked"])
        mask = batch["mask"].flatten(0, 1).unsqueeze(1)
        references = denoiser.encode_references(self.to_model(batch["references"]).unflatten(0, batch["references"].shape[:2]),
                                                batch["reference_landmarks"])
        references = references.repeat_interleave(picks)
        count = clean.shape[0]
        device = clean.device
        noise = torch.randn(clean.shape, generator=generator).to(device)
        timesteps = torch.randint(self.config.num_train_timesteps, (count,), generator=generator).to(device)
        if landmark_keep is None:
            landmark_keep = (torch.rand(count, generator=generator) >= self.landmark_drop).float().to(device)
        noisy = self.schedule.add_noise(clean, noise, timesteps)
        if self.config.prediction_type == "v_prediction":
            target = self.schedule.get_velocity(clean, noise, timesteps)
        else:
            target = clean if self.config.prediction_type == "sample" else noise
        region = batch["mouth_region"].flatten(0, 1).unsqueeze(1)

        def diffusion_loss(landmarks: torch.Tensor, features: ReferenceFeatures) -> torch.Tensor:
            return self.weighted_error(denoiser(noisy, timesteps, masked, mask, landmarks, features, landmark_keep), target,
                                       region)

        losses = BatchLosses(diffusion_loss(batch["landmarks"].flatten(0, 1), references))
        if model.landmark_model is not None:
            predicted, losses.landmark_l1 = self.predicted_landmarks(model, batch)
            with held_weights(denoiser):
                losses.through_landmark_model = diffusion_loss(predicted, references.detach())
        return losses

    def weighted_error(self, prediction: torch.Tensor, target: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
        error = (prediction.float() - target).pow(2)
        if not self.mouth_weight:
            return error.mean()
        if region.shape[-1] != error.shape[-1]:
            region = F.interpolate(region, size=error.shape[-2:], mode="area")
        weight = 1 + self.mouth_weight * region
        return (error * weight).sum() / (weight.sum() * error.shape[1])

    def training_loss(self, model: DubbingTrainee, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self(model, batch).total(self.landmark_weight)

    @torch.no_grad()
    def validate(self, model: DubbingTrainee, loader: DataLoader) -> DubbingLosses:
        model.eval()
        sums = torch.zeros(3)
        batches = 0
        device = next(model.parameters()).device
        for number, batch in enumerate(loader):
            batch = {key: value.to(device) for key, value in batch.items()}
            count = batch["target"].shape[0] * batch["target"].shape[1]
            losses = []
            for keep in (1.0, 0.0):
                generator = torch.Generator().manual_seed(number)  # the same noise for both
                batch_losses = self(model, batch, generator, torch.full((count,), keep, device=device))
                losses.append(float(batch_losses.as_used))
            landmark_l1 = batch_losses.landmark_l1
            sums += torch.tensor([*losses, float("nan") if landmark_l1 is None else float(landmark_l1)])
            batches += 1
        model.train()
        return DubbingLosses(*(sums / max(batches, 1)).tolist())


def save_trainee(model: DubbingTrainee, path: Path, metadata: dict[str, str]) -> None:
    """The dubbing checkpoint at ``path``; in joint training the fine-tuned landmark model beside it
    (``<name>_landmarks.safetensors``, loadable by Load Audio-to-Motion Model)."""
    fps = {"fps": f"{model.denoiser.config.fps:g}"}
    save_dubbing(model.denoiser, path, {**metadata, **fps})
    if model.landmark_model is not None:
        save_landmark_model(model.landmark_model, landmark_output(path),
                            {**metadata, **fps, "trained_jointly_with": path.name})


def train_dubbing(
    denoiser: DubbingDenoiser,
    train_clips: Sequence[DubbingClip],
    validation_clips: Sequence[DubbingClip],
    train_config: TrainConfig,
    checkpoint_dir: str | Path | None = None,
    landmark_model: LandmarkCompletionTransformer | None = None,
    vae: LatentCodec | None = None,
    landmark_drop: float = 0.1,
    landmark_weight: float = 1.0,
    mouth_weight: float = MOUTH_WEIGHT,
    log: Callable[[str], None] = print,
    until_step: int | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> tuple[DubbingTrainee, list[tuple[int, DubbingLosses]]]:
    """Stage 1 (``landmark_model`` None): the denoiser on ground-truth landmarks. Stage 2: jointly with
    ``landmark_model`` (usually starting from a stage-1 denoiser and a trained landmark model).
    ``on_step`` is :func:`.loop.train_windows`' (progress; an exception it raises leaves a resumable state)."""
    config = denoiser.config
    landmark_config = None if landmark_model is None else landmark_model.config
    objective = DubbingObjective(config, vae, landmark_drop, landmark_weight, train_config.velocity_weight, mouth_weight)
    train_set = DubbingWindows(train_clips, config, train_config.train_windows, train_config.seed, landmark_config)
    validation_set = DubbingWindows(validation_clips, config, train_config.validation_windows, 10_000 + train_config.seed,
                                    landmark_config)
    task = WindowTask(
        name="dubbing model" if landmark_model is None else "dubbing + landmark model",
        state_format=STATE_FORMAT,
        loss=objective.training_loss,
        evaluate=objective.validate,
        describe=lambda result: (f"without landmarks {result.no_landmarks:.4f}"
                                 + ("" if result.landmark_l1 != result.landmark_l1 else f", landmark L1 {result.landmark_l1:.4f}")),
        save_model=save_trainee,
    )
    torch.manual_seed(train_config.seed)
    return train_windows(DubbingTrainee(denoiser, landmark_model), train_set, validation_set, train_config, task,
                         checkpoint_dir, log, until_step, on_step)


def dubbing_train_config(**changes) -> TrainConfig:
    """The loop's settings with defaults for the dubbing model (smaller batches, a diffusion model's rate)."""
    defaults = dict(steps=20000, batch_size=8, learning_rate=2e-4, weight_decay=0.0, warmup_steps=200, validate_every=500,
                    train_windows=200_000, validation_windows=64)
    return dataclasses.replace(TrainConfig(), **{**defaults, **changes})
