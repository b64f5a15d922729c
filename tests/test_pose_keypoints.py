"""Faces from Pose Keypoints: POSE_KEYPOINT as comfyui_controlnet_aux's DWPose and OpenPose estimators
write it, built here from our own renders (the 68 landmark vertices projected, plus two pupils)."""
import math

import pytest
import torch
from packloader import load_pack, pack_import

load_pack()
pose_nodes = pack_import("nodes.pose")
face_nodes = pack_import("nodes.face")
base = pack_import("nodes.base")
morphable_nodes = pack_import("nodes.morphable")
coefficients = pack_import("pipelines.morphable.coefficients")
demo = pack_import("pipelines.morphable.demo_model")
renderer_module = pack_import("pipelines.render.renderer")
camera_module = pack_import("pipelines.morphable.camera")
SIZE = 256


@pytest.fixture(scope="module")
def rendered():
    """Four frames of one demo person talking and turning at 256², and the true landmarks (pack pixels)."""
    model = demo.demo_face_model(12)
    generator = torch.Generator().manual_seed(5)
    coeffs = coefficients.FaceCoefficients.neutral(4, model.dims)
    coeffs.identity[:] = torch.randn(model.dims.identity, generator=generator)
    coeffs.expression[:, model.expression_index("jaw_open")] = torch.tensor([0.0, 0.4, 0.8, 0.3])
    coeffs.rotation[:, 1] = torch.tensor([-0.3, -0.1, 0.1, 0.3])
    coeffs.translation[:, 2] = -2.0
    maps = renderer_module.FaceRenderer(model, camera_module.PerspectiveCamera.deep3d(SIZE)).render(coeffs)
    return maps.image, maps.landmarks


def openpose_frame(landmarks, canvas=(SIZE, SIZE), normalised=False, people=1, offset=0.0):
    """One frame as the estimators write it: 70 face triples (68 iBUG + 2 pupils), pixel indices or fractions."""
    width, height = canvas
    scale = torch.tensor([width / SIZE, height / SIZE])
    points = landmarks * scale - 0.5  # pixel indices (OpenPose), centre of the first pixel at 0
    if normalised:
        points = (points + 0.5) / torch.tensor([float(width), float(height)])  # DWPose: fractions of the canvas
    pupils = torch.stack([points[36:42].mean(0), points[42:48].mean(0)])
    face = torch.cat([torch.cat([points, pupils]), torch.ones(70, 1)], 1)
    person = {"pose_keypoints_2d": [0.0] * 54, "face_keypoints_2d": face.flatten().tolist(),
              "hand_left_keypoints_2d": None, "hand_right_keypoints_2d": None}
    crowd = [person]
    for index in range(1, people):
        shifted = face.clone()
        shifted[:, 0] += offset * index * (1.0 if not normalised else 1.0 / width)
        crowd.append({**person, "face_keypoints_2d": shifted.flatten().tolist()})
    return {"people": crowd, "canvas_width": width, "canvas_height": height}


def run(images, pose_keypoint, missing="error", selection="largest", face_index=0, **options):
    settings = dict(crop_size=256, crop_margin=0.0, smoothing=0.0, fps=25.0)
    settings.update(options)
    return pose_nodes.FacesFromPoseKeypoints().execute(images=images, pose_keypoint=pose_keypoint, selection=selection,
                                                       face_index=face_index, missing_faces=missing, **settings)


