"""Faces from OpenPose-format keypoints (``POSE_KEYPOINT`` of comfyui_controlnet_aux's DWPose and OpenPose
estimators), so a user with a pose estimator needs neither insightface nor dlib.

``POSE_KEYPOINT`` is a list with one dict per frame: ``{"people": [{"face_keypoints_2d": [x, y, c, ...],
...}], "canvas_width": W, "canvas_height": H}``. A face has 68 iBUG points, or 70 (OpenPose adds the two
pupils, which are not used). A point with confidence 0 was not found. Coordinates are pixels of the canvas
(OpenPose: pixel indices, centre at 0) or, as controlnet_aux's DWPose writes them, fractions of the canvas;
the two are told apart by their range.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ..errors import TalkingFaceError
from .analysis import DetectedFace
from .faces import keypoints_from_landmarks68

FACE_POINTS = 68
FACE_KEY = "face_keypoints_2d"
# Canvases of another size than the images are scaled onto them when their shapes agree this closely.
ASPECT_TOLERANCE = 0.01
# A point is 'found' above this confidence; the pack needs every one of the 68 to fit.
MIN_CONFIDENCE = 0.0


def _frames_of(pose_keypoint: object) -> list[Mapping]:
    frames = [pose_keypoint] if isinstance(pose_keypoint, Mapping) else pose_keypoint
    if not isinstance(frames, Sequence) or not all(isinstance(frame, Mapping) for frame in frames):
        raise TalkingFaceError(
            "POSE_KEYPOINT must be a list of per-frame dicts with 'people' (from the DWPose or OpenPose estimator "
            f"of comfyui_controlnet_aux), got {type(pose_keypoint).__name__}")
    return list(frames)


def _face_points(person: Mapping) -> np.ndarray | None:
    values = person.get(FACE_KEY)
    if not values:
        return None
    points = np.asarray(values, dtype=np.float64)
    if points.ndim != 1 or points.size % 3 or points.size // 3 not in (FACE_POINTS, FACE_POINTS + 2):
        raise TalkingFaceError(
            f"the face points ({FACE_KEY}) of pose_keypoint must be 68 or 70 (x, y, confidence) triples, got "
            f"{points.size} numbers: connect a DWPose or OpenPose estimator's POSE_KEYPOINT")
    return points.reshape(-1, 3)[:FACE_POINTS]


def _canvas_scale(frame: Mapping, index: int, height: int, width: int) -> tuple[float, float]:
    """Image pixels per canvas pixel, after checking that the canvas has the images' shape."""
    canvas_width, canvas_height = frame.get("canvas_width"), frame.get("canvas_height")
    if not canvas_width or not canvas_height:
        return 1.0, 1.0
    scale_x, scale_y = width / float(canvas_width), height / float(canvas_height)
    if abs(scale_x / scale_y - 1.0) > ASPECT_TOLERANCE:
        raise TalkingFaceError(
            f"the pose keypoints of frame {index} were found on a {canvas_width}×{canvas_height} canvas but the images "
            f"are {width}×{height}, a different shape: run the pose estimator on these same images (its output keeps "
            "their aspect ratio)")
    return scale_x, scale_y


def detections_from_pose_keypoints(
    pose_keypoint: object, frames: int, height: int, width: int
) -> tuple[list[list[DetectedFace]], list[str]]:
    """The faces of every frame as detections (box, five keypoints, 68 landmarks in image pixels, score =
    mean confidence), plus notes for faces left out because some of their 68 points were not found.

    One dict for several frames is refused, as are frame counts that differ; a canvas of another size but
    the same shape is scaled onto the images."""
    pose_frames = _frames_of(pose_keypoint)
    if len(pose_frames) != frames:
        raise TalkingFaceError(
            f"POSE_KEYPOINT has {len(pose_frames)} frame(s) but there are {frames} image(s): estimate the pose on "
            "the same images you analyse")
    people_seen = faces_seen = 0
    per_frame: list[list[DetectedFace]] = []
    incomplete: list[int] = []
    for index, frame in enumerate(pose_frames):
        scale_x, scale_y = _canvas_scale(frame, index, height, width)
        canvas_size = np.array([float(frame.get("canvas_width") or width), float(frame.get("canvas_height") or height)])
        found = []
        for person in frame.get("people") or []:
            people_seen += 1
            points = _face_points(person)
            if points is None:
                continue
            faces_seen += 1
            visible = points[:, 2] > MIN_CONFIDENCE
            if not visible.all():
                if visible.any():
                    incomplete.append(index)
                continue
            xy = points[:, :2]
            # Fractions of the canvas (DWPose) become canvas pixels; pixel indices move to the pack's +0.5 centres.
            xy = xy * canvas_size if float(np.abs(xy).max()) <= 1.0 else xy + 0.5
            landmarks = (xy * np.array([scale_x, scale_y])).astype(np.float32)
            keypoints = keypoints_from_landmarks68(torch.from_numpy(landmarks)[None])[0].numpy()
            found.append(DetectedFace(
                box=np.concatenate([landmarks.min(0), landmarks.max(0)]).astype(np.float32),
                score=float(points[:, 2].mean()), keypoints=keypoints.astype(np.float32), landmarks68=landmarks,
            ))
        per_frame.append(found)
    if people_seen and not faces_seen:
        raise TalkingFaceError(
            "POSE_KEYPOINT has people but no face points: turn on detect_face in the DWPose Estimator (or the "
            "face option of the OpenPose estimator)")
    notes = []
    if incomplete:
        listed = ", ".join(map(str, sorted(set(incomplete))[:20]))
        notes.append(f"faces with some of their 68 pose keypoints missing were left out in frame(s) {listed}")
    return per_frame, notes

