"""The face editor's route: its binary message decodes to the model the node edits, and the slider
offsets it sends move the mesh exactly as Edit Expression and Pose moves the coefficients."""
import asyncio
import json
import struct

import numpy as np
import pytest
import torch
from packloader import load_pack, pack_import

pack = load_pack()
face_preview = pack_import("nodes.face_preview")
morphable_nodes = pack_import("nodes.morphable")
motion = pack_import("pipelines.face.motion")
FaceCoefficients = pack_import("pipelines.morphable.coefficients").FaceCoefficients
DEMO = morphable_nodes.DEMO_MODEL_CHOICE


def decode(message: bytes):
    (length,) = struct.unpack_from("<I", message)
    assert length % 4 == 0
    header = json.loads(message[4:4 + length])
    arrays = {
        name: np.frombuffer(message, np.dtype(spec["dtype"]).newbyteorder("<"), spec["length"], 4 + length + spec["offset"])
        for name, spec in header["arrays"].items()
    }
    return header, arrays


@pytest.mark.parametrize("choice", [DEMO, "BFM_Fitting/BFM_model_front.mat"])
def test_message_carries_the_model_and_slider_offsets_that_match_the_node(host_dirs, choice):
    model = morphable_nodes.face_model_for_choice(choice)
    header, arrays = decode(face_preview.face_preview_message(choice))
    assert header["vertices"] == model.num_vertices and header["triangles"] == model.num_triangles
    assert header["landmark_ids"] == model.landmark_ids.tolist() and header["sliders"] == list(motion.SLIDERS)
    assert np.array_equal(arrays["mean_shape"].reshape(-1, 3), model.mean_shape.numpy())
    assert np.array_equal(arrays["triangles"].reshape(-1, 3), model.triangles.numpy())
    amounts = {"jaw_open": 0.8, "smile": -0.5, "brow_raise": 1.5, "blink": 0.3}
    edited = motion.edit_coefficients(model, FaceCoefficients.neutral(1, model.dims), sliders=amounts)
    expected = model.shape(edited.identity, edited.expression)[0].numpy()
    composed = arrays["mean_shape"] + sum(amount * arrays[f"slider:{name}"] for name, amount in amounts.items())
    assert np.allclose(composed.reshape(-1, 3), expected, atol=1e-5)
    assert all(np.abs(arrays[f"slider:{name}"]).max() > 0 for name in motion.SLIDERS)


def test_route_answers_bytes_and_names_a_missing_model(host_dirs):
    web = pytest.importorskip("aiohttp.web")
    from aiohttp.test_utils import TestClient, TestServer

    async def exchange():
        app = web.Application()
        app.router.add_get(face_preview.ROUTE, face_preview.face_preview_handler)
        async with TestClient(TestServer(app)) as client:
            good = await client.get(face_preview.ROUTE, params={"model": DEMO})
            missing = await client.get(face_preview.ROUTE, params={"model": "nowhere.mat"})
            empty = await client.get(face_preview.ROUTE)
            return (good.status, await good.read()), (missing.status, await missing.json()), empty.status

    (status, body), (missing_status, missing), empty_status = asyncio.run(exchange())
    assert status == 200 and decode(body)[0]["model"] == DEMO
    assert missing_status == 404 and "nowhere.mat" in missing["error"] and "ComfyUI/models/3dmm/" in missing["error"]
    assert empty_status == 400


def test_slider_offsets_are_linear_in_the_expression_basis():
    model = pack_import("pipelines.morphable.demo_model").demo_face_model()
    offsets = motion.slider_offsets(model)
    direction = motion.expression_direction(model, "smile")
    shape = model.shape(torch.zeros(1, model.dims.identity), direction.unsqueeze(0))[0]
    assert torch.allclose(model.mean_shape + offsets["smile"], shape, atol=1e-6)


def test_emotion_offsets_move_the_mesh_as_apply_emotion_moves_the_coefficients(host_dirs):
    emotion_nodes = pack_import("nodes.emotion")
    emotion_module = pack_import("pipelines.emotion.emotion")
    header, arrays = decode(face_preview.face_preview_message(DEMO, emotion_nodes.FACE_MODEL_DIRECTIONS))
    assert header["emotions"] == list(emotion_module.MEAD_EMOTIONS)
    model = morphable_nodes.face_model_for_choice(DEMO)
    weights = torch.tensor([0.1, 0.0, 0.0, 0.0, 0.2, 0.6, 0.1, 0.0])
    emotion = emotion_module.TextEmotion(torch.zeros(4), weights, 1.5, "mostly happy", "test")
    output = emotion_nodes.ApplyEmotion().execute(coefficients=FaceCoefficients.neutral(1), emotion=emotion,
                                                  face_model=model, directions=emotion_nodes.FACE_MODEL_DIRECTIONS,
                                                  ramp_in_frames=0)
    (edited,) = output["result"]
    (shown,) = output["ui"]["talkingface_emotion"]
    expected = model.shape(edited.identity, edited.expression)[0].numpy()
    composed = arrays["mean_shape"] + sum(shown["intensity"] * weight * arrays[f"emotion:{name}"]
                                          for name, weight in zip(header["emotions"], shown["weights"], strict=True))
    assert np.allclose(composed.reshape(-1, 3), expected, atol=1e-5)
    assert not np.abs(arrays["emotion:neutral"]).any() and np.abs(arrays["emotion:happy"]).max() > 0


def test_emotion_preview_without_directions_for_the_model_says_how_to_get_them(host_dirs, monkeypatch):
    emotion_nodes = pack_import("nodes.emotion")
    model_module = pack_import("pipelines.morphable.model")
    arrays = pack_import("pipelines.morphable.demo_model").build_demo_face_arrays(resolution=12)
    del arrays["exNames"]
    unnamed = model_module.MorphableModel.from_mat_arrays(arrays, name="BFM_model_front")
    monkeypatch.setattr(face_preview, "face_model_for_choice", lambda choice: unnamed)
    with pytest.raises(pack_import("pipelines.errors").TalkingFaceError, match="fit_emotion_directions"):
        face_preview.face_preview_message("unnamed.mat", emotion_nodes.FACE_MODEL_DIRECTIONS)


def test_a_replaced_model_file_is_read_again(host_dirs, tmp_path, monkeypatch):
    import os
    import shutil

    source = host_dirs["models"] / "3dmm" / "BFM_Fitting" / "BFM_model_front.mat"
    folder = tmp_path / "models"
    shutil.copytree(host_dirs["models"], folder)
    monkeypatch.setenv("TALKINGFACE_MODELS_DIR", str(folder))
    choice = "BFM_Fitting/BFM_model_front.mat"
    first = face_preview.face_preview_message(choice)
    assert face_preview.face_preview_message(choice) is first, "unchanged files are served from the cache"
    target = folder / "3dmm" / choice
    target.write_bytes(source.read_bytes())
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 10**9))
    assert face_preview.face_preview_message(choice) is not first
