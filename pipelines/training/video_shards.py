"""Real talking-face videos as TGDM training data: preprocessing into shards, and the dataset over them.

Each video (a file PyAV decodes, or a folder of frame images) goes through the face pipeline: the
main face is detected and tracked, cut out as an aligned generator crop, fitted with the 3DMM (one
identity for the whole video, texture and lighting from the crops, gaze from the eyes) and rendered
as I_3d with its surface coordinates in the same framing. The frames are written as safetensors
shards (uint8 crops and renders, float16 surface maps, float32 coefficients, landmarks, the video
and frame number of every row, and the speech of a video file with a sound track, see
:class:`FrameAudio`) next to a JSON manifest, which makes a run resumable: videos already listed are
skipped, and a video without a usable face is listed as skipped with the reason.

:class:`VideoFaceShards` reads the shards through safetensors' memory map and offers what
:class:`~.synthetic_faces.FaceViews` offers the trainer: ``photos``, ``renders``, ``surfaces`` and
``coefficients`` indexed by frame rows, and ``pairs`` of two frames of one video; ``clip_audio`` gives
the speech under a run of rows (shards written before audio was kept have none, and still load).
"""
from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..audio.io import SAMPLE_RATE
from ..errors import TalkingFaceError
from ..face.alignment import apply_transforms, invert_transforms
from ..face.analysis import FaceAnalyzer
from ..face.faces import AnalyzedFaces, analyze_frames
from ..face.fit import fit_faces
from ..generator.inputs import flat_coefficients
from ..images import resize_images
from ..morphable.camera import PerspectiveCamera
from ..morphable.coefficients import FaceCoefficients
from ..morphable.model import MorphableModel
from ..render.renderer import FaceRenderer
from ..video import frame_chunks

logger = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "talkingface.video_shards"
SHARD_FORMAT = "talkingface.video_shard"
FORMAT_VERSION = 1
SHARD_FOLDER = "shards"
VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
# The fit sees each crop at the appearance resolution; keeping only that canvas (not the full
# frames) bounds the memory of a long video by its crops.
FIT_CANVAS = 112
# Rows kept per frame: the arrays every shard holds, and how they are stored.
SHARD_ARRAYS = ("photos", "renders", "surfaces", "coefficients", "landmarks", "video", "frame")
AUDIO_KEY = "audio"  # the optional speech of a shard's rows, see FrameAudio
# Speech is kept as 16-bit PCM: what most sources hold anyway, exact steps of 1/32768 over the whole
# -1..1 range (float16 would spend its bits on tiny values and round loud ones to ~1/2048), and the
# same two bytes a sample.
PCM_SCALE = 32767.0


@dataclass(frozen=True)
class PreprocessSettings:
    crop_size: int = 256  # side of the aligned generator crop and of the renders
    segment_frames: int = 128  # frames decoded and analysed at once (memory bound of the analysis)
    shard_frames: int = 1024  # rows per shard file at most
    frame_step: int = 1  # keep every n-th frame
    max_frames: int = 0  # frames per video at most (after frame_step); 0 = all
    frames_fps: float = 25.0  # frame rate of folders of frame images (files carry their own)
    selection: str = "largest"  # which face of the first frame to follow (see pipelines/face/selection.py)
    smoothing: float = 0.3  # One-Euro smoothing of the crop keypoints, 0..1
    fit_mode: str = "fast"  # "fast" or "joint", see pipelines/face/fit.py
    fit_smoothing: float = 0.5
    render_batch: int = 32

    def __post_init__(self) -> None:
        for name in ("crop_size", "segment_frames", "shard_frames", "frame_step", "render_batch"):
            if getattr(self, name) < 1:
                raise TalkingFaceError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.crop_size < 32:
            raise TalkingFaceError(f"crop_size must be at least 32 px, got {self.crop_size}")


# ---------------------------------------------------------------------------------------------
# reading videos


@dataclass(frozen=True)
class VideoSource:
    name: str  # path relative to the input folder, with '/' separators: the manifest key
    path: Path
    is_frame_folder: bool


def find_videos(root: str | Path) -> list[VideoSource]:
    """Video files and folders of frame images under ``root`` (recursively), in a stable order."""
    root = Path(root)
    if not root.is_dir():
        raise TalkingFaceError(f"the video folder {root} does not exist")
    sources = []
    for folder, subfolders, files in os.walk(root):
        subfolders.sort()
        folder = Path(folder)
        if any(name.lower().endswith(FRAME_SUFFIXES) for name in files):
            sources.append(VideoSource(folder.relative_to(root).as_posix(), folder, True))
        for name in sorted(files):
            if name.lower().endswith(VIDEO_SUFFIXES):
                path = folder / name
                sources.append(VideoSource(path.relative_to(root).as_posix(), path, False))
    return sorted(sources, key=lambda source: source.name)


