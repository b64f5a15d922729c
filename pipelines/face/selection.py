"""Which face to follow: an order and an index for one image, a track for a video."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import TalkingFaceError
from .analysis import DetectedFace

ORDERS = ("single", "largest", "left_to_right", "top_to_bottom", "most_confident", "most_similar")
# A track continues with the face that best combines overlap with the last box and ArcFace similarity.
TRACK_MIN_MATCH = 0.3


def order_faces(faces: Sequence[DetectedFace], order: str, reference: np.ndarray | None = None) -> list[DetectedFace]:
    """``single`` keeps the detector's order (it only matters that there is one face); ``most_similar``
    puts first the face whose ArcFace embedding is nearest the unit ``reference`` embedding."""
    if order == "most_similar" and reference is None:
        raise TalkingFaceError(
            "the selection is 'most_similar' but no reference face was given: connect a reference_image showing "
            "the person to follow, or choose another selection order"
        )

    def similarity(face: DetectedFace) -> float:
        return -2.0 if face.embedding is None else float(np.dot(reference, face.embedding))

    keys = {
        "single": lambda f: 0.0,
        "largest": lambda f: -f.area,
        "left_to_right": lambda f: f.box[0] + f.box[2],
        "top_to_bottom": lambda f: f.box[1] + f.box[3],
        "most_confident": lambda f: -f.score,
        "most_similar": lambda f: -similarity(f),
    }
    if order not in keys:
        raise TalkingFaceError(f"unknown selection '{order}'; choose one of {ORDERS}")
    return sorted(faces, key=keys[order])


# What to try when the detector finds no face (Load Face Analyzer's inputs, the image, Analyze Faces' policy).
NO_FACE_FIXES = (
    "lower detection_threshold (or raise detection_size for a small face) in Load Face Analyzer, use a larger or "
    "more frontal face, check the image is not blank, or, in a video, set missing_faces to interpolate"
)


def select_face(
    faces: Sequence[DetectedFace], order: str, index: int, what: str, reference: np.ndarray | None = None
) -> DetectedFace:
    """The ``index``-th face of ``what`` (an image description for errors) in ``order`` (``reference``:
    the embedding ``most_similar`` compares with)."""
    if not faces:
        raise TalkingFaceError(f"images: no face found in {what}; {NO_FACE_FIXES}")
    if order == "single":
        if len(faces) > 1:
            raise TalkingFaceError(
                f"{len(faces)} faces found in {what} and the selection is 'single': choose an order "
                "(largest, left_to_right, top_to_bottom, most_confident) and a face_index"
            )
        return faces[0]
    ordered = order_faces(faces, order, reference)
    if index >= len(ordered):
        raise TalkingFaceError(
            f"{what} has {len(ordered)} face(s) but face_index is {index}; pick an index below {len(ordered)}"
        )
    return ordered[index]


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def identity_similarity(candidate: DetectedFace, reference_embedding: np.ndarray) -> float:
    """ArcFace cosine similarity to a unit reference, 0 for a face without an embedding or an opposite one."""
    if candidate.embedding is None:
        return 0.0
    return max(float(np.dot(reference_embedding, candidate.embedding)), 0.0)


def match_score(previous: DetectedFace, candidate: DetectedFace, reference_embedding: np.ndarray | None) -> float:
    """Half box overlap with the last tracked box, half ArcFace cosine similarity to the track's identity."""
    overlap = box_iou(previous.box, candidate.box)
    if reference_embedding is None or candidate.embedding is None:
        return overlap
    return 0.5 * overlap + 0.5 * identity_similarity(candidate, reference_embedding)


def track_face(
    per_frame: Sequence[Sequence[DetectedFace]], order: str, index: int, reference: np.ndarray | None = None
) -> list[DetectedFace | None]:
    """Follow one person through a video: start with the ``index``-th face (in ``order``) of the first
    frame that has faces, then in each frame take the face that best matches the track (box overlap
    and ArcFace similarity; with ``most_similar``, similarity to the ``reference`` embedding alone).
    Frames without a good match are ``None``."""
    track: list[DetectedFace | None] = [None] * len(per_frame)
    start = next((t for t, faces in enumerate(per_frame) if faces), None)
    if start is None:
        return track
    current = select_face(per_frame[start], order, index, f"frame {start}", reference)
    track[start] = current
    embeddings = [current.embedding] if current.embedding is not None else []
    fixed_identity = reference if order == "most_similar" else None
    # Frames before the first detection are walked backwards from it, the rest forwards.
    for frames in (range(start + 1, len(per_frame)), range(start - 1, -1, -1)):
        last = current
        for t in frames:
            track_identity = np.mean(embeddings, axis=0) if embeddings else None
            if track_identity is not None:
                track_identity = track_identity / max(np.linalg.norm(track_identity), 1e-8)
            if fixed_identity is not None:
                # most_similar: who it is decides, wherever the face moved.
                scored = [(identity_similarity(face, fixed_identity), face) for face in per_frame[t]]
            else:
                scored = [(match_score(last, face, track_identity), face) for face in per_frame[t]]
            if not scored:
                continue
            best_score, best = max(scored, key=lambda pair: pair[0])
            # Without embeddings a lone face is taken even after a fast move; otherwise a face that is
            # neither where the track was nor who it is leaves the frame to interpolation.
            if best_score < TRACK_MIN_MATCH and (track_identity is not None or len(scored) > 1):
                continue
            track[t] = best
            last = best
            if best.embedding is not None and len(embeddings) < 32:
                embeddings.append(best.embedding)
    return track


def every_track(per_frame: Sequence[Sequence[DetectedFace]]) -> list[list[DetectedFace | None]]:
    """Every person of a video as a track, each face of each frame in exactly one track: a face joins
    the track it best continues (box overlap with the track's last face and ArcFace similarity to the
    track's person, at least ``TRACK_MIN_MATCH``), and starts a new track when it continues none."""
    tracks: list[list[DetectedFace | None]] = []
    last: list[DetectedFace] = []
    identities: list[list[np.ndarray]] = []
    for t, faces in enumerate(per_frame):
        scored = []
        for k, previous in enumerate(last):
            person = np.mean(identities[k], axis=0) if identities[k] else None
            if person is not None:
                person = person / max(np.linalg.norm(person), 1e-8)
            scored += [(match_score(previous, face, person), k, i) for i, face in enumerate(faces)]
        taken_tracks: set[int] = set()
        placed: set[int] = set()
        for score, k, i in sorted(scored, key=lambda entry: -entry[0]):
            if score < TRACK_MIN_MATCH or k in taken_tracks or i in placed:
                continue
            taken_tracks.add(k)
            placed.add(i)
            tracks[k][t] = last[k] = faces[i]
        for i, face in enumerate(faces):
            if i in placed:
                continue
            tracks.append([None] * len(per_frame))
            tracks[-1][t] = face
            last.append(face)
            identities.append([])
        for k in range(len(tracks)):
            face = tracks[k][t]
            if face is not None and face.embedding is not None and len(identities[k]) < 32:
                identities[k].append(face.embedding)
    return tracks
