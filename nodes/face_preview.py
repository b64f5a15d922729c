"""The face editor's data route: the geometry the browser needs to draw Edit Expression and Pose live.

``GET /talkingface/face_preview?model=<Load 3DMM choice>[&directions=<Apply Emotion choice>]``
answers one binary message:

    uint32 little-endian H | H bytes of JSON header (space padded to a multiple of 4) | arrays

The header names the model, its vertex and triangle counts, the slider names, the 68 landmark
vertex ids, the camera, and for each array its ``offset`` (bytes after the header), ``length``
(elements) and ``dtype``: ``mean_shape`` and ``albedo`` ``[N*3]`` float32, ``triangles`` ``[F*3]``
uint32, one ``[N*3]`` float32 offset per slider (``slider:<name>``) and, when ``directions`` is
given, one per MEAD emotion (``emotion:<name>``, listed in the header's ``emotions``). The browser
poses and shades the mesh itself, so moving a slider costs no server round trip
(``web/js/face_editor.js``).
"""
from __future__ import annotations

import json
import logging
import struct

import numpy as np

from ..pipelines.emotion.directions import emotion_vertex_offsets
from ..pipelines.emotion.emotion import MEAD_EMOTIONS
from ..pipelines.errors import TalkingFaceError
from ..pipelines.face.motion import SLIDERS, slider_offsets
from ..pipelines.morphable.camera import REFERENCE_DISTANCE, REFERENCE_FOCAL, REFERENCE_SIZE
from . import host
from .emotion import DIRECTION_TABLE_FOLDER, FACE_MODEL_DIRECTIONS, directions_for_choice
from .morphable import DEMO_MODEL_CHOICE, face_model_for_choice

ROUTE = "/talkingface/face_preview"
CACHED_MESSAGES = 4
_cache: dict[tuple, bytes] = {}


def _file_stamp(folder: str, choice: str | None, built_in: str) -> int:
    """Modification time of a chosen model file (0 for built-in choices), so a replaced file is re-read."""
    if choice is None or choice == built_in:
        return 0
    try:
        return host.model_path(folder, choice).stat().st_mtime_ns
    except (TalkingFaceError, OSError):
        return -1  # the loader below reports the missing file


def pack_arrays(header: dict, arrays: dict[str, np.ndarray]) -> bytes:
    """``header`` plus the arrays' locations, then the arrays, 4-byte aligned (see the module doc)."""
    blobs, locations, offset = [], {}, 0
    for name, array in arrays.items():
        data = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        locations[name] = {"offset": offset, "length": int(array.size), "dtype": str(array.dtype)}
        blobs.append(data)
        offset += len(data)  # float32 and uint32 keep every offset a multiple of 4
    text = json.dumps({**header, "arrays": locations}).encode("utf-8")
    text += b" " * ((-len(text)) % 4)
    return struct.pack("<I", len(text)) + text + b"".join(blobs)


def face_preview_message(model_name: str, directions: str | None = None) -> bytes:
    """The route's answer for one Load 3DMM choice (and Apply Emotion directions choice), built once
    per choice and process."""
    key = (model_name, _file_stamp("3dmm", model_name, DEMO_MODEL_CHOICE), directions,
           _file_stamp(DIRECTION_TABLE_FOLDER, directions, FACE_MODEL_DIRECTIONS))
    if key not in _cache:
        model = face_model_for_choice(model_name).cpu()
        arrays = {
            "mean_shape": model.mean_shape.numpy().astype(np.float32),
            "albedo": model.mean_albedo.clamp(0.0, 1.0).numpy().astype(np.float32),
            "triangles": model.triangles.numpy().astype(np.uint32),
        }
        for name, offsets in slider_offsets(model).items():
            arrays[f"slider:{name}"] = offsets.numpy().astype(np.float32)
        header = {
            "model": model_name,
            "vertices": model.num_vertices,
            "triangles": model.num_triangles,
            "sliders": list(SLIDERS),
            "emotions": [],
            "landmark_ids": model.landmark_ids.tolist(),
            "camera": {"focal": REFERENCE_FOCAL, "image_size": REFERENCE_SIZE, "distance": REFERENCE_DISTANCE},
        }
        if directions is not None:
            offsets = emotion_vertex_offsets(model, directions_for_choice(model, directions))
            for name, emotion_offsets in offsets.items():
                arrays[f"emotion:{name}"] = emotion_offsets.numpy().astype(np.float32)
            header["emotions"] = list(MEAD_EMOTIONS)
        while len(_cache) >= CACHED_MESSAGES:
            _cache.pop(next(iter(_cache)))
        _cache[key] = pack_arrays(header, arrays)
    return _cache[key]


async def face_preview_handler(request):
    from aiohttp import web

    model_name = request.query.get("model", "")
    if not model_name:
        return web.json_response({"error": "add ?model=<a Load 3DMM choice>"}, status=400)
    directions = request.query.get("directions")
    try:
        message = face_preview_message(model_name, directions)
    except TalkingFaceError as error:
        node = "Edit Expression and Pose" if directions is None else "Apply Emotion"
        return web.json_response({"error": f"{node} preview: {error}"}, status=404)
    return web.Response(body=message, content_type="application/octet-stream",
                        headers={"Cache-Control": "no-store"})


def register_routes() -> None:
    """Add the route to ComfyUI's server; a no-op outside ComfyUI (tests, scripts)."""
    try:
        from server import PromptServer
    except ImportError:
        return
    if getattr(PromptServer, "instance", None) is None:
        logging.warning("ComfyUI-TalkingFace: no PromptServer instance, the face editor preview is off")
        return
    PromptServer.instance.routes.get(ROUTE)(face_preview_handler)
