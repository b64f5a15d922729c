"""The BFM_model_front.mat loader: real file format, tiny arrays, every error a user can meet."""
import numpy as np
import pytest
import torch
from packloader import pack_import

model_module = pack_import("pipelines.morphable.model")
errors = pack_import("pipelines.errors")
coefficients = pack_import("pipelines.morphable.coefficients")


def tiny_bfm_arrays(vertices: int = 120, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    n3 = vertices * 3
    return {
        "meanshape": rng.normal(size=(1, n3)).astype(np.float32),
        "idBase": rng.normal(size=(n3, 80)).astype(np.float32) * 0.01,
        "exBase": rng.normal(size=(n3, 64)).astype(np.float32) * 0.01,
        "meantex": rng.uniform(50, 200, size=(1, n3)).astype(np.float32),
        "texBase": rng.normal(size=(n3, 80)).astype(np.float32),
        "tri": rng.integers(1, vertices + 1, size=(200, 3)).astype(np.int32),
        "point_buf": rng.integers(1, 201, size=(vertices, 8)).astype(np.int32),
        "keypoints": (np.arange(68) + 1).reshape(1, 68).astype(np.float64),
    }


def write_mat(path, arrays):
    from scipy.io import savemat

    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(str(path), arrays)
    return path


def test_loads_the_bfm_layout_with_the_real_reader(tmp_path):
    arrays = tiny_bfm_arrays()
    model = model_module.load_face_model(write_mat(tmp_path / "BFM_model_front.mat", arrays))
    assert model.num_vertices == 120 and model.num_triangles == 200
    assert model.dims == coefficients.CoefficientDims(80, 64, 80)
    assert torch.equal(model.landmark_ids, torch.arange(68))
    assert model.triangles.min() >= 0 and model.triangles.max() < 120
    mean = arrays["meanshape"].reshape(-1, 3)
    assert torch.allclose(model.mean_shape, torch.from_numpy(mean - mean.mean(0)), atol=1e-6)
    assert torch.allclose(model.mean_albedo, torch.from_numpy(arrays["meantex"].reshape(-1, 3) / 255.0))
    # identity coefficient k adds column k of idBase, vertex-major x, y, z
    identity = torch.zeros(1, 80)
    identity[0, 5] = 1.0
    shape = model.shape(identity, torch.zeros(1, 64))
    expected = model.mean_shape + torch.from_numpy(arrays["idBase"][:, 5].reshape(-1, 3))
    assert torch.allclose(shape[0], expected, atol=1e-6)
    assert model.surface_coords.min() >= 0 and model.surface_coords.max() <= 1


def test_a_sadtalker_bfm_fitting_folder_is_found(tmp_path):
    write_mat(tmp_path / "BFM_Fitting" / "BFM_model_front.mat", tiny_bfm_arrays())
    assert model_module.load_face_model(tmp_path).num_vertices == 120
    assert model_module.load_face_model(tmp_path / "BFM_Fitting").num_vertices == 120


def test_missing_file_names_the_folder(tmp_path):
    with pytest.raises(errors.ModelFileError, match="ComfyUI/models/3dmm/"):
        model_module.load_face_model(tmp_path / "BFM_model_front.mat")
    with pytest.raises(errors.ModelFileError, match="no BFM_model_front.mat in the folder"):
        model_module.load_face_model(tmp_path)


def test_a_file_that_is_not_a_mat_file(tmp_path):
    path = tmp_path / "notes.mat"
    path.write_text("this is not matlab")
    with pytest.raises(errors.ModelFileError, match="not a readable MATLAB .mat file"):
        model_module.load_face_model(path)


def test_missing_keys_are_listed_and_the_original_bfm09_is_recognised(tmp_path):
    arrays = tiny_bfm_arrays()
    del arrays["exBase"], arrays["keypoints"]
    with pytest.raises(errors.ModelFileError, match=r"missing keys \['exBase', 'keypoints'\]"):
        model_module.load_face_model(write_mat(tmp_path / "a.mat", arrays))
    original = {"shapeMU": np.zeros((3, 1)), "shapePC": np.zeros((3, 1))}
    with pytest.raises(errors.ModelFileError, match="original BFM09 file"):
        model_module.load_face_model(write_mat(tmp_path / "01_MorphableModel.mat", original))


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("idBase", np.zeros((30, 80), np.float32), r"'idBase' must be 360 × k, got \(30, 80\)"),
        ("meantex", np.zeros((1, 9), np.float32), "'meantex' must be 1 × 360"),
        ("tri", np.zeros((5, 4), np.int32), "'tri' must be F × 3"),
        ("tri", np.full((5, 3), 121, np.int32), r"1-based vertex ids in 1..120, found 121..121"),
        ("keypoints", np.arange(1, 6).reshape(1, 5), "'keypoints' must hold 68 vertex ids, got 5"),
        ("meanshape", np.zeros((2, 7), np.float32), "'meanshape' must be 1 × 3N"),
    ],
)
def test_wrong_shapes_name_the_key_and_the_expected_shape(tmp_path, key, value, message):
    arrays = tiny_bfm_arrays()
    arrays[key] = value
    with pytest.raises(errors.ModelFileError, match=message):
        model_module.load_face_model(write_mat(tmp_path / "bad.mat", arrays))


def test_saving_refuses_invalid_arrays_and_round_trips_names(tmp_path):
    arrays = tiny_bfm_arrays()
    arrays["exNames"] = np.array([f"direction_{k}" for k in range(64)], dtype=object)
    path = tmp_path / "named.mat"
    model_module.save_face_model_mat(arrays, path)
    model = model_module.load_face_model(path)
    assert model.expression_names[:2] == ["direction_0", "direction_1"]
    assert model.expression_index("direction_3") == 3
    del arrays["tri"]
    with pytest.raises(errors.ModelFileError):
        model_module.save_face_model_mat(arrays, tmp_path / "never.mat")
    assert not (tmp_path / "never.mat").exists()


def test_rotation_convention_is_rz_ry_rx():
    angles = torch.tensor([[0.3, -0.2, 0.5]])
    x, y, z = angles[0]
    rx = torch.tensor([[1, 0, 0], [0, x.cos(), -x.sin()], [0, x.sin(), x.cos()]])
    ry = torch.tensor([[y.cos(), 0, y.sin()], [0, 1, 0], [-y.sin(), 0, y.cos()]])
    rz = torch.tensor([[z.cos(), -z.sin(), 0], [z.sin(), z.cos(), 0], [0, 0, 1]])
    assert torch.allclose(model_module.rotation_matrices(angles)[0], rz @ ry @ rx, atol=1e-6)


def test_coefficients_of_another_model_are_refused(tmp_path):
    model = model_module.load_face_model(write_mat(tmp_path / "m.mat", tiny_bfm_arrays()))
    other = coefficients.FaceCoefficients.neutral(1, coefficients.CoefficientDims(10, 10, 10))
    with pytest.raises(errors.ModelFileError, match="use the same 3DMM"):
        model.check_coefficients(other)
