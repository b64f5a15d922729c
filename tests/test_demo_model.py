"""The procedural demo face: a closed head in the BFM_model_front.mat layout whose landmarks sit where
iBUG puts them and whose named expressions, gaze and bases move the face the way their names say."""
import numpy as np
import pytest
import torch
from packloader import pack_import
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

demo = pack_import("pipelines.morphable.demo_model")
demo_geometry = pack_import("pipelines.morphable.demo_model.geometry")
demo_identity = pack_import("pipelines.morphable.demo_model.identity")
demo_mesh = pack_import("pipelines.morphable.demo_model.mesh")
model_module = pack_import("pipelines.morphable.model")
coefficients = pack_import("pipelines.morphable.coefficients")
camera_module = pack_import("pipelines.morphable.camera")
errors = pack_import("pipelines.errors")

BFM_VERTICES, BFM_TRIANGLES = 35709, 70789
RIGHT_EYE, LEFT_EYE = list(range(36, 42)), list(range(42, 48))
OUTER_LIPS, UPPER_INNER_LIP, LOWER_INNER_LIP = list(range(48, 60)), [61, 62, 63], [65, 66, 67]


@pytest.fixture(scope="module")
def arrays():
    return demo.build_demo_face_arrays()


@pytest.fixture(scope="module")
def model():
    return demo.demo_face_model()


def expression(model, frames=1, **weights):
    values = torch.zeros(frames, model.dims.expression)
    for name, weight in weights.items():
        values[:, model.expression_index(name)] = weight
    return values


def shape(model, identity=None, gaze=None, **weights):
    identity = torch.zeros(1, model.dims.identity) if identity is None else identity
    return model.shape(identity, expression(model, identity.shape[0], **weights), gaze)


def landmarks(model, **weights):
    return shape(model, **weights)[0, model.landmark_ids]


def closed_surface_report(triangles: np.ndarray, vertex_count: int):
    """(every edge in exactly two triangles, every directed edge once, component label per vertex)."""
    directed = np.concatenate([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]])
    _, edge_uses = np.unique(np.sort(directed, axis=1), axis=0, return_counts=True)
    _, directed_uses = np.unique(directed, axis=0, return_counts=True)
    graph = coo_matrix((np.ones(len(directed)), (directed[:, 0], directed[:, 1])), shape=(vertex_count, vertex_count))
    return (edge_uses == 2).all(), (directed_uses == 1).all(), connected_components(graph, directed=False)[1]


def signed_volumes(vertices: np.ndarray, triangles: np.ndarray, labels: np.ndarray) -> np.ndarray:
    a, b, c = (vertices[triangles[:, k]] for k in range(3))
    per_triangle = np.einsum("ij,ij->i", a, np.cross(b, c)) / 6.0
    return np.bincount(labels[triangles[:, 0]], weights=per_triangle)


# ---- file layout -------------------------------------------------------------------------------
def test_arrays_have_the_bfm_layout(arrays):
    n3 = arrays["meanshape"].size
    n = n3 // 3
    assert 5000 <= n <= 10000, "the default model is small enough for CPU tests and training"
    assert arrays["meanshape"].shape == (1, n3) and arrays["meanshape"].dtype == np.float32
    assert arrays["idBase"].shape == (n3, 80) and arrays["exBase"].shape == (n3, 64)
    assert arrays["texBase"].shape == (n3, 80) and arrays["meantex"].shape == (1, n3)
    for key in ("meanshape", "idBase", "exBase", "meantex", "texBase"):
        assert arrays[key].dtype == np.float32 and np.isfinite(arrays[key]).all(), key
    assert 0 <= arrays["meantex"].min() and arrays["meantex"].max() <= 255
    tri = arrays["tri"]
    assert tri.ndim == 2 and tri.shape[1] == 3 and np.issubdtype(tri.dtype, np.integer)
    assert tri.min() == 1 and tri.max() == n, "1-based vertex ids, every vertex used"
    keypoints = arrays["keypoints"]
    assert keypoints.shape == (1, 68) and keypoints.min() >= 1 and keypoints.max() <= n
    assert len(np.unique(keypoints)) == 68
    names = [str(name) for name in arrays["exNames"]]
    assert arrays["exNames"].dtype == object and len(names) == 64 and len(set(names)) == 64
    assert names[:6] == ["jaw_open", "smile", "lip_pucker", "brow_raise", "blink_left", "blink_right"]
    left, right = arrays["eyeballLeft"].reshape(-1), arrays["eyeballRight"].reshape(-1)
    assert left.size == right.size > 50 and not set(left) & set(right)
    assert not set(keypoints.reshape(-1)) & (set(left) | set(right)), "landmarks are on the skin"
    model_module.validate_mat_arrays(arrays, "demo")


