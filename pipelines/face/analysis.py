"""Face detection, landmarks and identity embeddings through insightface model packs.

insightface is imported only when an analyzer is loaded, so the rest of the pack works without it.
A pack is a folder of ONNX files (``ComfyUI/models/insightface/models/<pack>/``); insightface's
model router recognises each file by its input/output signature. The analyzer also wraps a
``FaceAnalysis`` object that another node pack (IPAdapter_plus's InsightFace Loader) made.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ModelFileError, TalkingFaceError

PACK_FILES = {
    "buffalo_l": ("det_10g.onnx", "2d106det.onnx", "1k3d68.onnx", "genderage.onnx", "w600k_r50.onnx"),
    "antelopev2": ("scrfd_10g_bnkps.onnx", "2d106det.onnx", "1k3d68.onnx", "genderage.onnx", "glintr100.onnx"),
}
DETECTOR_PREFIXES = ("det_", "scrfd")
PACK_FOLDER_HINT = "ComfyUI/models/insightface/models/"
# SCRFD's smallest anchors cover ~16 px at its input resolution; below this the detector is unreliable.
MIN_FACE_PIXELS = 24.0


@dataclass
class DetectedFace:
    """One face of one image, in that image's pixel coordinates (pixel centres at +0.5).

    landmarks68: iBUG-68 points (from insightface's 1k3d68, x and y); landmarks106: insightface's
    106-point layout; pose: (pitch, yaw, roll) in degrees; embedding: unit ArcFace vector."""

    box: np.ndarray  # [4] x0 y0 x1 y1
    score: float
    keypoints: np.ndarray  # [5, 2] eyes (subject's right, left), nose tip, mouth corners
    landmarks68: np.ndarray | None = None
    landmarks106: np.ndarray | None = None
    pose: np.ndarray | None = None
    embedding: np.ndarray | None = None

    @property
    def size(self) -> float:
        return float(max(self.box[2] - self.box[0], self.box[3] - self.box[1]))

    @property
    def area(self) -> float:
        return float(max(self.box[2] - self.box[0], 0.0) * max(self.box[3] - self.box[1], 0.0))


def available_providers() -> list[str]:
    import onnxruntime

    return list(onnxruntime.get_available_providers())


def choose_providers(requested: str = "auto") -> list[str]:
    """ONNX Runtime providers: ``auto`` takes CUDA when this onnxruntime build has it, else CPU;
    ``CPU``/``CUDA``/any provider name asks for that one (with CPU as the fallback)."""
    available = available_providers()
    if requested == "auto":
        return (["CUDAExecutionProvider"] if "CUDAExecutionProvider" in available else []) + ["CPUExecutionProvider"]
    name = requested if requested.endswith("ExecutionProvider") else f"{requested}ExecutionProvider"
    if name not in available:
        raise TalkingFaceError(
            f"ONNX Runtime provider '{name}' is not available in this installation (available: {available}); "
            "choose 'auto' or install the matching onnxruntime build (onnxruntime-gpu for CUDA)"
        )
    return [name] if name == "CPUExecutionProvider" else [name, "CPUExecutionProvider"]


def check_pack_folder(folder: Path) -> None:
    """Raise an error that lists the folder and the expected files when a pack is unusable."""
    expected = PACK_FILES.get(folder.name, PACK_FILES["buffalo_l"])
    if not folder.is_dir():
        present = sorted(p.name for p in folder.parent.iterdir() if p.is_dir()) if folder.parent.is_dir() else []
        raise ModelFileError(
            f"insightface model pack '{folder.name}' not found: put the folder {folder.name}/ holding "
            f"{', '.join(expected)} into {PACK_FOLDER_HINT}; packs found there: {present or 'none'}"
        )
    onnx_files = sorted(p.name for p in folder.glob("*.onnx"))
    if not any(name.startswith(DETECTOR_PREFIXES) for name in onnx_files):
        raise ModelFileError(
            f"insightface model pack {folder.name} has no face detector (det_*.onnx or scrfd_*.onnx); it holds "
            f"{onnx_files or 'no .onnx files'}, a complete '{folder.name}' pack has {', '.join(expected)}"
        )


class FaceAnalyzer:
    """Detects faces with 5 keypoints, 68/106 landmarks, head pose and ArcFace embeddings.

    ``app`` is an insightface ``FaceAnalysis`` (already prepared); :meth:`load` builds one from a pack
    folder, :meth:`wrap` accepts one made elsewhere."""

    def __init__(self, app, name: str, providers: list[str]) -> None:
        self.app = app
        self.name = name
        self.providers = providers

    @classmethod
    def load(
        cls,
        folder: Path,
        providers: str = "auto",
        detection_size: int = 640,
        detection_threshold: float = 0.5,
    ) -> FaceAnalyzer:
        folder = Path(folder)
        check_pack_folder(folder)
        chosen = choose_providers(providers)
        try:
            from insightface.app import FaceAnalysis
        except ImportError as error:
            raise TalkingFaceError(
                "face analysis needs the 'insightface' and 'onnxruntime' packages: pip install insightface onnxruntime"
            ) from error
        try:
            app = FaceAnalysis(name=str(folder.resolve()), providers=chosen)
        except AssertionError as error:  # insightface asserts a detection model was recognised
            raise ModelFileError(
                f"insightface found no face detector among {sorted(p.name for p in folder.glob('*.onnx'))} in the pack {folder.name}"
            ) from error
        app.prepare(ctx_id=0 if "CUDAExecutionProvider" in chosen else -1,
                    det_thresh=detection_threshold, det_size=(detection_size, detection_size))
        return cls(app, folder.name, chosen)

    @classmethod
    def wrap(cls, app) -> FaceAnalyzer:
        """Accept an insightface ``FaceAnalysis`` from another node (e.g. IPAdapter InsightFace Loader)."""
        if not hasattr(app, "get") or not hasattr(app, "models") or "detection" not in getattr(app, "models", {}):
            raise TalkingFaceError(
                f"expected an insightface FaceAnalysis object with a detection model, got {type(app).__name__}"
            )
        providers = []
        detector = app.models["detection"]
        if hasattr(detector, "session"):
            providers = list(detector.session.get_providers())
        return cls(app, "external FaceAnalysis", providers)

    @property
    def has_landmarks68(self) -> bool:
        return "landmark_3d_68" in self.app.models

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        """Faces in one RGB ``uint8`` image ``[H, W, 3]``, in the detector's order."""
        bgr = np.ascontiguousarray(image[:, :, ::-1])
        with warnings.catch_warnings():
            # insightface 2.x calls a scikit-image API that warns on every face; nothing for users to act on.
            warnings.simplefilter("ignore", FutureWarning)
            found = self.app.get(bgr)
        faces = []
        for face in found:
            # insightface measures pixel indices (centre at 0); the pack puts pixel centres at +0.5.
            faces.append(DetectedFace(
                box=np.asarray(face.bbox, np.float32) + 0.5,
                score=float(face.det_score),
                keypoints=np.asarray(face.kps, np.float32) + 0.5,
                landmarks68=None if face.landmark_3d_68 is None else np.asarray(face.landmark_3d_68[:, :2], np.float32) + 0.5,
                landmarks106=None if face.landmark_2d_106 is None else np.asarray(face.landmark_2d_106, np.float32) + 0.5,
                pose=None if face.pose is None else np.asarray(face.pose, np.float32),
                embedding=None if face.embedding is None else np.asarray(face.normed_embedding, np.float32),
            ))
        return faces


def images_to_uint8(images: torch.Tensor) -> np.ndarray:
    """A ComfyUI IMAGE batch ``[B, H, W, 3]`` (0..1) as RGB ``uint8`` arrays for the detector."""
    return (images.detach().clamp(0, 1).mul(255).round().to(torch.uint8)).cpu().numpy()
