"""Each node run the way ComfyUI runs it: the class instantiated, ``FUNCTION`` called with widget values."""
import shutil

import numpy as np
import pytest
import torch
from packloader import load_pack, pack_import

pack = load_pack()
nodes_base = pack_import("nodes.base")
coefficients = pack_import("pipelines.morphable.coefficients")
FaceCoefficients = coefficients.FaceCoefficients


def node(name):
    return pack.NODE_CLASS_MAPPINGS[f"TalkingFace{name}"]()


def call(name, **inputs):
    instance = node(name)
    return getattr(instance, instance.FUNCTION)(**inputs)


def demo_model():
    return call("Load3DMM", model_name="demo face (built-in)")[0]


def test_load_3dmm_lists_and_loads_files_from_the_model_folder(host_dirs):
    choices = node("Load3DMM").INPUT_TYPES()["required"]["model_name"][0]
    assert choices[0] == "demo face (built-in)"
    assert "BFM_model_front.mat" in choices
    model = call("Load3DMM", model_name="BFM_model_front.mat")[0]
    assert model.dims == coefficients.BFM_DIMS and model.num_vertices > 68


def test_load_3dmm_errors_name_the_node_the_file_and_the_folder(host_dirs):
    with pytest.raises(nodes_base.NodeInputError, match=r"^Load 3DMM: .*'missing.mat' not found.*ComfyUI/models/3dmm/"):
        call("Load3DMM", model_name="missing.mat")
    bad = host_dirs["models"] / "3dmm" / "bad.mat"
    from scipy.io import savemat

    savemat(str(bad), {"meanshape": np.zeros((1, 9))})
    try:
        with pytest.raises(nodes_base.NodeInputError, match=r"^Load 3DMM: bad.mat is not a 3DMM.*missing keys"):
            call("Load3DMM", model_name="bad.mat")
    finally:
        bad.unlink()


def test_render_outputs_comfyui_types_and_chunking_changes_nothing(host_dirs):
    model = demo_model()
    coeffs = FaceCoefficients.neutral(3)
    coeffs.rotation[1, 1] = 0.4
    coeffs.expression[2, model.expression_index("jaw_open")] = 1.0
    render, mask, normals, surface = call(
        "Render3DMMTarget", face_model=model, coefficients=coeffs, resolution=64, batch_size=3
    )
    assert render.shape == (3, 64, 64, 3) and mask.shape == (3, 64, 64)
    assert normals.shape == surface.shape == (3, 64, 64, 3)
    for image in (render, mask, normals, surface):
        assert image.dtype == torch.float32 and image.min() >= 0 and image.max() <= 1
    assert 0.15 < mask[0].mean() < 0.9, "the face should fill a good part of the frame"
    assert (render[:, :, :, :].sum(-1)[mask == 0] == 0).all(), "the background is black"
    assert not torch.equal(render[0], render[1]) and not torch.equal(render[0], render[2])
    chunked = call("Render3DMMTarget", face_model=model, coefficients=coeffs, resolution=64, batch_size=1)
    for whole, parts in zip((render, mask, normals, surface), chunked, strict=True):
        assert torch.allclose(whole, parts, atol=1e-5)


def test_render_refuses_coefficients_of_another_model_and_empty_sequences(host_dirs):
    model = demo_model()
    foreign = FaceCoefficients.neutral(1, coefficients.CoefficientDims(10, 10, 10))
    with pytest.raises(nodes_base.NodeInputError, match=r"^Render 3DMM Target: .*use the same 3DMM"):
        call("Render3DMMTarget", face_model=model, coefficients=foreign, resolution=64, batch_size=4)
    with pytest.raises(nodes_base.NodeInputError, match="has no frames"):
        call("Render3DMMTarget", face_model=model, coefficients=FaceCoefficients.neutral(0), resolution=64,
             batch_size=4)


def test_save_never_overwrites_and_load_reads_it_back(host_dirs):
    coeffs = FaceCoefficients.from_flat(torch.randn(4, 257))
    first = call("SaveCoefficients", coefficients=coeffs, filename_prefix="talk/seq")
    second = call("SaveCoefficients", coefficients=coeffs[:2], filename_prefix="talk/seq")
    saved = sorted((host_dirs["output"] / "talk").iterdir())
    assert [p.name for p in saved] == ["seq_00001_.safetensors", "seq_00002_.safetensors"]
    assert "4 frames" in first["ui"]["text"][0] and "seq_00002_" in second["ui"]["text"][0]

    shutil.copy(saved[0], host_dirs["input"] / "seq.safetensors")
    load = node("LoadCoefficients")
    assert "seq.safetensors" in load.INPUT_TYPES()["required"]["file"][0]
    assert load.VALIDATE_INPUTS(file="seq.safetensors") is True
    assert "file 'gone.safetensors' is not in ComfyUI/input/" in load.VALIDATE_INPUTS(file="gone.safetensors")
    loaded, frames = call("LoadCoefficients", file="seq.safetensors")
    assert frames == 4 and torch.equal(loaded.to_flat(), coeffs.to_flat())

    before = load.IS_CHANGED(file="seq.safetensors")
    shutil.copy(saved[1], host_dirs["input"] / "seq.safetensors")
    assert load.IS_CHANGED(file="seq.safetensors") != before


def test_save_refuses_prefixes_outside_the_output_folder(host_dirs):
    coeffs = FaceCoefficients.neutral(1)
    with pytest.raises(nodes_base.NodeInputError, match="outside the output folder"):
        call("SaveCoefficients", coefficients=coeffs, filename_prefix="../escape")
    with pytest.raises(nodes_base.NodeInputError, match="filename_prefix is empty"):
        call("SaveCoefficients", coefficients=coeffs, filename_prefix="  ")
    assert not any(host_dirs["output"].parent.glob("escape*"))


def test_load_coefficients_refuses_a_file_of_another_kind(host_dirs):
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(3)}, str(host_dirs["input"] / "lora.safetensors"))
    with pytest.raises(nodes_base.NodeInputError, match="^Load Coefficients: lora.safetensors is not a coefficient"):
        call("LoadCoefficients", file="lora.safetensors")
