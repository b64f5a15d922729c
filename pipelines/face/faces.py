"""The analysed face of every frame (``TALK_FACES``) and the analysis that produces it."""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import TalkingFaceError
from ..images import check_image_range, normalize_image_channels
from .alignment import FIT_CROP_SIZE, apply_transforms, crop_template, similarity_transforms, warp_images
from .analysis import MIN_FACE_PIXELS, DetectedFace, FaceAnalyzer, images_to_uint8
from .selection import NO_FACE_FIXES, select_face, track_face
from .smoothing import one_euro

logger = logging.getLogger(__name__)
# What happens to frames without the face: filled from neighbouring frames, left untouched downstream
# (Paste Back returns them as they were), or an error naming them.
MISSING_POLICIES = ("interpolate", "pass_through", "error")
DEFAULT_FPS = 25.0


@dataclass
class AnalyzedFaces:
    """One chosen face per frame, in frame pixels, with the transforms to its crops.

    ``fit_transforms`` map frame pixels into the 224-px Deep3DFaceRecon crop the fitter sees,
    ``crop_transforms`` into the generator's ``crop_size`` crop; both invert for paste-back.
    ``detected`` is False where the face was interpolated from neighbouring frames; ``pass_through``
    (None: no frame) is True where the stages after the analysis must leave the frame as it was.
    ``fps`` is the frame rate of the video the frames come from (temporal smoothing uses it).
    ``images`` is the analysed IMAGE batch itself (a reference, not a copy)."""

    images: torch.Tensor  # [T, H, W, 3]
    boxes: torch.Tensor  # [T, 4]
    scores: torch.Tensor  # [T]
    keypoints: torch.Tensor  # [T, 5, 2]
    landmarks68: torch.Tensor | None  # [T, 68, 2]
    landmarks106: torch.Tensor | None  # [T, 106, 2]
    embeddings: torch.Tensor | None  # [T, E], unit length
    head_pose: torch.Tensor | None  # [T, 3] pitch, yaw, roll in degrees (insightface)
    detected: torch.Tensor  # [T] bool
    fit_transforms: torch.Tensor  # [T, 2, 3]
    crop_transforms: torch.Tensor  # [T, 2, 3]
    crop_size: int
    crop_margin: float
    notes: list[str] = field(default_factory=list)
    fps: float = DEFAULT_FPS
    pass_through: torch.Tensor | None = None  # [T] bool

    @property
    def frames(self) -> int:
        return self.boxes.shape[0]

    @property
    def untouched(self) -> torch.Tensor:
        """``[T]`` bool: the frames later stages return unchanged (no face, policy ``pass_through``)."""
        if self.pass_through is None:
            return torch.zeros(self.frames, dtype=torch.bool)
        return self.pass_through

    def require_landmarks68(self) -> torch.Tensor:
        if self.landmarks68 is None:
            raise TalkingFaceError(
                "the face analysis has no 68-point landmarks: the insightface pack needs its 1k3d68.onnx model"
            )
        return self.landmarks68

    def fit_landmarks(self) -> torch.Tensor:
        """The 68 landmarks in the 224-px fitting crop, ``[T, 68, 2]``."""
        return apply_transforms(self.fit_transforms, self.require_landmarks68())

    def fit_crops(self, frames: slice) -> torch.Tensor:
        return warp_images(self.images[frames], self.fit_transforms[frames], FIT_CROP_SIZE)

    def crops(self, frames: slice) -> torch.Tensor:
        return warp_images(self.images[frames], self.crop_transforms[frames], self.crop_size)


FIVE_POINT_GROUPS = ((36, 37, 38, 39, 40, 41), (42, 43, 44, 45, 46, 47), (30,), (48,), (54,))


def keypoints_from_landmarks68(landmarks: torch.Tensor) -> torch.Tensor:
    """insightface's five keypoints (eye centres, nose tip, mouth corners; image-left first) from
    iBUG-68 landmarks ``[T, 68, 2]``."""
    return torch.stack([landmarks[:, list(group)].mean(1) for group in FIVE_POINT_GROUPS], dim=1)


