"""Dubbing a video: new speech for a person in template frames (paper 2's use).

Lip and jaw landmarks come from the audio (the landmark completion transformer, in overlapping
windows blended at the joins, :func:`~..audio.landmarks.predict_mouth`), the upper face and head
motion from the template frames. The dubbing denoiser regenerates the lower face of every aligned
crop, and only the mouth and jaw region goes back into the frame, feathered. Frames where the face
was not detected pass through unchanged and keep their place in time.

Memory is flat in video length: crops, masks, noise and generated faces exist one chunk at a time;
only per-frame landmarks (a few hundred numbers each) and the output frames grow with the video.
The generator denoises every frame independently from noise seeded by (seed, frame), so chunks
need no overlap: a frame is the same whichever chunk it falls in.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from ..audio.io import fit_comfy_to_frames, fit_to_frames, prepare_speech
from ..audio.landmark_model import MOUTH_POINTS, POSE_POINTS, LandmarkCompletionTransformer
from ..audio.landmarks import eye_frames, predict_mouth, to_normalised, to_pixels
from ..errors import TalkingFaceError
from ..face.alignment import apply_transforms, paste_back, warp_images
from ..face.faces import AnalyzedFaces
from ..face.mouth import lower_face_input_mask, mouth_paste_mask
from ..video import frame_chunks
from .dubbing import crop_coordinates
from .dubbing_sampler import DubbingSampler

LENGTH_POLICIES = ("loop", "ping_pong", "hold_last", "cut_to_shorter", "pad_silence")
INNER_LIPS = (62, 66)  # upper and lower inner lip centres
# The landmark and dubbing models learn motion per frame: footage at another rate moves differently.
FPS_TOLERANCE = 0.02


@dataclass(frozen=True)
class DubbingOptions:
    """``length_policy`` when audio and video differ: ``loop`` / ``ping_pong`` / ``hold_last`` repeat
    the video to the audio's length (a longer video is cut to the audio); ``cut_to_shorter`` ends with
    the shorter; ``pad_silence`` keeps the video's length, padding the audio with silence (the mouth
    rests) or cutting it. ``top_shift`` moves the regenerated region's top edge (fraction of the
    crop, + lower); ``feather`` is the paste-back fade in crop pixels."""

    length_policy: str = "loop"
    top_shift: float = 0.0
    feather: int = 6
    chunk_size: int = 16

    def __post_init__(self) -> None:
        if self.length_policy not in LENGTH_POLICIES:
            raise TalkingFaceError(f"unknown length_policy '{self.length_policy}'; choose one of {LENGTH_POLICIES}")
        if self.chunk_size < 1 or self.feather < 0:
            raise TalkingFaceError("chunk size must be at least 1 and feather not negative")


def frame_schedule(video_frames: int, audio_frames: int, policy: str) -> torch.Tensor:
    """For each output frame, the template frame it shows ``[N]``."""
    if policy == "cut_to_shorter":
        return torch.arange(min(video_frames, audio_frames))
    if policy == "pad_silence":
        return torch.arange(video_frames)
    steps = torch.arange(audio_frames)
    if policy == "loop":
        return steps % video_frames
    if policy == "hold_last":
        return steps.clamp(max=video_frames - 1)
    if policy == "ping_pong":
        period = 2 * video_frames - 2
        phase = steps % period
        return torch.where(phase < video_frames, phase, period - phase)
    raise TalkingFaceError(f"unknown length_policy '{policy}'; choose one of {LENGTH_POLICIES}")


def spread_references(opening: torch.Tensor, usable: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` frame indices whose mouth openings ``[T]`` spread from closed to wide open (quantiles
    among the ``usable`` frames), so the references show lips at rest and teeth."""
    candidates = torch.nonzero(usable).flatten()
    if len(candidates) == 0:
        raise TalkingFaceError("no frame of the video has a detected face to take reference frames from")
    ordered = candidates[opening[candidates].argsort()]
    picks = torch.linspace(0, len(ordered) - 1, count).round().long()
    return ordered[picks]


def check_fps(fps: float, trained_fps: float) -> None:
    if not fps > 0:
        raise TalkingFaceError(f"fps must be positive, got {fps}: connect the video's frame rate")
    if abs(fps - trained_fps) > FPS_TOLERANCE * trained_fps:
        raise TalkingFaceError(
            f"the dubbing model was trained on {trained_fps:g} fps footage and this video is {fps:g} fps, so its lip "
            f"motion would be off: resample the frames to {trained_fps:g} fps (e.g. VideoHelperSuite's force_rate) "
            "or train a model on footage at this rate"
        )