@pytest.mark.parametrize("normalised", [False, True], ids=["openpose_pixels", "dwpose_fractions"])
def test_keypoints_become_the_landmarks_and_the_fit_matches_them(rendered, normalised):
    images, landmarks = rendered
    pose = [openpose_frame(points, normalised=normalised) for points in landmarks]
    faces, crops = run(images, pose, fps=12.0)
    assert torch.allclose(faces.landmarks68, landmarks, atol=1e-3)
    assert faces.detected.all() and faces.embeddings is None and faces.fps == 12.0
    assert crops.shape == (4, 256, 256, 3) and float(crops.mean()) > 0.05  # the face is in the crops
    face_model = morphable_nodes.Load3DMM().execute(model_name="demo face (built-in)")[0]
    coeffs, error = face_nodes.Fit3DMM().execute(faces=faces, face_model=face_model, estimate_appearance=False,
                                                 video_mode="fast", temporal_smoothing=0.0, expression_prior=1.0,
                                                 batch_size=4)
    # px in the 224-px crop: the fitter slides jaw points along the silhouette, off the rendered landmark vertices
    assert error < 3.0
    assert float(coeffs.rotation[3, 1] - coeffs.rotation[0, 1]) > 0.4  # the head turns as rendered (0.6 rad)


def test_a_canvas_of_the_same_shape_is_scaled_and_another_shape_refused(rendered):
    images, landmarks = rendered
    bigger = [openpose_frame(points, canvas=(512, 512)) for points in landmarks]
    faces, _ = run(images, bigger)
    assert torch.allclose(faces.landmarks68, landmarks, atol=1e-3)
    wider = [openpose_frame(points, canvas=(512, 256)) for points in landmarks]
    with pytest.raises(base.NodeInputError, match="Faces from Pose Keypoints: .*512×256 canvas .* 256×256"):
        run(images, wider)


def test_pose_without_face_points_or_with_other_frame_counts_is_refused(rendered):
    images, landmarks = rendered
    no_face = [{"people": [{"pose_keypoints_2d": [1.0] * 54, "face_keypoints_2d": None}], "canvas_width": SIZE,
                "canvas_height": SIZE}] * 4
    with pytest.raises(base.NodeInputError, match="Faces from Pose Keypoints: .*no face points: turn on detect_face"):
        run(images, no_face)
    with pytest.raises(base.NodeInputError, match="POSE_KEYPOINT has 3 frame.* 4 image"):
        run(images, [openpose_frame(points) for points in landmarks[:3]])
    with pytest.raises(base.NodeInputError, match="68 or 70"):
        run(images[:1], [{"people": [{"face_keypoints_2d": [1.0] * 30}]}])
    with pytest.raises(base.NodeInputError, match="list of per-frame dicts"):
        run(images[:1], "not keypoints")


@pytest.mark.parametrize("policy", ["interpolate", "pass_through"])
def test_frames_without_a_person_or_with_a_partial_face_follow_the_policy(rendered, policy):
    images, landmarks = rendered
    pose = [openpose_frame(points) for points in landmarks]
    pose[1] = {"people": [], "canvas_width": SIZE, "canvas_height": SIZE}
    partial = openpose_frame(landmarks[2])
    partial["people"][0]["face_keypoints_2d"][2::3] = [0.0] * 10 + [1.0] * 60  # jaw points not found
    pose[2] = partial
    faces, _ = run(images, pose, missing=policy)
    assert faces.detected.tolist() == [True, False, False, True]
    assert faces.untouched.tolist() == ([False, True, True, False] if policy == "pass_through" else [False] * 4)
    assert any("some of their 68 pose keypoints missing" in note and "frame(s) 2" in note for note in faces.notes)
    with pytest.raises(base.NodeInputError, match=r"frame\(s\) 1, 2 of 4"):
        run(images, pose, missing="error")


def test_the_chosen_person_is_followed(rendered):
    images, landmarks = rendered
    pose = [openpose_frame(points, people=2, offset=-60.0) for points in landmarks]  # a second face 60 px left
    right = run(images, pose, selection="left_to_right", face_index=1)[0]
    left = run(images, pose, selection="left_to_right", face_index=0)[0]
    assert torch.allclose(right.landmarks68, landmarks, atol=1e-3)
    assert torch.allclose(left.landmarks68[..., 0], landmarks[..., 0] - 60.0, atol=1e-3)
    assert math.isclose(float(right.scores[0]), 1.0)
