"""Training the dubbing model (paper 2) on one person's prepared footage, from a base dubbing model
or from scratch: on the footage's ground-truth lip and jaw landmarks, or, given an audio → landmark
model and footage prepared with its audio, jointly with that model (the second stage; the
fine-tuned landmark model is saved beside the dubbing model as ``<name>_landmarks.safetensors``).

The same guarantees as :mod:`.finetune` for TGDM: a run folder with the loop's pickle-free state
(an exception from ``on_step``, such as ComfyUI's Cancel, saves it and the same name continues
exactly), a time limit, the batch halved when memory runs out, and the result copied to a new file,
never over one. The last frames of each clip are held out for the loop's validation.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..audio.landmark_model import LandmarkCompletionTransformer, LandmarkModelConfig
from ..errors import TalkingFaceError
from ..generator.dubbing import DubbingConfig, DubbingDenoiser
from .dubbing import (
    STATE_FORMAT,
    DubbingClip,
    TraineeConfig,
    clips_with_sound,
    dubbing_train_config,
    landmark_output,
    rows_clip,
    save_trainee,
    train_dubbing,
    video_clip_rows,
    window_frames,
)
from .finetune import (
    FinetuneResult,
    check_new_file,
    check_pixel_base,
    check_training_numbers,
    free_memory,
    is_out_of_memory,
    publish_checkpoint,
)
from .footage import TrainingFootage
from .state import STATE_FOLDER, read_trainer_state
from .video_shards import VideoFaceShards

HELD_OUT_FRACTION = 0.15  # of each clip's frames, at its end, for validation
FINAL_FILE = "final.safetensors"


@dataclass(frozen=True)
class DubbingFinetuneSettings:
    steps: int = 2000
    batch_size: int = 8
    learning_rate: float = 1e-4
    resolution: int = 64
    channels: int = 32  # base width of a model trained from scratch
    time_limit_s: float = 0.0  # 0: none
    validate_every: int = 500
    seed: int = 0

    def __post_init__(self) -> None:
        check_training_numbers(self, ("steps", "batch_size", "channels", "validate_every"))


class _TimeUp(Exception):
    """Raised between two steps when the time limit has passed (the loop saves the state first)."""


def scratch_dubbing_config(resolution: int, channels: int, fps: float) -> DubbingConfig:
    multipliers = (1, 2, 2) if resolution <= 64 else (1, 2, 4, 4)
    levels = [resolution // 2**i for i in range(len(multipliers))]
    attention = tuple(size for size in levels if size <= 32)[:2] or (levels[-1],)
    return DubbingConfig(
        image_size=resolution, base_channels=channels, channel_multipliers=multipliers, attention_resolutions=attention,
        attention_head_channels=min(32, channels), reference_base_channels=channels,
        norm_groups=8 if channels % 8 == 0 and channels >= 16 else 4, fps=fps,
    )


def describe_dubbing(config: DubbingConfig) -> str:
    space = "latent" if config.latent else "pixel"
    return (f"{config.pixel_size} px, {space} space, {config.base_channels} channels, levels "
            f"{list(config.channel_multipliers)}, {config.fps:g} fps")


def check_dubbing_base(base: DubbingDenoiser, name: str, resolution: int) -> None:
    check_pixel_base(base.config, name, resolution, "dubbing model", describe_dubbing(base.config))


def footage_clips(shards: VideoFaceShards, landmarks: LandmarkModelConfig | None = None
                  ) -> tuple[list[DubbingClip], list[DubbingClip]]:
    """Each clip's frames, landmarks and speech (:func:`~.dubbing.video_clip_rows`), split into its first
    frames (training) and last (validation). Jointly with a landmark model (``landmarks``), each part needs
    a window of ``target_frames`` + 1 frames, and clips without speech are left out when others have some."""
    least = window_frames(landmarks)
    train, validation = [], []
    for video in shards.video_indices:
        for rows in video_clip_rows(shards, video):
            held_out = max(least, round(len(rows) * HELD_OUT_FRACTION))
            if len(rows) - held_out < least:
                continue
            train.append(rows_clip(shards, range(rows.start, rows.stop - held_out)))
            validation.append(rows_clip(shards, range(rows.stop - held_out, rows.stop)))
    if not train:
        raise TalkingFaceError(
            f"no clip of the footage has the {2 * least} consecutive frames with a face needed to train and validate a "
            "dubbing model" + ("" if landmarks is None else " jointly with the audio-to-motion model") +
            ": prepare more footage")
    if landmarks is not None:  # both parts of a clip come from one video: with sound or without
        train, validation = clips_with_sound(train), clips_with_sound(validation)
    return train, validation


def _check_resumable(run_folder: Path, config: DubbingConfig, landmarks: LandmarkModelConfig | None) -> int:
    state = run_folder / STATE_FOLDER
    if not state.is_dir():
        return 0
    info = read_trainer_state(state, STATE_FORMAT, "dubbing model")
    wanted = json.loads(TraineeConfig(config, landmarks).to_json())
    if info["model_config"]["landmarks"] != wanted["landmarks"]:
        joint = "jointly with an audio-to-motion model" if info["model_config"]["landmarks"] else "without an audio-to-motion model"
        raise TalkingFaceError(
            f"an interrupted run of this name in {run_folder} trained {joint}: connect the motion model it had (or "
            "none) to continue it, use another name, or delete that folder to start afresh")
    if info["model_config"] != wanted:
        saved = DubbingConfig.from_json(json.dumps(info["model_config"]["dubbing"]))
        raise TalkingFaceError(
            f"an interrupted run of this name in {run_folder} trains another dubbing model ({describe_dubbing(saved)}); "
            f"this one would be {describe_dubbing(config)}: use the settings and base it had to continue it, another "
            "name, or delete that folder to start afresh")
    return int(info["step"])


def finetune_dubbing(
    footage: TrainingFootage, output: Path, run_folder: Path, settings: DubbingFinetuneSettings,
    base: DubbingDenoiser | None = None, base_name: str = "",
    on_step: Callable[[int, float], None] | None = None, log: Callable[[str], None] = print,
    landmark_model: LandmarkCompletionTransformer | None = None,
) -> FinetuneResult:
    """Train a dubbing model on ``footage`` and save it as ``output`` (a new file), jointly with a copy of
    ``landmark_model`` when given (saved as :func:`landmark_output`; the model passed in is not changed)."""
    output, run_folder = Path(output), Path(run_folder)
    check_new_file(output)
    if landmark_model is not None:
        check_new_file(landmark_output(output))
    if base is not None:
        check_dubbing_base(base, base_name, settings.resolution)
    shards = VideoFaceShards(footage.folder, image_size=settings.resolution)
    if len(shards) < settings.batch_size:
        raise TalkingFaceError(
            f"the footage has {len(shards)} usable frames, fewer than batch_size {settings.batch_size}: lower "
            f"batch_size to {max(1, len(shards))} or less, or prepare more footage of the person")
    fps = float(next(entry["fps"] for entry in shards.manifest["videos"] if entry["status"] == "done"))
    config = base.config if base is not None else scratch_dubbing_config(settings.resolution, settings.channels, fps)
    landmarks = None if landmark_model is None else landmark_model.config
    train, validation = footage_clips(shards, landmarks)
    resumed_at = _check_resumable(run_folder, config, landmarks)
    notes = [f"continued the interrupted run from step {resumed_at}"] if resumed_at else []
    base_weights = None if base is None else base.state_dict()
    landmark_weights = None if landmark_model is None else {k: v.detach().clone() for k, v in landmark_model.state_dict().items()}

    def fresh_denoiser() -> DubbingDenoiser:
        torch.manual_seed(settings.seed)
        denoiser = DubbingDenoiser(config)
        if base_weights is not None:
            denoiser.load_state_dict(base_weights)
        return denoiser.train()

    def fresh_landmark_model() -> LandmarkCompletionTransformer | None:
        # A copy: the model on the node's input (cached by ComfyUI) stays as it was loaded.
        if landmark_weights is None:
            return None
        model = LandmarkCompletionTransformer(landmarks)
        model.load_state_dict(landmark_weights)
        return model.train()

    train_config = dubbing_train_config(
        steps=settings.steps, batch_size=settings.batch_size, learning_rate=settings.learning_rate,
        validate_every=min(settings.validate_every, settings.steps), warmup_steps=min(200, settings.steps // 10),
        validation_windows=min(64, 4 * settings.batch_size), seed=settings.seed)
    run_folder.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    reached, last_loss = resumed_at, None

    def step_done(step: int, loss: float) -> None:
        nonlocal reached, last_loss
        reached, last_loss = step, loss
        if on_step is not None:
            on_step(step, loss)
        if settings.time_limit_s > 0 and time.monotonic() - started > settings.time_limit_s and step < settings.steps:
            raise _TimeUp

    while True:
        try:
            trainee, _ = train_dubbing(fresh_denoiser(), train, validation, train_config, run_folder,
                                       landmark_model=fresh_landmark_model(), log=log, on_step=step_done)
            break
        except _TimeUp:
            notes.append(f"the time limit stopped the training at step {reached} of {settings.steps}")
            trainee, _ = train_dubbing(fresh_denoiser(), train, validation, train_config, run_folder,
                                       landmark_model=fresh_landmark_model(), log=log, until_step=reached)
            break
        except BaseException as error:
            if not is_out_of_memory(error):
                raise
            batch = train_config.batch_size
            free_memory()
            if batch == 1:
                raise TalkingFaceError(
                    f"out of memory even with batch_size 1 at resolution {settings.resolution} "
                    f"({describe_dubbing(config)}): lower the resolution, train a smaller model (fewer channels), "
                    "or free memory by closing other models") from None
            train_config = dataclasses.replace(train_config, batch_size=batch // 2)
            message = f"batch_size {batch} ran out of memory; continuing with {batch // 2} (set batch_size to {batch // 2} next time)"
            notes.append(message)
            log(message)
    if train_config.batch_size != settings.batch_size:
        notes.append(f"batch_size {train_config.batch_size} fits in memory")
    final = run_folder / FINAL_FILE
    save_trainee(trainee, final, {"training_step": str(reached)})
    publish_checkpoint(final, output)
    if landmark_model is not None:
        publish_checkpoint(landmark_output(final), landmark_output(output))
        notes.append(f"the audio-to-motion model trained with it: {landmark_output(output).name}")
    shutil.rmtree(run_folder, ignore_errors=True)
    return FinetuneResult(output, reached, train_config.batch_size, last_loss, notes)