def test_point_buf_lists_each_vertexs_triangles_like_bfm(arrays):
    tri, buffer = arrays["tri"] - 1, arrays["point_buf"]
    assert buffer.shape == (arrays["meanshape"].size // 3, 8) and buffer.min() >= 0 and buffer.max() <= len(tri)
    rows, slots = np.nonzero(buffer)
    assert (tri[buffer[rows, slots] - 1] == rows[:, None]).any(axis=1).all(), "every listed triangle has the vertex"
    uses = np.bincount(tri.reshape(-1), minlength=buffer.shape[0])
    assert ((buffer > 0).sum(1) == np.minimum(uses, 8)).all(), "all of them, up to eight, padded with 0"


def test_save_and_reload_gives_the_same_model(arrays, model, tmp_path):
    path = tmp_path / "3dmm" / "BFM_model_front.mat"
    path.parent.mkdir()
    model_module.save_face_model_mat(arrays, path)
    loaded = model_module.load_face_model(tmp_path / "3dmm")
    assert loaded.expression_names == model.expression_names == list(demo.EXPRESSION_NAMES)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert loaded.has_eyeballs


def test_builds_are_deterministic_fresh_and_cached(arrays, model):
    again = demo.build_demo_face_arrays()
    assert all(np.array_equal(arrays[key], again[key]) for key in arrays if key != "exNames")
    again["meanshape"][0, 0] += 1.0
    assert demo.build_demo_face_arrays()["meanshape"][0, 0] == arrays["meanshape"][0, 0], "callers get copies"
    other = demo.demo_face_model()
    assert other is not model and torch.equal(other.mean_shape, model.mean_shape)
    reseeded = demo.build_demo_face_arrays(seed=1)
    named = len(demo_identity.IDENTITY_SHAPES)
    assert np.array_equal(reseeded["idBase"][:, :named], arrays["idBase"][:, :named])
    assert not np.array_equal(reseeded["idBase"][:, named:], arrays["idBase"][:, named:])
    assert np.array_equal(reseeded["meanshape"], arrays["meanshape"]) and np.array_equal(reseeded["tri"], arrays["tri"])


@pytest.mark.parametrize("resolution", [0, 7, 12.5, "32", True])
def test_bad_resolutions_are_refused(resolution):
    with pytest.raises(errors.TalkingFaceError, match="resolution"):
        demo.build_demo_face_arrays(resolution=resolution)


# ---- mesh ------------------------------------------------------------------------------------
@pytest.mark.parametrize("resolution", [demo_mesh.MIN_RESOLUTION, 12, demo.DEFAULT_RESOLUTION])
def test_head_and_eyeballs_are_closed_and_face_outwards(resolution):
    arrays = demo.build_demo_face_arrays(resolution=resolution)
    vertices, tri = arrays["meanshape"].reshape(-1, 3).astype(np.float64), arrays["tri"] - 1
    every_edge_twice, consistent_winding, labels = closed_surface_report(tri, len(vertices))
    assert every_edge_twice and consistent_winding
    assert labels.max() == 2, "three closed surfaces: the head and two eyeballs"
    eyes = {labels[arrays["eyeballLeft"][0, 0] - 1], labels[arrays["eyeballRight"][0, 0] - 1]}
    assert len(eyes) == 2 and np.isin(labels[arrays["eyeballLeft"] - 1], list(eyes)).all()
    volumes = signed_volumes(vertices, tri, labels)
    assert (volumes > 0).all(), "counter-clockwise seen from outside"
    eyeball_volume = 4.0 / 3.0 * np.pi * demo_geometry.EYEBALL_RADIUS**3
    assert volumes[list(eyes)] == pytest.approx(eyeball_volume, rel=0.25), "a polygon sphere, coarse at low resolution"
    assert 2.0 < volumes.max() < 5.0, "a head-sized volume in cubic decimetres"


def test_normals_point_out_of_the_face(model):
    normals = model.vertex_normals(model.mean_shape[None])[0]
    assert normals[model.landmark_ids[30], 2] > 0.9, "the nose tip faces the camera"
    assert normals[model.landmark_ids[8], 1] < -0.3, "the chin faces down"
    top = model.mean_shape[:, 1].argmax()
    assert normals[top, 1] > 0.9, "the crown faces up"


def test_bfm_size_resolution_gives_the_bfm_vertex_and_triangle_counts():
    arrays = demo.build_demo_face_arrays(resolution=demo.BFM_SIZE_RESOLUTION)
    assert arrays["meanshape"].size // 3 == pytest.approx(BFM_VERTICES, rel=0.01)
    assert len(arrays["tri"]) == pytest.approx(BFM_TRIANGLES, rel=0.02)
    assert len(np.unique(arrays["keypoints"])) == 68


def test_head_has_human_proportions(model):
    vertices = model.mean_shape
    skin = torch.ones(model.num_vertices, dtype=torch.bool)
    skin[model.eyeball_left] = skin[model.eyeball_right] = False
    head_width = vertices[skin, 0].max() - vertices[skin, 0].min()
    crown_to_chin = vertices[:, 1].max() - vertices[model.landmark_ids[8], 1]
    face_width = vertices[model.landmark_ids[16], 0] - vertices[model.landmark_ids[0], 0]
    assert 1.4 < head_width < 1.9 and 2.0 < crown_to_chin < 2.4 and 1.2 < face_width < 1.6


# ---- landmarks --------------------------------------------------------------------------------
def test_landmarks_project_in_ibug_order_and_fill_the_middle_of_the_frame(model):
    camera = camera_module.PerspectiveCamera.deep3d(224)
    points = camera.project(model.posed_vertices(coefficients.FaceCoefficients.neutral(1))[0, model.landmark_ids])
    u, v = points[:, 0], points[:, 1]  # v grows downwards
    assert ((points > 0) & (points < 224)).all()
    width, height = u.max() - u.min(), v.max() - v.min()
    assert 0.5 * 224 < width < 0.8 * 224 and 0.5 * 224 < height < 0.8 * 224, "like a BFM render"
    assert abs((u.max() + u.min()) / 2 - 112) < 10 and abs((v.max() + v.min()) / 2 - 112) < 25
    assert (u[1:9] > u[:8]).all() and (u[9:17] > u[8:16]).all(), "jaw contour from image left to right"
    assert (v[1:9] > v[:8]).all() and (v[9:17] < v[8:16]).all() and v[8] == v.max(), "down to the chin, up again"
    for brow in (slice(17, 22), slice(22, 27)):
        assert (u[brow][1:] > u[brow][:-1]).all()
    assert (v[28:31] > v[27:30]).all() and (abs(u[27:31] - 112) < 2).all(), "nose bridge down the middle"
    assert (u[32:36] > u[31:35]).all() and v[31:36].min() > v[30] - 3
    assert u[RIGHT_EYE].max() < 112 < u[LEFT_EYE].min(), "the subject's right eye on the image left"
    assert v[17:27].mean() < v[36:48].mean() < v[30] < v[48:68].mean() < v[8], "brows, eyes, nose, mouth, chin"
    assert u[36] < u[39] < u[42] < u[45] and u[48] < u[51] < u[54] and u[60] < u[62] < u[64]
    for eye in (RIGHT_EYE, LEFT_EYE):
        x, y = u[eye], -v[eye]  # y up: clockwise in the image is clockwise here too
        assert 0.5 * float((x * y.roll(-1) - x.roll(-1) * y).sum()) < 0, "clockwise from the left corner"
        assert (v[eye[1:3]] < v[eye[4:6]].flip(0)).all(), "upper lid above the lower one"
    assert (v[[49, 50, 51, 52, 53]] < v[UPPER_INNER_LIP].mean()).all() and (v[55:60] > v[LOWER_INNER_LIP].mean()).all()
    assert (v[LOWER_INNER_LIP] - v[UPPER_INNER_LIP].flip(0)).abs().max() < 1.5, "closed lips: the seam is thin"


# ---- expressions, gaze ------------------------------------------------------------------------
def test_jaw_open_drops_the_lower_lip_and_keeps_the_upper_one(model):
    neutral, opened = landmarks(model), landmarks(model, jaw_open=1.0)
    drop = neutral[:, 1] - opened[:, 1]
    assert (drop[LOWER_INNER_LIP] > 0.15).all() and (drop[UPPER_INNER_LIP].abs() < 0.01).all()
    assert 0.2 < opened[62, 1] - opened[66, 1] < 0.32, "the mouth opens about 0.25 units"
    assert drop[8] > 0.15 and drop[27:36].abs().max() < 1e-6, "the chin follows the jaw, the nose stays"


@pytest.mark.parametrize(("name", "closing", "still"), [("blink_left", LEFT_EYE, RIGHT_EYE), ("blink_right", RIGHT_EYE, LEFT_EYE)])
def test_blink_closes_one_eye(model, name, closing, still):
    neutral, blinked = landmarks(model), landmarks(model, **{name: 1.0})

    def gaps(points, eye):
        upper, lower = points[eye[1:3]], points[eye[4:6]].flip(0)
        return (upper[:, 1] - lower[:, 1])

    assert (gaps(neutral, closing) > 0.05).all() and (gaps(blinked, closing).abs() < 0.1 * gaps(neutral, closing)).all()
    assert torch.allclose(blinked[still], neutral[still])


def test_eyeballs_show_only_through_open_eyes(model):
    """The skin near each pupil (seen from the camera) is behind it when the eye is open and in front when closed."""
    for eyeball in (model.eyeball_left, model.eyeball_right):
        for weights, lid_in_front in (({}, False), ({"blink_left": 1.0, "blink_right": 1.0}, True)):
            vertices = shape(model, **weights)[0]
            pupil = vertices[eyeball[0]]  # the front pole
            skin = torch.ones(model.num_vertices, dtype=torch.bool)
            skin[model.eyeball_left] = skin[model.eyeball_right] = False
            near = skin & ((vertices[:, :2] - pupil[:2]).norm(dim=1) < 0.03)
            assert near.any()
            assert (vertices[near, 2] > pupil[2]).any() == lid_in_front


def test_smile_pucker_brows_and_frown_move_the_right_landmarks(model):
    neutral = landmarks(model)
    smile = landmarks(model, smile=1.0) - neutral
    assert (smile[[48, 54], 1] > 0.03).all() and smile[48, 0] < -0.02 and smile[54, 0] > 0.02
    pucker = landmarks(model, lip_pucker=1.0)
    assert (pucker[54, 0] - pucker[48, 0]) < 0.8 * (neutral[54, 0] - neutral[48, 0])
    assert (pucker[OUTER_LIPS, 2] > neutral[OUTER_LIPS, 2]).all(), "lips push forward"
    raised = landmarks(model, brow_raise=1.0) - neutral
    assert (raised[17:27, 1] > 0.03).all() and raised[36:48].abs().max() < 1e-3, "brows go up, lid margins stay"
    assert ((landmarks(model, frown=1.0) - neutral)[[48, 54], 1] < -0.02).all()


def test_every_expression_direction_is_used_and_independent(arrays):
    basis = arrays["exBase"].astype(np.float64)
    size = np.linalg.norm(basis, axis=0)
    assert (size > 1e-3).all()
    normalised = basis / size
    assert np.linalg.matrix_rank(normalised) == 64
    semantic = normalised[:, : len(demo.SEMANTIC_EXPRESSIONS)]
    assert np.linalg.svd(semantic, compute_uv=False).min() > 0.05, "no named direction is nearly a mix of others"


def test_gaze_turns_the_irises_and_nothing_else(model):
    gaze = torch.tensor([[0.0, 0.0], [0.0, 0.3], [0.2, 0.0]])
    vertices = model.shape(torch.zeros(3, 80), torch.zeros(3, 64), gaze)
    for eyeball in (model.eyeball_left, model.eyeball_right):
        pupil = vertices[:, eyeball[0]]
        assert pupil[1, 0] - pupil[0, 0] > 0.02, "yaw looks towards +x"
        assert pupil[2, 1] - pupil[0, 1] > 0.015, "pitch looks up"
        assert torch.allclose(vertices[:, eyeball].mean(1), vertices[0, eyeball].mean(0), atol=1e-5)
    skin = torch.ones(model.num_vertices, dtype=torch.bool)
    skin[model.eyeball_left] = skin[model.eyeball_right] = False
    assert torch.equal(vertices[1, skin], vertices[0, skin])


# ---- identity and albedo -----------------------------------------------------------------------
def test_identity_directions_are_smooth_plausible_and_keep_the_eyeballs_round(arrays, model):
    basis = arrays["idBase"].astype(np.float64)
    largest = np.linalg.norm(basis.reshape(-1, 3, 80), axis=1).max(axis=0)
    assert ((largest > 0.003) & (largest < 0.1)).all(), "a few millimetres to a centimetre per unit"
    assert np.linalg.matrix_rank(basis / np.linalg.norm(basis, axis=0)) == 80
    identity = torch.randn(4, 80, generator=torch.Generator().manual_seed(0))
    moved = (model.shape(identity, torch.zeros(4, 64)) - model.mean_shape).norm(dim=-1)
    assert moved.max() < 0.2, "random faces stay faces"
    expressions = torch.zeros(4, 64)
    expressions[:, : len(demo.SEMANTIC_EXPRESSIONS)] = torch.rand(4, len(demo.SEMANTIC_EXPRESSIONS)) * 0.8
    vertices = model.shape(identity, expressions)
    for eyeball in (model.eyeball_left, model.eyeball_right):
        radius = (vertices[:, eyeball] - vertices[:, eyeball].mean(1, keepdim=True)).norm(dim=-1)
        assert (radius.std(1) / radius.mean(1)).max() < 1e-3, "eyeballs move and scale, never bend"


def test_albedo_has_the_features_and_stays_in_range(arrays, model):
    albedo = model.mean_albedo * 255
    ids = model.landmark_ids
    skin = albedo[ids[[1, 15, 29]]].mean(0)
    assert (albedo[ids[19]] < 0.75 * skin).all(), "dark brows"
    lips, lip_skin = albedo[ids[[51, 57]]].mean(0), albedo[ids[33]]
    assert lips[0] / lips[1] > 1.3 * lip_skin[0] / lip_skin[1], "lips redder than skin"
    pupil, sclera = albedo[model.eyeball_left[0]], albedo[model.eyeball_left[-1]]
    assert pupil.max() < 40 and sclera.min() > 200
    opened = shape(model, jaw_open=1.0)[0]
    mouth = ((opened[:, 1] < opened[ids[62], 1] - 0.05) & (opened[:, 1] > opened[ids[66], 1] + 0.05)
             & (opened[:, 0].abs() < 0.05) & (opened[:, 2] > 0.3))
    assert mouth.any() and (albedo[mouth].mean(1) < 0.5 * skin.mean()).all(), "a dark mouth opens along the seam"
    mean, basis = arrays["meantex"].reshape(-1).astype(np.float64), arrays["texBase"].astype(np.float64)
    for sign in (-2.0, 2.0):
        varied = mean[:, None] + sign * basis
        assert varied.min() >= 0 and varied.max() <= 255, "each direction at ±2 stays a colour"
        rgb = varied.reshape(-1, 3, 80)[ids[[1, 15, 29, 33]].numpy()]
        assert ((rgb[:, 0] > rgb[:, 1] + 10) & (rgb[:, 1] > rgb[:, 2] + 5)).all(), "and skin stays skin-coloured"
    random = mean[:, None] + basis @ np.random.default_rng(0).normal(size=(80, 16))
    assert ((random >= 0) & (random <= 255)).mean() > 0.99
    assert np.linalg.matrix_rank(basis / np.linalg.norm(basis, axis=0)) == 80
