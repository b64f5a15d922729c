"""Training nodes: one person's footage into training shards, and a generator trained on them."""
from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

import torch

from ..pipelines.audio.landmark_model import LandmarkCompletionTransformer, load_landmark_model
from ..pipelines.generator.checkpoint import load_tgdm
from ..pipelines.generator.dubbing import load_dubbing
from ..pipelines.training.dubbing import landmark_output
from ..pipelines.training.finetune import FinetuneSettings, finetune_generator
from ..pipelines.training.finetune_dubbing import DubbingFinetuneSettings, finetune_dubbing
from ..pipelines.training.footage import AUDIO_SHORTFALL_FRAMES, TrainingFootage, footage_in, prepare_footage
from ..pipelines.training.video_shards import PreprocessSettings, VideoFaceShards
from . import host
from .base import ROOT_CATEGORY, TalkingFaceNode
from .dubbing import LoadedDubbingModel
from .generator import DEMO_GENERATOR, LoadedGenerator

logger = logging.getLogger(__name__)
CATEGORY = f"{ROOT_CATEGORY}/train"
FOOTAGE_FOLDER = "talkingface_footage"  # under ComfyUI/output/
RUNS_FOLDER = "talkingface_training"  # interrupted runs, under ComfyUI/output/
FROM_SCRATCH = "none (train from scratch)"
GENERATOR_SUFFIX = ".safetensors"
PREVIEW_FRAMES = 8
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]*$")


def _report(node: type[TalkingFaceNode], result) -> None:
    """The run's outcome in the console: steps, and what changed on the way (smaller batch, time limit, resume)."""
    logger.info("%s: saved %s after %d steps (batch_size %d)", node.DISPLAY_NAME, result.path, result.step, result.batch_size)
    for note in result.notes:
        logger.warning("%s: %s", node.DISPLAY_NAME, note)


def _plain_name(node: type[TalkingFaceNode], input_name: str, value: str, suffix: str = "") -> str:
    """A name without folders (letters, digits, space, '.', '_', '-'), with ``suffix`` removed."""
    name = value.strip()
    if suffix and name.lower().endswith(suffix):
        name = name[: -len(suffix)]
    if not _PLAIN_NAME.match(name) or ".." in name:
        raise node.fail(
            f"{input_name} '{value}' is not a plain name: use letters, digits, spaces, '.', '_' and '-' "
            "(no folders), e.g. 'my_person'")
    return name


class PrepareTrainingFootage(TalkingFaceNode):
    DISPLAY_NAME = "Prepare Training Footage"
    CATEGORY = CATEGORY
    DESCRIPTION = (
        "Turns frames of one person, analysed by Analyze Faces, into training data for Train Generator: aligned "
        "crops, the 3DMM fit, renders and surface maps, written as shards into ComfyUI/output/talkingface_footage/"
        "<folder>/. Running again with the same frames finds them done; other clips of the person are added to the "
        "same folder. Connect the frames' audio to keep the speech, which lets Train Dubbing Model train jointly with "
        "an audio-to-motion model."
    )
    RETURN_TYPES = ("TALK_FOOTAGE", "IMAGE")
    RETURN_NAMES = ("footage", "preview")
    OUTPUT_TOOLTIPS = (
        "The prepared footage (every clip in the folder), for Train Generator.",
        f"Up to {PREVIEW_FRAMES} prepared frames: the aligned crop beside its 3DMM render (check the fit).",
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "faces": ("TALK_FACES", {
                    "tooltip": "From Analyze Faces over the footage's frames (its crop_size is the crop size kept; "
                               "frames without a detected face are left out)."}),
                "face_model": ("TALK_FACE_MODEL", {
                    "tooltip": "From Load 3DMM: the face model fitted to the frames; the generator trains with it."}),
                "folder": ("STRING", {
                    "default": "my_person",
                    "tooltip": "Folder under ComfyUI/output/talkingface_footage/ that collects this person's footage."}),
            },
            "optional": {
                "audio": ("AUDIO", {
                    "tooltip": "The speech of these frames (any rate, mono or stereo), kept as mono 16 kHz starting with "
                               "the first frame, aligned by Analyze Faces' fps. Longer audio is cut at the last frame; "
                               f"audio may be up to {AUDIO_SHORTFALL_FRAMES:g} frame short (padded with silence), "
                               "shorter is refused. The same frames with other audio are another clip."}),
            },
        }

    def run(self, faces, face_model, folder: str, audio: dict | None = None):
        name = _plain_name(self, "folder", folder)
        target = host.output_directory() / FOOTAGE_FOLDER / name
        progress = host.Progress(3)
        settings = PreprocessSettings(crop_size=faces.crop_size)
        prepare_footage(faces, face_model, target, settings,
                        on_stage=lambda _: (host.throw_if_interrupted(), progress.advance()), audio=audio)
        footage = footage_in(target, face_model)
        shards = VideoFaceShards(target)
        rows = torch.linspace(0, len(shards) - 1, min(PREVIEW_FRAMES, len(shards))).round().long().unique()
        preview = torch.cat([shards.photos[rows], shards.renders[rows]], dim=2)
        return (footage, preview)


