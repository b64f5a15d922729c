"""Export Mesh: the files are read back with independent parsers (GLB chunks and accessors, OBJ lines)
and must hold the same geometry the renderer draws."""
import json
import struct

import numpy as np
import pytest
import torch
from packloader import load_pack, pack_import

pack = load_pack()
nodes_base = pack_import("nodes.base")
mesh_export = pack_import("pipelines.render.mesh_export")
coefficients = pack_import("pipelines.morphable.coefficients")
demo_model_module = pack_import("pipelines.morphable.demo_model")
FaceCoefficients = coefficients.FaceCoefficients

COMPONENTS = {"SCALAR": 1, "VEC3": 3}
DTYPES = {5126: np.float32, 5125: np.uint32}


def read_glb(path):
    """(document, {accessor index: array}) from a GLB file, checked against the container spec."""
    data = path.read_bytes()
    magic, version, length = struct.unpack_from("<III", data, 0)
    assert (magic, version, length) == (0x46546C67, 2, len(data))
    json_length, json_type = struct.unpack_from("<II", data, 12)
    assert json_type == 0x4E4F534A and json_length % 4 == 0
    document = json.loads(data[20:20 + json_length])
    bin_length, bin_type = struct.unpack_from("<II", data, 20 + json_length)
    assert bin_type == 0x004E4942 and bin_length == document["buffers"][0]["byteLength"]
    binary = data[28 + json_length:28 + json_length + bin_length]
    arrays = {}
    for index, accessor in enumerate(document["accessors"]):
        view = document["bufferViews"][accessor["bufferView"]]
        assert view["byteOffset"] % 4 == 0 and view["byteOffset"] + view["byteLength"] <= bin_length
        width = COMPONENTS[accessor["type"]]
        array = np.frombuffer(binary, DTYPES[accessor["componentType"]], accessor["count"] * width, view["byteOffset"])
        array = array.reshape(accessor["count"], width)
        if "min" in accessor:
            assert np.allclose(array.min(0), accessor["min"]) and np.allclose(array.max(0), accessor["max"])
        arrays[index] = array
    return document, arrays


def read_obj(path):
    vertices, normals, faces = [], [], []
    for line in path.read_text().splitlines():
        kind, *values = line.split()
        if kind == "v":
            vertices.append([float(v) for v in values])
        elif kind == "vn":
            normals.append([float(v) for v in values])
        elif kind == "f":
            corners = [corner.split("//") for corner in values]
            assert all(v == n for v, n in corners)
            faces.append([int(v) - 1 for v, _ in corners])
    return np.array(vertices), np.array(normals), np.array(faces)


@pytest.fixture(scope="module")
def model():
    return demo_model_module.demo_face_model()


def moving_sequence(model, frames=3):
    coeffs = FaceCoefficients.neutral(frames)
    coeffs.rotation[:, 1] = torch.linspace(0.0, 0.5, frames)
    coeffs.expression[:, model.expression_index("jaw_open")] = torch.linspace(0.0, 1.0, frames)
    coeffs.lighting[:, 1] = 0.3
    return coeffs


def test_glb_sequence_holds_every_frame_as_a_morph_target_played_in_order(model, tmp_path):
    coeffs = moving_sequence(model)
    meshes = mesh_export.face_meshes(model, coeffs)
    path = tmp_path / "face.glb"
    mesh_export.write_glb(path, meshes, fps=10.0)
    document, arrays = read_glb(path)
    primitive = document["meshes"][0]["primitives"][0]
    base = arrays[primitive["attributes"]["POSITION"]]
    posed = model.posed_vertices(coeffs).numpy()
    assert np.allclose(base, posed[0], atol=1e-6)
    triangles = arrays[primitive["indices"]].reshape(-1, 3)
    assert np.array_equal(triangles, model.triangles.numpy())
    assert len(primitive["targets"]) == 2
    for frame, target in enumerate(primitive["targets"], start=1):
        assert np.allclose(base + arrays[target["POSITION"]], posed[frame], atol=1e-5)
        normals = arrays[primitive["attributes"]["NORMAL"]] + arrays[target["NORMAL"]]
        assert np.allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-4)
    colours = arrays[primitive["attributes"]["COLOR_0"]]
    assert colours.min() >= 0 and colours.max() <= 1 and colours.std() > 0.01
    sampler = document["animations"][0]["samplers"][0]
    assert sampler["interpolation"] == "STEP"
    assert np.allclose(arrays[sampler["input"]].ravel(), [0.0, 0.1, 0.2])
    weights = arrays[sampler["output"]].reshape(3, 2)
    assert np.array_equal(weights, [[0, 0], [1, 0], [0, 1]])
    assert document["animations"][0]["channels"][0]["target"] == {"node": 0, "path": "weights"}