def faces_from_landmarks(
    images: torch.Tensor, landmarks68: torch.Tensor, crop_size: int = 256, crop_margin: float = 0.0,
    fps: float = DEFAULT_FPS,
) -> AnalyzedFaces:
    """Analysed faces from 68 landmarks found some other way (another tracker, synthetic renders)."""
    images, note = normalize_image_channels(images)
    if landmarks68.shape != (images.shape[0], 68, 2):
        raise TalkingFaceError(
            f"need 68 landmarks per frame for {images.shape[0]} frames, got shape {tuple(landmarks68.shape)}"
        )
    keypoints = keypoints_from_landmarks68(landmarks68.float())
    frames = images.shape[0]
    boxes = torch.cat([landmarks68.amin(1), landmarks68.amax(1)], dim=1).float()
    return AnalyzedFaces(
        images=images, boxes=boxes, scores=torch.ones(frames), keypoints=keypoints,
        landmarks68=landmarks68.float(), landmarks106=None, embeddings=None, head_pose=None,
        detected=torch.ones(frames, dtype=torch.bool),
        fit_transforms=similarity_transforms(keypoints, crop_template(FIT_CROP_SIZE)),
        crop_transforms=similarity_transforms(keypoints, crop_template(crop_size, crop_margin)),
        crop_size=crop_size, crop_margin=crop_margin, notes=[note] if note else [], fps=float(fps),
    )