class TrainingNode(TalkingFaceNode):
    """What Train Generator and Train Dubbing Model share: the footage, a new file name, a base or
    scratch, the training numbers, and a run that reports progress and never overwrites."""

    CATEGORY = CATEGORY
    MODEL_WORDS = "model"  # how the tooltips name what is trained
    BASE_HINT = f"'{FROM_SCRATCH}'"  # what VALIDATE_INPUTS suggests when the base is missing

    @classmethod
    def training_inputs(cls, defaults, default_name: str, default_base: str, base_tooltip: str, tooltips: dict,
                        extra: dict | None = None) -> dict:
        words = cls.MODEL_WORDS
        return {
            "required": {
                "footage": ("TALK_FOOTAGE", {"tooltip": tooltips["footage"]}),
                "name": ("STRING", {
                    "default": default_name,
                    "tooltip": f"File name in ComfyUI/models/talkingface/ for the trained {words}; it must not exist yet."}),
                "base": ([FROM_SCRATCH, *host.list_models("talkingface")], {"default": default_base, "tooltip": base_tooltip}),
                "resolution": ("INT", {
                    "default": defaults.resolution, "min": 16, "max": 512, "step": 8, "tooltip": tooltips["resolution"]}),
                "steps": ("INT", {
                    "default": defaults.steps, "min": 1, "max": 1_000_000,
                    "tooltip": "Training steps in all (a continued run counts the steps it had done)."}),
                "batch_size": ("INT", {
                    "default": defaults.batch_size, "min": 1, "max": 256, "tooltip": tooltips["batch_size"]}),
                "learning_rate": ("FLOAT", {
                    "default": defaults.learning_rate, "min": 1e-6, "max": 1e-2, "step": 1e-5, "round": False,
                    "tooltip": tooltips["learning_rate"]}),
                "channels": ("INT", {
                    "default": defaults.channels, "min": 8, "max": 256, "step": 8,
                    "tooltip": f"From scratch only: the {words}'s base width (larger learns more, slower)."}),
                "time_limit_minutes": ("FLOAT", {
                    "default": 0.0, "min": 0.0, "max": 10_080.0, "step": 1.0,
                    "tooltip": "Stop after this long and save what was trained; 0 = no limit."}),
                **(extra or {}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1, "tooltip": tooltips["seed"]}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, base: str) -> bool | str:
        if base == FROM_SCRATCH:
            return True
        return cls.check_model_file("base", "talkingface", base, f"Pick {cls.BASE_HINT}")

    def train(self, name: str, steps: int, fit: Callable[[Path, Path, Callable], object]) -> tuple[Path, str]:
        """Run ``fit(output file, run folder, on_step)`` with progress and Cancel; the saved file and its name."""
        stem = _plain_name(self, "name", name, GENERATOR_SUFFIX)
        file_name = stem + GENERATOR_SUFFIX
        progress = host.Progress(steps)

        def on_step(step: int, loss: float, preview: torch.Tensor | None = None) -> None:
            progress.report(step, preview)

        # ComfyUI runs nodes under inference mode, where nothing can be trained.
        with torch.inference_mode(False), torch.enable_grad():
            result = fit(host.model_folder_roots("talkingface")[0] / file_name,
                         host.output_directory() / RUNS_FOLDER / stem, on_step)
        _report(self, result)
        return result.path, file_name


class TrainGenerator(TrainingNode):
    DISPLAY_NAME = "Train Generator"
    MODEL_WORDS = "generator"
    BASE_HINT = f"{DEMO_GENERATOR}, which ships with the pack, or '{FROM_SCRATCH}'"
    DESCRIPTION = (
        "Trains a TGDM generator on prepared footage, starting from a base generator (fine-tuning, the usual way) "
        "or from scratch, and saves it as ComfyUI/models/talkingface/<name>.safetensors (never over an existing "
        "file). Shows a preview every few steps. Cancel keeps the run: queue again with the same name and settings "
        "to continue where it stopped. Out of GPU memory, the batch is halved until it fits."
    )
    RETURN_TYPES = ("TALK_GENERATOR", "STRING")
    RETURN_NAMES = ("generator", "checkpoint")
    OUTPUT_TOOLTIPS = (
        "The trained generator, for TGDM Sampler (Load Generator lists it from now on).",
        "The saved file's name in ComfyUI/models/talkingface/.",
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        defaults = FinetuneSettings()
        return cls.training_inputs(
            defaults, "my_person_tgdm", DEMO_GENERATOR,
            "A generator to start from (its architecture and resolution are kept), or none to train "
            f"a new one. {DEMO_GENERATOR} ships with the pack (64 px).",
            {"footage": "From Prepare Training Footage.",
             "resolution": "Side of the generated face crops in px; a base must have this resolution.",
             "batch_size": "Frame pairs per step; halved automatically when the GPU runs out of memory.",
             "learning_rate": "AdamW learning rate; 1e-4 suits fine-tuning, 4e-4 training from scratch.",
             "seed": "Seed of the pairs and noise drawn."},
            extra={"preview_every": ("INT", {
                "default": defaults.preview_every, "min": 0, "max": 100_000,
                "tooltip": "Show a sampled frame (truth | generated) on the node every this many steps; 0 = never."})},
        )

    def run(self, footage: TrainingFootage, name: str, base: str, resolution: int, steps: int, batch_size: int,
            learning_rate: float, channels: int, time_limit_minutes: float, preview_every: int, seed: int):
        settings = FinetuneSettings(
            steps=steps, batch_size=batch_size, learning_rate=learning_rate, resolution=resolution, channels=channels,
            time_limit_s=60.0 * time_limit_minutes, preview_every=preview_every, seed=seed)

        def fit(output: Path, run_folder: Path, on_step: Callable):
            base_model = None if base == FROM_SCRATCH else load_tgdm(host.model_path("talkingface", base, "base generator"))
            return finetune_generator(footage, output, run_folder, settings, base_model, base, on_step=on_step)

        path, file_name = self.train(name, steps, fit)
        return (LoadedGenerator(load_tgdm(path, host.offload_device()), torch.float32, file_name), file_name)


class TrainDubbingModel(TrainingNode):
    DISPLAY_NAME = "Train Dubbing Model"
    BASE_HINT = f"a dubbing model there, or '{FROM_SCRATCH}'"
    DESCRIPTION = (
        "Trains a lip-sync dubbing model (paper 2) on prepared footage, from a base dubbing model or from scratch, "
        "and saves it as ComfyUI/models/talkingface/<name>.safetensors (never over an existing file) for Load Dubbing "
        "Model and Dub Video. On the footage's own lip and jaw landmarks; with a motion_model connected and footage "
        "prepared with its audio, jointly with that audio-to-motion model (paper 2's second stage, usually from a "
        "base trained the first way), saved beside as <name>_landmarks.safetensors. The last frames of each clip are "
        "held out for validation. Cancel keeps the run: queue again with the same name and settings to continue."
    )
    RETURN_TYPES = ("TALK_DUBBING_MODEL", "STRING", "TALK_MOTION_MODEL")
    RETURN_NAMES = ("dubbing_model", "checkpoint", "motion_model")
    OUTPUT_TOOLTIPS = (
        "The trained dubbing model, for Dub Video (Load Dubbing Model lists it from now on).",
        "The saved file's name in ComfyUI/models/talkingface/.",
        "With motion_model connected: the audio-to-motion model trained jointly, for Dub Video with this dubbing "
        "model (nothing otherwise).",
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        inputs = cls.training_inputs(
            DubbingFinetuneSettings(), "my_person_dubbing", FROM_SCRATCH,
            "A dubbing model to start from (its architecture and resolution are kept), or none.",
            {"footage": "From Prepare Training Footage: frames of the person speaking.",
             "resolution": "Side of the face crops in px; a base must have this resolution.",
             "batch_size": "Frames per step; halved automatically when the GPU runs out of memory.",
             "learning_rate": "AdamW learning rate (warm-up, then cosine decay over the steps).",
             "seed": "Seed of the initialisation and the draws."},
        )
        inputs["optional"] = {"motion_model": ("TALK_MOTION_MODEL", {
            "tooltip": "From Load Audio-to-Motion Model: train jointly with a copy of it on the footage's audio "
                       "(connect the audio to Prepare Training Footage); the copy is saved as <name>_landmarks.safetensors."})}
        return inputs

    def run(self, footage: TrainingFootage, name: str, base: str, resolution: int, steps: int, batch_size: int,
            learning_rate: float, channels: int, time_limit_minutes: float, seed: int,
            motion_model: LandmarkCompletionTransformer | None = None):
        settings = DubbingFinetuneSettings(
            steps=steps, batch_size=batch_size, learning_rate=learning_rate, resolution=resolution, channels=channels,
            time_limit_s=60.0 * time_limit_minutes, seed=seed)

        def fit(output: Path, run_folder: Path, on_step: Callable):
            base_model = None if base == FROM_SCRATCH else load_dubbing(host.model_path("talkingface", base, "base dubbing model"))
            return finetune_dubbing(footage, output, run_folder, settings, base_model, base, on_step=on_step,
                                    landmark_model=motion_model)

        if motion_model is not None and not isinstance(motion_model, LandmarkCompletionTransformer):
            raise self.fail("motion_model must come from Load Audio-to-Motion Model")
        path, file_name = self.train(name, steps, fit)
        trained_motion = None if motion_model is None else load_landmark_model(landmark_output(path)).to(host.offload_device())
        return (LoadedDubbingModel(load_dubbing(path, host.offload_device()), torch.float32, file_name), file_name,
                trained_motion)


TRAINING_NODES = (PrepareTrainingFootage, TrainGenerator, TrainDubbingModel)