def test_single_frame_glb_has_no_animation_and_obj_matches_it(model, tmp_path):
    coeffs = moving_sequence(model, frames=1)
    meshes = mesh_export.face_meshes(model, coeffs, colours="albedo", posed=False)
    mesh_export.write_glb(tmp_path / "one.glb", meshes)
    mesh_export.write_obj(tmp_path / "one.obj", meshes)
    document, arrays = read_glb(tmp_path / "one.glb")
    assert "animations" not in document and "targets" not in document["meshes"][0]["primitives"][0]
    vertices, normals, faces = read_obj(tmp_path / "one.obj")
    unposed = model.shape(coeffs.identity, coeffs.expression, coeffs.gaze)[0].numpy()
    assert np.allclose(vertices[:, :3], unposed, atol=2e-6)
    albedo = model.albedo(coeffs.texture)[0].clamp(0, 1).numpy()
    assert np.allclose(vertices[:, 3:], albedo, atol=1e-4), "obj colours are the display values"
    glb_colours = arrays[document["meshes"][0]["primitives"][0]["attributes"]["COLOR_0"]]
    assert np.allclose(glb_colours, mesh_export.srgb_to_linear(albedo), atol=1e-5), "glb colours are linear"
    assert np.array_equal(faces, model.triangles.numpy()) and normals.shape == vertices[:, :3].shape
    # Outward normals: the face's front (nose tip, the largest z) points at the viewer.
    assert normals[vertices[:, 2].argmax(), 2] > 0.5


def test_lit_colours_follow_the_lighting(model):
    dark = moving_sequence(model, frames=1).replace(lighting=torch.full((1, 27), -0.4))
    bright = dark.replace(lighting=torch.zeros(1, 27))
    assert (mesh_export.face_meshes(model, dark).colours.mean()
            < mesh_export.face_meshes(model, bright).colours.mean() - 0.1)


def test_export_mesh_node_writes_into_the_output_folder_without_overwriting(host_dirs, model):
    node = pack.NODE_CLASS_MAPPINGS["TalkingFaceExportMesh"]()
    inputs = dict(face_model=model, coefficients=moving_sequence(model), colours="lit", posed=True, fps=25.0,
                  filename_prefix="meshes/face")
    first = node.execute(file_format="glb", **inputs)
    second = node.execute(file_format="glb", **inputs)
    assert first["result"] == ("meshes/face_00001_.glb",) and second["result"] == ("meshes/face_00002_.glb",)
    assert (host_dirs["output"] / first["result"][0]).is_file()
    objs = node.execute(file_format="obj", **inputs)
    folder = (host_dirs["output"] / objs["result"][0]).parent
    assert sorted(p.name for p in folder.iterdir()) == ["frame_00001.obj", "frame_00002.obj", "frame_00003.obj"]
    assert "3 obj file(s)" in objs["ui"]["text"][0]


def test_export_mesh_node_errors_name_the_node(host_dirs, model):
    node = pack.NODE_CLASS_MAPPINGS["TalkingFaceExportMesh"]()
    inputs = dict(face_model=model, file_format="glb", colours="lit", posed=True, fps=25.0)
    with pytest.raises(nodes_base.NodeInputError, match=r"^Export Mesh: the coefficient sequence has no frames"):
        node.execute(coefficients=FaceCoefficients.neutral(0), filename_prefix="x", **inputs)
    foreign = FaceCoefficients.neutral(1, coefficients.CoefficientDims(10, 10, 10))
    with pytest.raises(nodes_base.NodeInputError, match=r"^Export Mesh: .*use the same 3DMM"):
        node.execute(coefficients=foreign, filename_prefix="x", **inputs)
    with pytest.raises(nodes_base.NodeInputError, match=r"^Export Mesh: filename_prefix is empty"):
        node.execute(coefficients=FaceCoefficients.neutral(1), filename_prefix=" ", **inputs)
    with pytest.raises(nodes_base.NodeInputError, match=r"^Export Mesh: .*outside the output folder"):
        node.execute(coefficients=FaceCoefficients.neutral(1), filename_prefix="../escape", **inputs)


def test_chunked_meshes_equal_one_pass(model, monkeypatch):
    coeffs = moving_sequence(model, frames=5)
    whole = mesh_export.face_meshes(model, coeffs)
    monkeypatch.setattr(mesh_export, "MESH_CHUNK_FRAMES", 2)
    chunked = mesh_export.face_meshes(model, coeffs)
    for name in ("vertices", "normals", "colours"):
        assert np.allclose(getattr(whole, name), getattr(chunked, name), atol=1e-6), name