def video_fps(source: VideoSource, settings: PreprocessSettings) -> float:
    if source.is_frame_folder:
        return settings.frames_fps
    import av

    with av.open(str(source.path)) as container:
        if not container.streams.video:
            raise TalkingFaceError("the file has no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        return float(rate) if rate else settings.frames_fps


@dataclass
class FrameAudio:
    """A clip's speech, mono 16 kHz (:data:`~..audio.io.SAMPLE_RATE`) ``int16`` PCM, and how its frames map onto it.

    Frames are numbered as in the source (0 is the video's first frame, before ``frame_step``) and
    frame ``n`` starts ``n / frame_rate`` seconds into the video: it covers samples
    ``round(n · 16000 / frame_rate)`` up to (without) the start of frame ``n + 1``, counted from the
    start of frame 0, so ``samples[0]`` is the first sample of frame ``first_frame``. A kept frame
    stands for the ``frame_step`` source frames from it, so the rows of frames ``a..b`` (kept) carry
    the samples from the start of ``a`` to the start of ``b + frame_step``."""

    samples: torch.Tensor  # [N] int16
    frame_rate: float  # source frames per second (the manifest's fps times frame_step)
    frame_step: int = 1
    first_frame: int = 0

    def sample_of(self, frame_number: int) -> int:
        """The index in ``samples`` where frame ``frame_number`` starts."""
        return round(frame_number * SAMPLE_RATE / self.frame_rate) - round(self.first_frame * SAMPLE_RATE / self.frame_rate)

    def span(self, first_frame: int, end_frame: int) -> torch.Tensor:
        """The samples of frames ``first_frame`` up to (without) ``end_frame``; silence past the track's end."""
        start, stop = self.sample_of(first_frame), self.sample_of(end_frame)
        part = self.samples[max(start, 0):max(stop, 0)]
        return torch.nn.functional.pad(part, (max(-start, 0), stop - start - part.shape[0] - max(-start, 0)))


def pcm16(samples: torch.Tensor) -> torch.Tensor:
    """Float samples in -1..1 as ``int16`` PCM (louder ones clipped)."""
    return samples.float().clamp(-1, 1).mul(PCM_SCALE).round().to(torch.int16)


def decode_audio(source: VideoSource, frame_rate: float, end_frame: int,
                 frame_step: int = 1) -> tuple[FrameAudio | None, list[str]]:
    """The sound track of a video file from the start of frame 0 to the start of ``end_frame``, mono
    16 kHz, and notes. None for a frame folder, a file without an audio stream, or one whose audio
    cannot be decoded (noted: the frames are still usable for training without sound).

    The track is placed by its start time against the video stream's, so an audio stream that starts
    late is preceded by silence and one that starts early is cut; a track that ends early is padded
    with silence (noted when by more than one frame)."""
    if source.is_frame_folder:
        return None, []
    import av

    wanted = round(end_frame * SAMPLE_RATE / frame_rate)
    parts, offset = [], None
    try:
        with av.open(str(source.path)) as container:
            if not container.streams.audio:
                return None, []
            video = container.streams.video[0]
            video_start = float(video.start_time * video.time_base) if video.start_time is not None else 0.0
            resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
            have = 0
            for frame in container.decode(container.streams.audio[0]):
                if offset is None:
                    offset = round(((frame.time or 0.0) - video_start) * SAMPLE_RATE)
                for block in resampler.resample(frame):
                    parts.append(torch.from_numpy(block.to_ndarray().reshape(-1).copy()))
                    have += parts[-1].shape[0]
                if offset + have >= wanted:
                    break
            else:
                parts += [torch.from_numpy(block.to_ndarray().reshape(-1).copy()) for block in resampler.resample(None)]
    except av.error.FFmpegError as error:
        return None, [f"the sound track could not be decoded ({error}): kept without audio"]
    if offset is None:
        return None, ["the audio stream holds no samples: kept without audio"]
    samples = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int16)
    # Silence before a late track, and a track that starts before the first frame cut to it.
    samples = torch.cat([torch.zeros(max(offset, 0), dtype=torch.int16), samples[max(-offset, 0):]])[:wanted]
    notes = []
    missing = wanted - samples.shape[0]
    if missing > SAMPLE_RATE / frame_rate:
        notes.append(f"the sound track ends {missing / SAMPLE_RATE:.2f} s before the last frame: padded with silence")
    samples = torch.nn.functional.pad(samples, (0, missing))
    return FrameAudio(samples, frame_rate, frame_step), notes