def _interpolate_missing(values: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Linear interpolation over frames (axis 0) from the present frames; ends hold the nearest."""
    frames = np.arange(values.shape[0])
    flat = values.reshape(values.shape[0], -1).copy()
    for column in range(flat.shape[1]):
        flat[~present, column] = np.interp(frames[~present], frames[present], flat[present, column])
    return flat.reshape(values.shape)


def _stack(track: list[DetectedFace | None], present: np.ndarray, attribute: str) -> np.ndarray | None:
    sample = getattr(track[int(np.argmax(present))], attribute)
    if sample is None:
        return None
    sample = np.asarray(sample, dtype=np.float32)
    values = np.zeros((len(track),) + sample.shape, dtype=np.float32)
    for t, face in enumerate(track):
        if face is not None and getattr(face, attribute) is not None:
            values[t] = getattr(face, attribute)
    return _interpolate_missing(values, present)


def reference_embedding(analyzer: FaceAnalyzer, images: torch.Tensor) -> np.ndarray:
    """The unit ArcFace embedding of the person in reference ``images`` (the largest face of each
    image, averaged), for the ``most_similar`` selection."""
    images, _ = normalize_image_channels(images)
    embeddings = []
    for t in range(images.shape[0]):
        faces = analyzer.detect(images_to_uint8(images[t]))
        if not faces:
            raise TalkingFaceError(f"no face found in reference_image {t}: {NO_FACE_FIXES}")
        largest = max(faces, key=lambda face: face.area)
        if largest.embedding is None:
            raise TalkingFaceError(
                "the face analyzer gives no identity embedding, so most_similar cannot compare faces: use an "
                "insightface pack with its recognition model (w600k_r50.onnx in buffalo_l), or dlib with "
                "dlib_face_recognition_resnet_model_v1.dat in its models folder"
            )
        embeddings.append(largest.embedding)
    mean = np.mean(embeddings, axis=0)
    return mean / max(float(np.linalg.norm(mean)), 1e-8)


def analyze_frames(
    analyzer: FaceAnalyzer,
    images: torch.Tensor,
    order: str = "largest",
    face_index: int = 0,
    missing: str = "interpolate",
    crop_size: int = 256,
    crop_margin: float = 0.0,
    smoothing: float = 0.0,
    fps: float = DEFAULT_FPS,
    on_frame: Callable[[int], None] | None = None,
    reference: np.ndarray | None = None,
) -> AnalyzedFaces:
    """Detect, choose and align one face per frame of an IMAGE batch.

    ``analyzer`` is anything with ``detect(uint8 RGB image) -> list[DetectedFace]`` (insightface, dlib).
    ``reference`` is the unit ArcFace embedding the ``most_similar`` order compares with
    (:func:`reference_embedding`). The rest is :func:`faces_from_detections`."""
    check_missing_policy(missing)
    images, per_frame, notes = detect_frames(analyzer, images, on_frame)
    return faces_from_detections(images, per_frame, order, face_index, missing, crop_size, crop_margin, smoothing,
                                 fps, notes=notes, no_face_hint=getattr(analyzer, "no_face_hint", None),
                                 reference=reference)


def detect_frames(
    analyzer: FaceAnalyzer, images: torch.Tensor, on_frame: Callable[[int], None] | None = None,
) -> tuple[torch.Tensor, list[list[DetectedFace]], list[str]]:
    """Every face of every frame: the frames as RGB in 0..1 (gray and RGBA converted), the faces found
    in each, and a note when the frames were converted."""
    if images.ndim not in (3, 4) or images.shape[0] == 0:
        raise TalkingFaceError(f"images must be a non-empty IMAGE batch, got shape {tuple(images.shape)}")
    images, note = normalize_image_channels(images)
    check_image_range(images, "the images")
    per_frame: list[list[DetectedFace]] = []
    for t in range(images.shape[0]):
        per_frame.append(analyzer.detect(images_to_uint8(images[t])))
        if on_frame is not None:
            on_frame(t)
    return images, per_frame, [note] if note else []


def check_missing_policy(missing: str) -> None:
    if missing not in MISSING_POLICIES:
        raise TalkingFaceError(f"missing_faces must be one of {MISSING_POLICIES}, got '{missing}'")


def faces_from_detections(
    images: torch.Tensor,
    per_frame: list[list[DetectedFace]],
    order: str = "largest",
    face_index: int = 0,
    missing: str = "interpolate",
    crop_size: int = 256,
    crop_margin: float = 0.0,
    smoothing: float = 0.0,
    fps: float = DEFAULT_FPS,
    notes: list[str] | None = None,
    no_face_hint: str | None = None,
    reference: np.ndarray | None = None,
) -> AnalyzedFaces:
    """Choose and align one face per frame from the faces found in each frame (``per_frame``).

    One image: the ``face_index``-th face in ``order``. A video: a track that follows that person.
    Frames without the face follow ``missing``: ``interpolate`` fills them from the neighbouring frames
    (with a logged warning listing them), ``pass_through`` fills them the same way but marks them for the
    later stages to leave untouched (with no face anywhere, every frame passes through), ``error`` raises
    naming them. ``smoothing`` (0..1) filters the keypoints over time at ``fps`` before the crops are fixed.
    ``no_face_hint`` (what the detector can find) is added to the error when no frame has a face.
    ``reference`` is the unit ArcFace embedding the ``most_similar`` order compares with."""
    check_missing_policy(missing)
    if fps <= 0:
        raise TalkingFaceError(f"fps must be positive, got {fps}")
    notes = list(notes or [])
    frames = images.shape[0]
    if len(per_frame) != frames:
        raise ValueError(f"face detections for {len(per_frame)} frames, but there are {frames} images")
    if not any(per_frame):
        where = "the image" if frames == 1 else f"any of the {frames} frames"
        if missing != "pass_through":
            raise TalkingFaceError(
                f"images: no face found in {where}; {NO_FACE_FIXES}; or set missing_faces to 'pass_through' to "
                f"return {'it' if frames == 1 else 'the frames'} unchanged" + (f" ({no_face_hint})" if no_face_hint else "")
            )
        message = f"no face found in {where}: every frame passes through unchanged"
        logger.warning(message)
        return _faces_passing_through(images, crop_size, crop_margin, fps, notes + [message])
    if frames == 1:
        track = [select_face(per_frame[0], order, face_index, "the image", reference)]
    else:
        track = track_face(per_frame, order, face_index, reference)
    return faces_from_track(images, track, missing, crop_size, crop_margin, smoothing, fps, notes)


def faces_from_track(
    images: torch.Tensor,
    track: Sequence[DetectedFace | None],
    missing: str = "interpolate",
    crop_size: int = 256,
    crop_margin: float = 0.0,
    smoothing: float = 0.0,
    fps: float = DEFAULT_FPS,
    notes: list[str] | None = None,
) -> AnalyzedFaces:
    """Align one chosen face per frame (``track``, None where that face is absent) as
    :func:`faces_from_detections` describes."""
    check_missing_policy(missing)
    if fps <= 0:
        raise TalkingFaceError(f"fps must be positive, got {fps}")
    if all(face is None for face in track):
        raise ValueError("the track holds no face")
    notes = list(notes or [])
    frames = images.shape[0]
    present = np.array([face is not None for face in track])
    missing_frames = [t for t in range(frames) if not present[t]]
    if missing_frames:
        listed = ", ".join(map(str, missing_frames[:20])) + (" …" if len(missing_frames) > 20 else "")
        if missing == "error":
            raise TalkingFaceError(
                f"images: no face (of the tracked person) in frame(s) {listed} of {frames}; set missing_faces to "
                "'interpolate' to fill them from the neighbouring frames, or 'pass_through' to leave them unchanged"
            )
        outcome = ("filled by interpolation from the neighbouring frames" if missing == "interpolate"
                   else "these frames pass through unchanged")
        message = f"no face in frame(s) {listed}; {outcome}"
        logger.warning(message)
        notes.append(message)
    tiny = [(t, face.size) for t, face in enumerate(track) if face is not None and face.size < MIN_FACE_PIXELS]
    if tiny:
        t, size = tiny[0]
        raise TalkingFaceError(
            f"the face in {'the image' if frames == 1 else f'frame {t}'} is only {size:.0f} px wide; the detector "
            f"and landmarks need at least {MIN_FACE_PIXELS:.0f} px: use a larger image or crop closer to the face"
        )
    keypoints = torch.from_numpy(_stack(track, present, "keypoints"))
    if smoothing > 0 and frames > 1:
        size = float(np.median([face.size for face in track if face is not None]))
        keypoints = one_euro(keypoints, fps, smoothing, scale=size)

    def optional(attribute: str) -> torch.Tensor | None:
        values = _stack(track, present, attribute)
        return None if values is None else torch.from_numpy(values)

    embeddings = optional("embedding")
    if embeddings is not None:
        embeddings = torch.nn.functional.normalize(embeddings, dim=-1)
    detected = torch.from_numpy(present)
    return AnalyzedFaces(
        images=images,
        boxes=torch.from_numpy(_stack(track, present, "box")),
        scores=torch.tensor([face.score if face is not None else 0.0 for face in track]),
        keypoints=keypoints,
        landmarks68=optional("landmarks68"),
        landmarks106=optional("landmarks106"),
        embeddings=embeddings,
        head_pose=optional("pose"),
        detected=detected,
        fit_transforms=similarity_transforms(keypoints, crop_template(FIT_CROP_SIZE)),
        crop_transforms=similarity_transforms(keypoints, crop_template(crop_size, crop_margin)),
        crop_size=crop_size,
        crop_margin=crop_margin,
        notes=notes,
        fps=float(fps),
        pass_through=~detected if missing == "pass_through" and missing_frames else None,
    )


def _faces_passing_through(
    images: torch.Tensor, crop_size: int, crop_margin: float, fps: float, notes: list[str]
) -> AnalyzedFaces:
    """Frames without any face, every one marked to pass through: a stand-in face (the five-point
    template, centred, half the shorter side wide) keeps the later stages' shapes and transforms valid."""
    frames, height, width = images.shape[:3]
    template = crop_template(FIT_CROP_SIZE)
    scale = 0.5 * min(height, width) / FIT_CROP_SIZE
    keypoints = ((template - FIT_CROP_SIZE / 2.0) * scale + torch.tensor([width / 2.0, height / 2.0])).expand(frames, -1, -1)
    low, high = keypoints.amin(1), keypoints.amax(1)
    return AnalyzedFaces(
        images=images, boxes=torch.cat([low, high], 1), scores=torch.zeros(frames), keypoints=keypoints.clone(),
        landmarks68=None, landmarks106=None, embeddings=None, head_pose=None,
        detected=torch.zeros(frames, dtype=torch.bool),
        fit_transforms=similarity_transforms(keypoints, crop_template(FIT_CROP_SIZE)),
        crop_transforms=similarity_transforms(keypoints, crop_template(crop_size, crop_margin)),
        crop_size=crop_size, crop_margin=crop_margin, notes=notes, fps=float(fps),
        pass_through=torch.ones(frames, dtype=torch.bool),
    )
