"""One person's footage, already analysed frame by frame, as TGDM training shards.

The frames of an IMAGE batch and their analysed faces (``TALK_FACES``) go through the same steps as
``scripts/preprocess_videos.py`` (aligned crops, 3DMM fit with one identity, renders and surface
maps) and are written by the same :class:`~.video_shards.ShardWriter`, so a footage folder is a
shard folder every trainer reads. Each clip is listed in the manifest under a name made from its
content (frames, face tracks, crop size, face model, and the speech when given): running again with
the same frames finds the clip done and skips it, and other clips of the person are added beside
it, the same frames with other audio included.

The speech of the frames (an AUDIO, optional) is kept like a video file's sound track
(:class:`~.video_shards.FrameAudio`): mono 16 kHz, frame ``n`` starting at ``n / fps`` seconds.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..audio.io import SAMPLE_RATE, prepare_speech
from ..errors import TalkingFaceError
from ..face.faces import AnalyzedFaces
from ..morphable.model import MorphableModel
from ..video import frame_chunks
from .video_shards import (
    FrameAudio,
    PreprocessSettings,
    ShardWriter,
    VideoFaces,
    VideoSource,
    crops_for_fit,
    face_model_entry,
    pcm16,
    read_manifest,
    shard_rows,
)

CLIP_PREFIX = "footage_"
# Audio may fall short of the frames by this many frames (an encoder's rounding): padded with silence.
AUDIO_SHORTFALL_FRAMES = 1.0


@dataclass(frozen=True)
class TrainingFootage:
    """What travels from Prepare Training Footage to the trainers: the shard folder and the face model
    its coefficients were fitted with (the trainers render and warp with it)."""

    folder: Path
    face_model: MorphableModel
    frames: int  # usable frames in the folder, every clip together
    crop_size: int


@dataclass(frozen=True)
class PreparedClip:
    name: str  # the clip's manifest name
    frames: int  # rows written for it (frames with a detected face)
    skipped: bool  # True when an earlier run had written it already
    notes: list[str]


def footage_audio(audio: Mapping, frames: int, fps: float) -> FrameAudio:
    """The speech of ``frames`` frames at ``fps`` from an AUDIO (any rate and channels): mono 16 kHz,
    starting with the first frame. Longer audio is cut at the last frame's end; audio shorter by up to
    ``AUDIO_SHORTFALL_FRAMES`` frames is padded with silence; shorter still is an error (it is not the
    speech of these frames, or the frame rate is wrong)."""
    if not fps > 0:
        raise TalkingFaceError(f"the frames' fps is {fps}: set Analyze Faces' fps to the video's frame rate")
    speech = prepare_speech(audio).samples
    wanted = round(frames * SAMPLE_RATE / fps)
    if wanted - speech.shape[0] > AUDIO_SHORTFALL_FRAMES * SAMPLE_RATE / fps:
        raise TalkingFaceError(
            f"audio: it lasts {speech.shape[0] / SAMPLE_RATE:.2f} s but the {frames} frames last {frames / fps:.2f} s "
            f"at {fps:g} fps: connect the sound of these same frames (cut like them), check the fps of Analyze Faces, "
            "or leave audio unconnected to prepare the footage without speech")
    speech = torch.nn.functional.pad(speech[:wanted], (0, max(wanted - speech.shape[0], 0)))
    return FrameAudio(pcm16(speech), fps)


def clip_name(faces: AnalyzedFaces, model: MorphableModel, settings: PreprocessSettings,
              audio: FrameAudio | None = None) -> str:
    """A name that only the same frames, face tracks, crop size, face model and speech give."""
    digest = hashlib.sha256()
    digest.update(repr((tuple(faces.images.shape), settings.crop_size, settings.fit_mode, model.name,
                        asdict(model.dims))).encode())
    for chunk in frame_chunks(faces.frames, 32):  # never a second copy of the whole video
        frames = faces.images[chunk].clamp(0, 1).mul(255).round().to(torch.uint8)
        digest.update(frames.contiguous().numpy().tobytes())
    digest.update(faces.crop_transforms.float().mul(64).round().to(torch.int64).numpy().tobytes())
    digest.update(faces.detected.numpy().tobytes())
    if audio is not None:  # footage prepared without audio keeps the name it had before audio was kept
        digest.update(b"audio")
        digest.update(audio.samples.numpy().tobytes())
    return CLIP_PREFIX + digest.hexdigest()[:16]


def check_folder_fits(folder: Path, crop_size: int, model: MorphableModel) -> None:
    """A footage folder holds one crop size and one face model: refuse to mix in others, naming what it holds."""
    manifest = read_manifest(folder)
    if manifest is None:
        return
    if int(manifest["crop_size"]) != crop_size:
        raise TalkingFaceError(
            f"the footage folder {folder} holds {manifest['crop_size']} px crops and these frames would give "
            f"{crop_size} px ones: all footage of one folder needs one size; set crop_size to {manifest['crop_size']}, "
            "or give another folder name")
    stored = manifest["face_model"]
    if stored["dims"] != asdict(model.dims) or stored["model"] != model.name:
        raise TalkingFaceError(
            f"the footage folder {folder} was fitted with the face model '{stored['name']}', these frames with "
            f"'{model.name}': connect the same face model, or give another folder name")


def usable_frames(faces: AnalyzedFaces) -> torch.Tensor:
    """``[T]`` bool: frames whose face was detected (not interpolated, not passed through)."""
    return faces.detected & ~faces.untouched


def prepare_footage(
    faces: AnalyzedFaces, model: MorphableModel, folder: str | Path, settings: PreprocessSettings,
    on_stage: Callable[[str], None] | None = None, audio: Mapping | None = None,
) -> PreparedClip:
    """Write one clip's shards into ``folder`` (created or added to), or find them there already;
    ``audio`` (an AUDIO, optional) is the speech of the frames, aligned by ``faces.fps``."""
    folder = Path(folder)
    stage = on_stage or (lambda _: None)
    usable = usable_frames(faces)
    if not bool(usable.any()):
        raise TalkingFaceError(
            f"no face was found in any of the {faces.frames} frames: the footage needs the person's face visible "
            "(check the frames going into Analyze Faces, and its missing_faces setting)")
    if faces.crop_size != settings.crop_size:
        raise TalkingFaceError(
            f"the faces were cropped at {faces.crop_size} px but {settings.crop_size} px crops were asked for: "
            "set Analyze Faces' crop_size to the same value")
    speech = None if audio is None else footage_audio(audio, faces.frames, faces.fps)
    check_folder_fits(folder, settings.crop_size, model)
    name = clip_name(faces, model, settings, speech)
    writer = ShardWriter(folder, settings.crop_size, face_model_entry(model, model.name))
    done = next((entry for entry in writer.manifest["videos"] if entry["name"] == name and entry["status"] == "done"), None)
    if done is not None:
        return PreparedClip(name, int(done["frames"]), True, list(done["notes"]))
    stage("crops")
    crops, canvas_faces = crops_for_fit(faces)
    video = VideoFaces(torch.arange(faces.frames), crops, canvas_faces, list(faces.notes))
    # Frames passed through by Analyze Faces have no face to learn from: shard_rows keeps detected ones only.
    video.faces.detected = usable
    stage("fit")
    rows, notes = shard_rows(model, video, settings, faces.fps)
    stage("write")
    entry = writer.add(VideoSource(name, Path(name), False), faces.fps, rows, notes, settings.shard_frames, faces.frames,
                       speech)
    return PreparedClip(name, int(entry["frames"]), False, notes)


def footage_in(folder: str | Path, model: MorphableModel) -> TrainingFootage:
    """The footage folder as trainers take it; an error when it holds no usable frames."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None:
        raise TalkingFaceError(f"{folder} holds no prepared footage (no manifest.json)")
    frames = sum(int(entry["frames"]) for entry in manifest["videos"] if entry["status"] == "done")
    return TrainingFootage(folder, model, frames, int(manifest["crop_size"]))