def _natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def decode_frames(source: VideoSource) -> Iterator[np.ndarray]:
    """RGB ``uint8`` frames ``[H, W, 3]`` one at a time (a video is never held in memory whole)."""
    if source.is_frame_folder:
        from PIL import Image

        files = sorted((p for p in source.path.iterdir() if p.suffix.lower() in FRAME_SUFFIXES), key=_natural_key)
        for path in files:
            with Image.open(path) as image:
                yield np.asarray(image.convert("RGB"))
        return
    import av

    with av.open(str(source.path)) as container:
        if not container.streams.video:
            raise TalkingFaceError("the file has no video stream")
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="rgb24")


def frame_segments(source: VideoSource, settings: PreprocessSettings) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """``(frame numbers, IMAGE batch)`` of at most ``segment_frames`` kept frames at a time."""
    numbers, frames, kept = [], [], 0
    for number, frame in enumerate(decode_frames(source)):
        if number % settings.frame_step:
            continue
        if frames and frame.shape != frames[0].shape:
            raise TalkingFaceError(f"frame {number} is {frame.shape[1]}×{frame.shape[0]}, the video's first is "
                                   f"{frames[0].shape[1]}×{frames[0].shape[0]}: all frames need one size")
        numbers.append(number)
        frames.append(frame)
        kept += 1
        if len(frames) == settings.segment_frames:
            yield np.asarray(numbers), torch.from_numpy(np.stack(frames)).float() / 255.0
            numbers, frames = [], []
        if settings.max_frames and kept >= settings.max_frames:
            break
    if frames:
        yield np.asarray(numbers), torch.from_numpy(np.stack(frames)).float() / 255.0


# ---------------------------------------------------------------------------------------------
# one video through the face pipeline


@dataclass
class VideoFaces:
    """The tracked face of every analysed frame, kept at crop size only."""

    numbers: torch.Tensor  # [T] frame number in the source video
    crops: torch.Tensor  # [T, S, S, 3] uint8 aligned generator crops
    faces: AnalyzedFaces  # over the crops at FIT_CANVAS px (what the fit reads)
    notes: list[str]


