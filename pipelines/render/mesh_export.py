"""Coefficient sequences to 3D files: Wavefront OBJ with vertex colours and binary glTF (GLB).

A GLB of several frames holds one mesh whose base shape is the first frame and whose morph
targets are the other frames (position and normal offsets), animated one frame after another at
the sequence's frame rate: Blender imports it as shape keys, three.js (ComfyUI's Load3D and
Preview3D) plays it. Coordinates are the 3DMM's: x to the subject's left, y up, z towards the
viewer, which is glTF's convention too; units are the model's (about decimetres).
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import TalkingFaceError
from ..morphable.coefficients import FaceCoefficients
from ..morphable.model import MorphableModel
from ..video import frame_chunks
from .shading import shade

COLOUR_MODES = ("lit", "albedo")
GLB_MAGIC, GLB_VERSION = 0x46546C67, 2
JSON_CHUNK, BIN_CHUNK = 0x4E4F534A, 0x004E4942
FLOAT, UNSIGNED_INT = 5126, 5125
ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER = 34962, 34963
MESH_CHUNK_FRAMES = 32


@dataclass
class FaceMeshes:
    """One triangle mesh per frame, as numpy arrays ready to write."""

    vertices: np.ndarray  # [T, N, 3] float32
    normals: np.ndarray  # [T, N, 3] float32, unit
    colours: np.ndarray  # [T, N, 3] float32, display (sRGB) values in 0..1
    triangles: np.ndarray  # [F, 3] uint32, 0-based, counter-clockwise seen from outside

    @property
    def frames(self) -> int:
        return self.vertices.shape[0]


def face_meshes(
    model: MorphableModel, coeffs: FaceCoefficients, colours: str = "lit", posed: bool = True
) -> FaceMeshes:
    """The 3DMM's mesh for every frame: ``posed`` applies head rotation and translation, else the
    face looks straight ahead at the origin; ``colours`` is "lit" (albedo under the frame's SH
    lighting, as Render 3DMM Target shades it) or "albedo" (unlit skin colour)."""
    if colours not in COLOUR_MODES:
        raise TalkingFaceError(f"colours must be one of {COLOUR_MODES}, got '{colours}'")
    if coeffs.frames == 0:
        raise TalkingFaceError("the coefficient sequence has no frames")
    model.check_coefficients(coeffs)
    reference = model.mean_shape
    shape = (coeffs.frames, model.num_vertices, 3)
    meshes = FaceMeshes(
        vertices=np.empty(shape, np.float32), normals=np.empty(shape, np.float32), colours=np.empty(shape, np.float32),
        triangles=model.triangles.cpu().numpy().astype(np.uint32),
    )
    # Chunks bound the working memory; the arrays themselves are the file's content.
    for chunk in frame_chunks(coeffs.frames, MESH_CHUNK_FRAMES):
        part = coeffs[chunk].to(device=reference.device, dtype=reference.dtype)
        with torch.no_grad():
            vertices = model.shape(part.identity, part.expression, part.gaze)
            if posed:
                vertices = model.pose(vertices, part.rotation, part.translation)
            normals = model.vertex_normals(vertices)
            albedo = model.albedo(part.texture)
            colour = shade(albedo, normals, part.lighting) if colours == "lit" else albedo
        meshes.vertices[chunk] = vertices.float().cpu().numpy()
        meshes.normals[chunk] = normals.float().cpu().numpy()
        meshes.colours[chunk] = colour.clamp(0.0, 1.0).float().cpu().numpy()
    return meshes


def write_obj(path: str | Path, meshes: FaceMeshes, frame: int = 0) -> None:
    """One frame as OBJ: ``v x y z r g b`` (the vertex-colour extension Blender, MeshLab and
    three.js read), ``vn`` normals and 1-based ``f v//vn`` faces."""
    vertex_rows = np.concatenate([meshes.vertices[frame], meshes.colours[frame]], axis=1)
    face_rows = np.repeat(meshes.triangles.astype(np.int64) + 1, 2, axis=1)
    with open(path, "w", encoding="ascii", newline="\n") as handle:
        handle.write("# ComfyUI-TalkingFace 3DMM mesh\n")
        np.savetxt(handle, vertex_rows, fmt="v %.6f %.6f %.6f %.4f %.4f %.4f")
        np.savetxt(handle, meshes.normals[frame], fmt="vn %.5f %.5f %.5f")
        np.savetxt(handle, face_rows, fmt="f %d//%d %d//%d %d//%d")


def srgb_to_linear(values: np.ndarray) -> np.ndarray:
    """glTF stores linear vertex colours; our albedo is display (sRGB) values."""
    return np.where(values <= 0.04045, values / 12.92, ((values + 0.055) / 1.055) ** 2.4).astype(np.float32)