@dataclass
class DubbingResult:
    images: torch.Tensor  # [N, H, W, 3]
    audio: dict  # AUDIO cut or padded to the N frames
    masks: torch.Tensor  # [N, H, W] where each frame was replaced
    template_frames: torch.Tensor  # [N] template frame shown by each output frame


def dub_video(
    sampler: DubbingSampler,
    landmark_model: LandmarkCompletionTransformer,
    faces: AnalyzedFaces,
    audio: Mapping,
    fps: float,
    options: DubbingOptions = DubbingOptions(),
    on_step: Callable[[int, int], None] | None = None,
    check_interrupted: Callable[[], None] | None = None,
    on_chunk: Callable[[torch.Tensor], None] | None = None,
) -> DubbingResult:
    """Dub the analysed frames ``faces`` with ``audio`` at ``fps``. ``on_step(step, steps)`` runs after
    every denoising step of every chunk, ``check_interrupted()`` before every denoiser batch,
    ``on_chunk(frame)`` with the last dubbed frame ``[H, W, 3]`` of every chunk (a preview)."""
    config = sampler.model.config
    check_fps(fps, config.fps)
    if faces.frames < 2:
        raise TalkingFaceError(
            "the video has a single frame: dubbing keeps a video's own head motion; for a still portrait use the "
            "talking-portrait path (Audio to Landmarks → Landmarks to Expression → TGDM Sampler), or make a video from it first"
        )
    landmarks68 = faces.require_landmarks68()
    track = prepare_speech(audio)
    schedule = frame_schedule(faces.frames, fit_to_frames(track, 0, fps, "pad")[1], options.length_policy)
    count = schedule.shape[0]
    speech, _ = fit_to_frames(track, count, fps, "pad")  # cut, or padded with silence: the mouth rests

    size = config.pixel_size
    transforms = faces.crop_transforms.float() * (size / faces.crop_size)
    crop_points = apply_transforms(transforms, landmarks68.float())  # [T, 68, 2] crop pixels
    normalised = to_normalised(crop_points, eye_frames(crop_points))
    opening = (normalised[:, INNER_LIPS[1], 1] - normalised[:, INNER_LIPS[0], 1]).abs()
    usable = faces.detected.bool()

    # Lip and jaw motion from the audio, for every output frame, in its template frame's crop.
    motion_references = normalised[spread_references(opening, usable, landmark_model.config.reference_sets)]
    frame_points = crop_points[schedule]
    frame_axes = eye_frames(frame_points)
    pose = to_normalised(frame_points[:, list(POSE_POINTS)], frame_axes)
    mouth = to_pixels(predict_mouth(landmark_model, speech, fps, motion_references, pose).cpu(), frame_axes)

    reference_index = spread_references(opening, usable, config.reference_frames)
    reference_crops = warp_images(faces.images[reference_index], transforms[reference_index], size).clamp(0, 1)
    references = sampler.encode_references(
        reference_crops, crop_coordinates(crop_points[reference_index][:, list(MOUTH_POINTS)], size)
    )

    height, width = faces.images.shape[1:3]
    images = faces.images.new_empty((count, height, width, 3), dtype=torch.float32)
    masks = torch.zeros(count, height, width)
    chunks = math.ceil(count / options.chunk_size)
    for chunk_number, chunk in enumerate(frame_chunks(count, options.chunk_size)):
        template = schedule[chunk]
        images[chunk] = faces.images[template].float()
        present = usable[template]
        if not present.any():
            continue
        rows = torch.arange(chunk.start, chunk.stop)[present]
        template = template[present]
        crops = warp_images(faces.images[template], transforms[template], size).clamp(0, 1)
        input_masks = lower_face_input_mask(crop_points[template], size, options.top_shift)

        def step_done(step: int, steps: int, chunk_number: int = chunk_number) -> None:
            if on_step is not None:
                on_step(chunk_number * steps + step, chunks * steps)

        generated = sampler.sample(crops, input_masks, crop_coordinates(mouth[rows], size), references,
                                   rows.tolist(), step_done, check_interrupted)
        paste_masks = mouth_paste_mask(crop_points[template], mouth[rows][:, :17], size, options.top_shift,
                                       max(round(options.feather * size / 256), 1))
        pasted, frame_masks = paste_back(faces.images[template].float(), generated, transforms[template], paste_masks)
        images[rows] = pasted
        masks[rows] = frame_masks
        if on_chunk is not None:
            on_chunk(pasted[-1])
    return DubbingResult(images, fit_comfy_to_frames(audio, count, fps, "pad"), masks, schedule)