def _compose(outer: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """The 2×3 transform doing ``inner`` then ``outer``, batched ``[B, 2, 3]``."""
    linear = outer[:, :, :2] @ inner[:, :, :2]
    return torch.cat([linear, outer[:, :, :2] @ inner[:, :, 2:] + outer[:, :, 2:]], dim=2)


def _on_canvas(faces: AnalyzedFaces, crops: torch.Tensor, canvas: int) -> AnalyzedFaces:
    """The same analysis re-expressed over its own crops, resized to ``canvas`` px, instead of the frames."""
    frame_to_canvas = faces.crop_transforms * (canvas / faces.crop_size)
    canvas_to_frame = invert_transforms(frame_to_canvas)

    def moved(points: torch.Tensor | None) -> torch.Tensor | None:
        return None if points is None else apply_transforms(frame_to_canvas, points)

    corners = apply_transforms(frame_to_canvas, faces.boxes.view(-1, 2, 2))
    images = resize_images(crops.float() / 255.0, canvas)
    return AnalyzedFaces(
        images=images, boxes=corners.reshape(-1, 4), scores=faces.scores, keypoints=moved(faces.keypoints),
        landmarks68=moved(faces.landmarks68), landmarks106=moved(faces.landmarks106), embeddings=faces.embeddings,
        head_pose=faces.head_pose, detected=faces.detected,
        fit_transforms=_compose(faces.fit_transforms, canvas_to_frame),
        crop_transforms=_compose(faces.crop_transforms, canvas_to_frame), crop_size=faces.crop_size,
        crop_margin=faces.crop_margin, notes=list(faces.notes),
    )


def _join(parts: list[AnalyzedFaces]) -> AnalyzedFaces:
    def cat(name: str) -> torch.Tensor | None:
        values = [getattr(part, name) for part in parts]
        return None if any(value is None for value in values) else torch.cat(values)

    first = parts[0]
    return AnalyzedFaces(
        images=cat("images"), boxes=cat("boxes"), scores=cat("scores"), keypoints=cat("keypoints"),
        landmarks68=cat("landmarks68"), landmarks106=cat("landmarks106"), embeddings=cat("embeddings"),
        head_pose=cat("head_pose"), detected=cat("detected"), fit_transforms=cat("fit_transforms"),
        crop_transforms=cat("crop_transforms"), crop_size=first.crop_size, crop_margin=first.crop_margin,
        notes=[note for part in parts for note in part.notes],
    )


def crops_for_fit(faces: AnalyzedFaces) -> tuple[torch.Tensor, AnalyzedFaces]:
    """The aligned generator crops of analysed frames as ``uint8`` ``[T, S, S, 3]``, and the analysis
    re-expressed over them at FIT_CANVAS px (what the fit reads), so the full frames can be let go."""
    crops = torch.cat([faces.crops(chunk) for chunk in frame_chunks(faces.frames, 32)])
    crops = crops.clamp(0, 1).mul(255).round().to(torch.uint8)
    return crops, _on_canvas(faces, crops, FIT_CANVAS)


def analyze_video(analyzer: FaceAnalyzer, source: VideoSource, fps: float, settings: PreprocessSettings) -> VideoFaces:
    """Detect, track and crop the main face segment by segment. A segment without the face is left out
    (noted); a video without any raises :class:`TalkingFaceError` with the reason."""
    numbers, crops, parts, notes = [], [], [], []
    decoded = 0
    for segment_numbers, images in frame_segments(source, settings):
        decoded += len(segment_numbers)
        try:
            faces = analyze_frames(analyzer, images, settings.selection, 0, "interpolate", settings.crop_size,
                                   0.0, settings.smoothing, fps)
        except TalkingFaceError as error:
            notes.append(f"frames {segment_numbers[0]}–{segment_numbers[-1]} left out: {error}")
            continue
        segment_crops, canvas_faces = crops_for_fit(faces)
        numbers.append(torch.from_numpy(segment_numbers))
        crops.append(segment_crops)
        parts.append(canvas_faces)
    if decoded == 0:
        raise TalkingFaceError("no frames could be decoded")
    if not parts:
        raise TalkingFaceError(f"no face found in any of the {decoded} decoded frames ({notes[0]})")
    faces = _join(parts)
    if faces.landmarks68 is None:
        raise TalkingFaceError("the face analyzer gives no 68-point landmarks (the pack needs 1k3d68.onnx)")
    return VideoFaces(torch.cat(numbers), torch.cat(crops), faces, notes + faces.notes)


def render_rows(model: MorphableModel, coeffs: FaceCoefficients, size: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """I_3d as ``uint8`` and surface coordinates as ``float16``, ``[T, size, size, 3]`` each, framed like the crops."""
    renderer = FaceRenderer(model, PerspectiveCamera.deep3d(size))
    renders, surfaces = [], []
    for chunk in frame_chunks(coeffs.frames, batch):
        maps = renderer.render(coeffs[chunk])
        renders.append(maps.image.clamp(0, 1).mul(255).round().to(torch.uint8).cpu())
        surfaces.append(maps.surface.to(torch.float16).cpu())
    return torch.cat(renders), torch.cat(surfaces)


# ---------------------------------------------------------------------------------------------
# the shard folder


def face_model_entry(model: MorphableModel, label: str) -> dict:
    return {"name": label, "model": model.name, "dims": asdict(model.dims), "vertices": model.num_vertices}


def read_manifest(folder: Path) -> dict | None:
    path = Path(folder) / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise TalkingFaceError(f"{path} is not valid JSON ({error}); fix or delete it to start over") from error
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise TalkingFaceError(f"{path} is not a video-shard manifest (format '{MANIFEST_FORMAT}')")
    return manifest


def _write_manifest(folder: Path, manifest: dict) -> None:
    # Written beside and renamed over: an interrupted run never leaves half a manifest.
    temporary = folder / (MANIFEST_FILE + ".tmp")
    temporary.write_text(json.dumps(manifest, indent=1))
    os.replace(temporary, folder / MANIFEST_FILE)


def _shard_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "video"


class ShardWriter:
    """Appends preprocessed videos to a shard folder and keeps its manifest."""

    def __init__(self, folder: str | Path, crop_size: int, face_model: dict) -> None:
        self.folder = Path(folder)
        (self.folder / SHARD_FOLDER).mkdir(parents=True, exist_ok=True)
        manifest = read_manifest(self.folder)
        if manifest is None:
            manifest = {"format": MANIFEST_FORMAT, "version": FORMAT_VERSION, "crop_size": crop_size,
                        "face_model": face_model, "coefficients": "deep3d_257+gaze", "videos": []}
        else:
            if manifest["crop_size"] != crop_size:
                raise TalkingFaceError(
                    f"{self.folder} holds {manifest['crop_size']} px crops; resume it with --crop-size "
                    f"{manifest['crop_size']} or write {crop_size} px crops into another folder")
            if manifest["face_model"]["dims"] != face_model["dims"] or manifest["face_model"]["name"] != face_model["name"]:
                raise TalkingFaceError(
                    f"{self.folder} was fitted with the face model '{manifest['face_model']['name']}'; resume it with "
                    "the same face model or write into another folder")
        self.manifest = manifest
        _write_manifest(self.folder, manifest)

    def listed(self) -> set[str]:
        return {entry["name"] for entry in self.manifest["videos"]}

    def forget_skipped(self) -> None:
        """Drop the skipped videos from the manifest so that they are tried again."""
        self.manifest["videos"] = [entry for entry in self.manifest["videos"] if entry["status"] != "skipped"]
        _write_manifest(self.folder, self.manifest)

    def _next_index(self) -> int:
        # Video numbers are never reused, so shards written earlier keep theirs when entries are dropped.
        return 1 + max((entry["index"] for entry in self.manifest["videos"]), default=-1)

    def skip(self, source: VideoSource, reason: str) -> None:
        self._append({"index": self._next_index(), "name": source.name, "source": str(source.path),
                      "status": "skipped", "reason": reason})

    def add(self, source: VideoSource, fps: float, rows: dict[str, torch.Tensor], notes: list[str],
            shard_frames: int, decoded_frames: int, audio: FrameAudio | None = None) -> dict:
        """Write one video's rows; with ``audio`` (frames numbered like ``rows["frame"]``) each shard
        also holds the speech from its first row's frame to the next shard's first (the last shard's
        ends with its last frame), so a video's shards put together carry its speech without gaps."""
        index = self._next_index()
        stem = f"{index:06d}_{_shard_stem(source.name)}"
        count = rows["photos"].shape[0]
        numbers = rows["frame"].tolist()
        files = []
        for part, chunk in enumerate(frame_chunks(count, shard_frames)):
            name = f"{SHARD_FOLDER}/{stem}_{part:03d}.safetensors"
            tensors = {key: value[chunk].contiguous() for key, value in rows.items()}
            tensors["video"] = torch.full((chunk.stop - chunk.start,), index, dtype=torch.int64)
            metadata = {"format": SHARD_FORMAT, "version": str(FORMAT_VERSION), "video": source.name,
                        "crop_size": str(self.manifest["crop_size"])}
            if audio is not None:
                end = numbers[chunk.stop] if chunk.stop < count else numbers[-1] + audio.frame_step
                tensors[AUDIO_KEY] = audio.span(numbers[chunk.start], end).contiguous()
                metadata["audio"] = f"int16 mono {SAMPLE_RATE} Hz from frame {numbers[chunk.start]} to {end}"
            save_file(tensors, str(self.folder / name), metadata=metadata)
            files.append({"file": name, "frames": chunk.stop - chunk.start})
        entry = {"index": index, "name": source.name, "source": str(source.path), "status": "done", "frames": count,
                 "decoded_frames": decoded_frames, "fps": fps, "shards": files, "notes": notes}
        if audio is not None:
            entry["audio"] = {"sample_rate": SAMPLE_RATE, "encoding": "int16", "frame_rate": audio.frame_rate,
                              "frame_step": audio.frame_step}
        self._append(entry)
        return entry

    def _append(self, entry: dict) -> None:
        self.manifest["videos"].append(entry)
        _write_manifest(self.folder, self.manifest)


def preprocess_video(
    analyzer: FaceAnalyzer, model: MorphableModel, source: VideoSource, settings: PreprocessSettings
) -> tuple[float, dict[str, torch.Tensor], list[str], int, FrameAudio | None]:
    """One video to shard rows and its speech: ``(fps, rows, notes, decoded frames, audio)``; raises
    TalkingFaceError when unusable."""
    source_fps = video_fps(source, settings)
    fps = source_fps / settings.frame_step
    video = analyze_video(analyzer, source, fps, settings)
    audio, audio_notes = decode_audio(source, source_fps, int(video.numbers[-1]) + settings.frame_step,
                                      settings.frame_step)
    rows, notes = shard_rows(model, video, settings, fps)
    return fps, rows, notes + audio_notes, int(video.faces.frames), audio


def shard_rows(
    model: MorphableModel, video: VideoFaces, settings: PreprocessSettings, fps: float
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The shard rows of one analysed video (3DMM fit, renders, surface maps) and its notes."""
    fit = fit_faces(model, video.faces, video_mode=settings.fit_mode, smoothing=settings.fit_smoothing, fps=fps,
                    appearance_resolution=FIT_CANVAS)
    # Interpolated frames helped the fit's continuity; their crops are guesses, so training never sees them.
    keep = video.faces.detected
    coeffs = fit.coefficients[keep]
    renders, surfaces = render_rows(model, coeffs, settings.crop_size, settings.render_batch)
    landmarks = video.faces.landmarks68[keep] * (settings.crop_size / FIT_CANVAS)
    rows = {
        "photos": video.crops[keep], "renders": renders, "surfaces": surfaces,
        "coefficients": flat_coefficients(coeffs.to("cpu")).float(), "landmarks": landmarks.float(),
        "frame": video.numbers[keep].long(),
    }
    if video.faces.embeddings is not None:
        # The identity descriptor (ArcFace) of each frame: the identity token of face-swap generators.
        rows["descriptors"] = video.faces.embeddings[keep].float()
    notes = list(video.notes)
    dropped = int((~keep).sum())
    if dropped:
        notes.append(f"{dropped} interpolated frame(s) left out")
    return rows, notes


def preprocess_videos(
    input_folder: str | Path,
    output_folder: str | Path,
    analyzer: FaceAnalyzer,
    model: MorphableModel,
    face_model_label: str,
    settings: PreprocessSettings = PreprocessSettings(),
    log: Callable[[str], None] = print,
    retry_skipped: bool = False,
) -> dict:
    """Preprocess every video under ``input_folder`` not yet in ``output_folder``'s manifest (with
    ``retry_skipped``, also those skipped before); returns the manifest."""
    sources = find_videos(input_folder)
    writer = ShardWriter(output_folder, settings.crop_size, face_model_entry(model, face_model_label))
    if retry_skipped:
        writer.forget_skipped()
    done = writer.listed()
    for number, source in enumerate(sources, 1):
        if source.name in done:
            continue
        try:
            fps, rows, notes, decoded, audio = preprocess_video(analyzer, model, source, settings)
        except TalkingFaceError as error:
            writer.skip(source, str(error))
            log(f"[{number}/{len(sources)}] {source.name}: skipped: {error}")
            continue
        except Exception as error:  # noqa: BLE001 - a file PyAV or PIL cannot decode must not end the run
            if not _is_decode_error(error):
                raise
            writer.skip(source, f"could not be decoded: {error}")
            log(f"[{number}/{len(sources)}] {source.name}: skipped: could not be decoded: {error}")
            continue
        entry = writer.add(source, fps, rows, notes, settings.shard_frames, decoded, audio)
        sound = "with sound" if audio is not None else "no sound"
        log(f"[{number}/{len(sources)}] {source.name}: {entry['frames']} frames in {len(entry['shards'])} shard(s), {sound}")
    return writer.manifest


def _is_decode_error(error: Exception) -> bool:
    from PIL import UnidentifiedImageError

    try:
        import av

        decode_errors: tuple[type[BaseException], ...] = (av.error.FFmpegError, UnidentifiedImageError, OSError)
    except ImportError:
        decode_errors = (UnidentifiedImageError, OSError)
    return isinstance(error, decode_errors)


# ---------------------------------------------------------------------------------------------
# the dataset


class ShardFiles:
    """The shard files of a dataset, their row ranges and one lazily opened (memory-mapped) reader each."""

    def __init__(self, files: list[Path], counts: list[int]) -> None:
        self.files = files
        self.ends = torch.tensor(counts, dtype=torch.int64).cumsum(0)
        self.starts = self.ends - torch.tensor(counts, dtype=torch.int64)
        self._readers: dict[int, object] = {}

    @property
    def rows(self) -> int:
        return int(self.ends[-1])

    def reader(self, file: int):
        if file not in self._readers:
            self._readers[file] = safe_open(str(self.files[file]), framework="pt")
        return self._readers[file]

    def __getstate__(self) -> dict:
        # Readers hold memory maps: a copy sent to a data-loader worker opens its own.
        return {**self.__dict__, "_readers": {}}


class ShardRows:
    """One array of every shard, indexed by global row; rows come back as float32 (uint8 scaled to 0..1),
    resized to ``image_size`` when given. Rows are read through the memory map unless ``in_memory``."""

    def __init__(self, shards: ShardFiles, key: str, in_memory: bool, image_size: int | None) -> None:
        self.shards = shards
        self.key = key
        self.image_size = image_size
        row_shape = tuple(shards.reader(0).get_slice(key).get_shape()[1:])
        self.stored = torch.cat([shards.reader(i).get_tensor(key) for i in range(len(shards.files))]) if in_memory else None
        size = image_size or row_shape[0]
        self.shape = (shards.rows, size, size, row_shape[2])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> torch.Tensor:
        rows = (index.long() if isinstance(index, torch.Tensor) else torch.arange(len(self))[index]).reshape(-1)
        if self.stored is not None:
            raw = self.stored[rows]
        else:
            files = torch.searchsorted(self.shards.ends, rows, right=True)
            offsets = rows - self.shards.starts[files]
            raw = torch.stack([
                self.shards.reader(file).get_slice(self.key)[offset:offset + 1][0]
                for file, offset in zip(files.tolist(), offsets.tolist(), strict=True)
            ])
        values = raw.float() / 255.0 if raw.dtype == torch.uint8 else raw.float()
        if self.image_size is not None and values.shape[1] != self.image_size:
            values = resize_images(values, self.image_size)
        return values


class VideoFaceShards:
    """Frames of preprocessed videos, with the attributes TGDM's trainer reads from FaceViews.

    ``photos``, ``renders`` (0..1) and ``surfaces`` are ``[N, S, S, 3]`` row views read on indexing
    (``image_size`` resizes them); ``coefficients`` ``[N, 259]``, ``landmarks`` ``[N, 68, 2]`` (crop px),
    ``videos`` (manifest index) and ``frame_numbers`` ``[N]`` are in memory, and ``descriptors`` ``[N, E]``
    (ArcFace, for face-swap training) when every shard has them. ``pairs`` draws
    (source, target) rows of one video at least ``min_frame_gap`` source frames apart (any other frame of
    the video when it has none that far, the frame itself when the video has one frame). Videos are
    named by their manifest index (``video_indices``); ``clip_audio`` reads the speech under a run of
    rows of a video that has some (``frame_runs`` splits a video where frames were left out)."""

    def __init__(self, folder: str | Path, image_size: int | None = None, min_frame_gap: int = 1,
                 in_memory: bool = False) -> None:
        self.folder = Path(folder)
        manifest = read_manifest(self.folder)
        if manifest is None:
            raise TalkingFaceError(
                f"{self.folder} has no {MANIFEST_FILE}: preprocess videos into it first with "
                "python -m scripts.preprocess_videos VIDEOS --out " + str(self.folder))
        self.manifest = manifest
        self.crop_size = int(manifest["crop_size"])
        self.image_size = image_size or self.crop_size
        self.min_frame_gap = int(min_frame_gap)
        entries = [entry for entry in manifest["videos"] if entry["status"] == "done"]
        shards = [(self.folder / shard["file"], shard["frames"]) for entry in entries for shard in entry["shards"]]
        missing = [str(path) for path, _ in shards if not path.is_file()]
        if missing:
            raise TalkingFaceError(f"shard files listed in {self.folder / MANIFEST_FILE} are missing: {missing[:5]}")
        if not shards:
            raise TalkingFaceError(f"{self.folder} holds no preprocessed frames (every video was skipped or none was given)")
        files = ShardFiles([path for path, _ in shards], [count for _, count in shards])
        self._files = files
        self._fps = {int(entry["index"]): float(entry["fps"]) for entry in entries}
        # Videos with speech and their audio entries (shards written before audio was kept have none).
        self._audio = {int(entry["index"]): entry["audio"] for entry in entries if entry.get("audio")}
        resize = None if self.image_size == self.crop_size else self.image_size
        self.photos = ShardRows(files, "photos", in_memory, resize)
        self.renders = ShardRows(files, "renders", in_memory, resize)
        self.surfaces = ShardRows(files, "surfaces", in_memory, resize)

        def whole(key: str) -> torch.Tensor:
            return torch.cat([files.reader(i).get_tensor(key) for i in range(len(files.files))])

        self.coefficients = whole("coefficients").float()
        self.landmarks = whole("landmarks").float()
        self.videos = whole("video").long()
        self.frame_numbers = whole("frame").long()
        # Shards from an analyzer without a recognition model (or from before descriptors were kept) have none.
        has_descriptors = all("descriptors" in files.reader(i).keys() for i in range(len(files.files)))
        self.descriptors = whole("descriptors").float() if has_descriptors else None
        # Rows are grouped by video in manifest order and sorted by frame inside each video.
        self._keys = self.videos * 2**32 + self.frame_numbers
        if bool((self._keys[1:] < self._keys[:-1]).any()):
            raise TalkingFaceError(f"the shards in {self.folder} are not in manifest order; re-run the preprocessing")
        video_ids, counts_per_video = torch.unique_consecutive(self.videos, return_counts=True)
        ends = counts_per_video.cumsum(0)
        self._video_start = dict(zip(video_ids.tolist(), (ends - counts_per_video).tolist(), strict=True))
        self._video_end = dict(zip(video_ids.tolist(), ends.tolist(), strict=True))

    def __len__(self) -> int:
        return self.coefficients.shape[0]

    @property
    def video_count(self) -> int:
        return len(self._video_start)

    @property
    def video_indices(self) -> list[int]:
        """The manifest index of every video with rows, in row order."""
        return list(self._video_start)

    def video_rows(self, video: int) -> range:
        return range(self._video_start[video], self._video_end[video])

    def video_fps(self, video: int) -> float:
        """The frame rate of the video's rows (after ``frame_step``)."""
        return self._fps[video]

    def has_audio(self, video: int) -> bool:
        return video in self._audio

    def frame_runs(self, video: int) -> list[range]:
        """The video's rows split where frames are missing (left out without a face, or interpolated), so
        each run's rows follow each other in time and line up with its audio."""
        rows = self.video_rows(video)
        step = int(self._audio[video]["frame_step"]) if video in self._audio else 1
        numbers = self.frame_numbers[rows.start:rows.stop]
        gaps = torch.nonzero(numbers[1:] - numbers[:-1] != step).flatten()
        ends = [rows.start + 1 + int(gap) for gap in gaps] + [rows.stop]
        return [range(start, end) for start, end in zip([rows.start, *ends[:-1]], ends, strict=True)]

    def clip_audio(self, rows: range) -> torch.Tensor | None:
        """The 16 kHz speech ``[N]`` float32 in -1..1 under ``rows`` of one video, from the start of the
        first row's frame to the end of the last's (for a run of ``frame_runs``, row ``i`` of the run
        starts at sample ``round(i · 16000 / fps)``), or None when the video has none."""
        video = int(self.videos[rows.start])
        if video not in self._audio:
            return None
        if int(self.videos[rows.stop - 1]) != video:
            raise TalkingFaceError(f"rows {rows.start}..{rows.stop - 1} span more than one video")
        info = self._audio[video]
        # Each shard holds the speech from its first row's frame to the next shard's: read only the shards of the rows.
        first_file, last_file = torch.searchsorted(self._files.ends, torch.tensor([rows.start, rows.stop - 1]), right=True).tolist()
        samples = torch.cat([self._files.reader(file).get_tensor(AUDIO_KEY) for file in range(first_file, last_file + 1)])
        step = int(info["frame_step"])
        audio = FrameAudio(samples, float(info["frame_rate"]), step, int(self.frame_numbers[self._files.starts[first_file]]))
        span = audio.span(int(self.frame_numbers[rows.start]), int(self.frame_numbers[rows.stop - 1]) + step)
        return span.float() / PCM_SCALE

    def evaluation_pairs(self, per_video: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
        """Fixed (source, target) rows for held-out evaluation: each video's first frame is the source of
        up to ``per_video`` targets spread evenly over its other frames (as far from it as the video allows)."""
        sources, targets = [], []
        for video in self._video_start:
            rows = self.video_rows(video)
            if len(rows) < 2:
                continue
            picks = torch.linspace(1, len(rows) - 1, min(per_video, len(rows) - 1)).round().long().unique()
            targets.append(rows.start + picks)
            sources.append(torch.full_like(picks, rows.start))
        if not targets:
            raise TalkingFaceError(f"no video in {self.folder} has two frames to pair for an evaluation")
        return torch.cat(sources), torch.cat(targets)

    def pairs(self, count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``count`` random (source, target) rows: two frames of one video, ``min_frame_gap`` apart."""
        targets = torch.randint(len(self), (count,), generator=generator)
        videos = self.videos[targets]
        starts = torch.tensor([self._video_start[v] for v in videos.tolist()], dtype=torch.int64)
        ends = torch.tensor([self._video_end[v] for v in videos.tolist()], dtype=torch.int64)
        gap = max(self.min_frame_gap, 1)
        target_keys = self._keys[targets]
        before = torch.searchsorted(self._keys, target_keys - gap, right=True) - starts  # frames ≤ f - gap
        after = ends - torch.searchsorted(self._keys, target_keys + gap, right=False)  # frames ≥ f + gap
        far = before + after
        # Videos without a frame that far: any other frame; a one-frame video pairs with itself.
        others = ends - starts - 1
        draws = (torch.rand(count, generator=generator) * torch.where(far > 0, far, others).clamp_min(1)).long()
        far_pick = torch.where(draws < before, starts + draws, ends - after + (draws - before))
        other_pick = starts + draws + (starts + draws >= targets).long()
        sources = torch.where(far > 0, far_pick, torch.where(others > 0, other_pick, targets))
        return sources, targets