class _GlbBuilder:
    """Accumulates buffer views and accessors of one binary chunk."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.offset = 0
        self.views: list[dict] = []
        self.accessors: list[dict] = []

    def add(self, array: np.ndarray, kind: str, target: int | None = None, bounds: bool = False) -> int:
        data = np.ascontiguousarray(array).tobytes()
        view = {"buffer": 0, "byteOffset": self.offset, "byteLength": len(data)}
        if target is not None:
            view["target"] = target
        self.views.append(view)
        padding = (-len(data)) % 4
        self.chunks.append(data + b"\0" * padding)
        self.offset += len(data) + padding
        accessor = {
            "bufferView": len(self.views) - 1,
            "componentType": UNSIGNED_INT if array.dtype == np.uint32 else FLOAT,
            "count": int(array.shape[0]),
            "type": kind,
        }
        if bounds:
            columns = array.reshape(array.shape[0], -1)
            accessor["min"] = columns.min(0).tolist()
            accessor["max"] = columns.max(0).tolist()
        self.accessors.append(accessor)
        return len(self.accessors) - 1


def write_glb(path: str | Path, meshes: FaceMeshes, fps: float = 25.0) -> None:
    """All frames as one GLB: frame 0 is the mesh, later frames are morph targets played at ``fps``.
    Vertex colours are the first frame's."""
    if fps <= 0:
        raise TalkingFaceError(f"fps must be positive, got {fps}")
    builder = _GlbBuilder()
    base_positions, base_normals = meshes.vertices[0], meshes.normals[0]
    attributes = {
        "POSITION": builder.add(base_positions, "VEC3", ARRAY_BUFFER, bounds=True),
        "NORMAL": builder.add(base_normals, "VEC3", ARRAY_BUFFER),
        "COLOR_0": builder.add(srgb_to_linear(meshes.colours[0]), "VEC3", ARRAY_BUFFER),
    }
    primitive: dict = {
        "attributes": attributes,
        "indices": builder.add(meshes.triangles.reshape(-1), "SCALAR", ELEMENT_ARRAY_BUFFER, bounds=True),
        "mode": 4,
        "material": 0,
    }
    mesh: dict = {"name": "face", "primitives": [primitive]}
    document: dict = {
        "asset": {"version": "2.0", "generator": "ComfyUI-TalkingFace"},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"name": "face", "mesh": 0}],
        "meshes": [mesh],
        # Lighting is baked into the vertex colours: a rough, non-metallic white lets them show.
        "materials": [{"name": "vertex colours", "pbrMetallicRoughness": {
            "baseColorFactor": [1.0, 1.0, 1.0, 1.0], "metallicFactor": 0.0, "roughnessFactor": 1.0}}],
    }
    targets = meshes.frames - 1
    if targets:
        primitive["targets"] = [
            {"POSITION": builder.add(meshes.vertices[k] - base_positions, "VEC3", ARRAY_BUFFER, bounds=True),
             "NORMAL": builder.add(meshes.normals[k] - base_normals, "VEC3", ARRAY_BUFFER)}
            for k in range(1, meshes.frames)
        ]
        mesh["weights"] = [0.0] * targets
        mesh["extras"] = {"targetNames": [f"frame_{k:05d}" for k in range(1, meshes.frames)]}
        times = np.arange(meshes.frames, dtype=np.float32) / np.float32(fps)
        # Step keys: at frame k exactly target k-1 is on (frame 0 is the base, all off).
        weights = np.zeros((meshes.frames, targets), dtype=np.float32)
        weights[np.arange(1, meshes.frames), np.arange(targets)] = 1.0
        document["animations"] = [{
            "name": "frames",
            "samplers": [{"input": builder.add(times, "SCALAR", bounds=True),
                          "output": builder.add(weights.reshape(-1), "SCALAR"),
                          "interpolation": "STEP"}],
            "channels": [{"sampler": 0, "target": {"node": 0, "path": "weights"}}],
        }]
    binary = b"".join(builder.chunks)
    document["buffers"] = [{"byteLength": len(binary)}]
    document["bufferViews"] = builder.views
    document["accessors"] = builder.accessors
    text = json.dumps(document, separators=(",", ":")).encode("utf-8")
    text += b" " * ((-len(text)) % 4)
    total = 12 + 8 + len(text) + 8 + len(binary)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<III", GLB_MAGIC, GLB_VERSION, total))
        handle.write(struct.pack("<II", len(text), JSON_CHUNK) + text)
        handle.write(struct.pack("<II", len(binary), BIN_CHUNK) + binary)
