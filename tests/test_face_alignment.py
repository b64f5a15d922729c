"""Alignment crops, paste-back, feathered masks, colour matching, face selection and One-Euro smoothing."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from packloader import pack_import
from PIL import Image

alignment = pack_import("pipelines.face.alignment")
selection = pack_import("pipelines.face.selection")
analysis = pack_import("pipelines.face.analysis")
smoothing = pack_import("pipelines.face.smoothing")
errors = pack_import("pipelines.errors")


def insightface_photo() -> torch.Tensor:
    """A real photograph from the insightface wheel (falls back to a generated face asset)."""
    try:
        import insightface

        path = Path(insightface.__file__).parent / "data" / "images" / "t1.jpg"
    except ImportError:
        path = None
    if path is None or not path.is_file():
        path = Path(__file__).parent / "assets" / "talkingface_face_portrait.png"
    image = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(image).unsqueeze(0)


def test_similarity_transform_recovers_a_known_similarity():
    template = alignment.crop_template(224)
    angle, scale, shift = 0.3, 1.7, torch.tensor([40.0, -12.0])
    rotation = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    source = (template @ rotation.T * scale + shift).unsqueeze(0)
    transform = alignment.similarity_transforms(source, template)
    assert torch.allclose(alignment.apply_transforms(transform, source)[0], template, atol=1e-3)
    inverse = alignment.invert_transforms(transform)
    assert torch.allclose(alignment.apply_transforms(inverse, template.unsqueeze(0))[0], source[0], atol=1e-3)


def test_crop_templates_scale_with_size_and_margin():
    fit = alignment.crop_template(224)
    assert torch.allclose(alignment.crop_template(448), fit * 2.0, atol=1e-4)
    wide = alignment.crop_template(224, margin=0.25)
    eye_distance = lambda t: float((t[1] - t[0]).norm())  # noqa: E731
    assert eye_distance(wide) == pytest.approx(eye_distance(fit) / 1.5, rel=1e-4)
    with pytest.raises(errors.TalkingFaceError):
        alignment.crop_template(224, margin=-0.1)


def test_warp_by_an_integer_shift_moves_pixels_exactly():
    images = torch.rand(2, 20, 24, 3)
    shift = torch.tensor([[[1.0, 0.0, -3.0], [0.0, 1.0, -2.0]]]).expand(2, -1, -1)  # crop = frame - (3, 2)
    crops = alignment.warp_images(images, shift, 10, 12)
    assert torch.allclose(crops, images[:, 2:12, 3:15], atol=1e-5)


def test_paste_back_of_an_unchanged_crop_reproduces_the_photo_inside_the_mask():
    frame = insightface_photo()
    height, width = frame.shape[1:3]
    # Five keypoints of a face-sized region in the middle of the photograph, slightly rotated.
    centre = torch.tensor([width / 2.0, height / 2.0])
    template = alignment.crop_template(224)
    angle = 0.2
    rotation = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    keypoints = ((template - 112.0) @ rotation.T * (min(height, width) / 400.0) + centre).unsqueeze(0)
    transforms = alignment.similarity_transforms(keypoints, alignment.crop_template(256))
    crop = alignment.warp_images(frame, transforms, 256)
    render_mask = torch.zeros(1, 256, 256)
    render_mask[:, 40:216, 50:206] = 1.0
    feathered = alignment.face_mask(render_mask, erode=4, blur=6)
    pasted, mask = alignment.paste_back(frame, crop, transforms, feathered)
    inside = mask > 0.05
    assert inside.sum() > 1000
    # Re-sampling twice blurs a little; everything else must be untouched.
    error = (pasted - frame).abs().amax(-1)
    assert float(error[inside].mean()) < 0.02
    assert float(error[mask == 0].max()) < 1e-6
    # A different crop does change the frame inside the mask.
    changed, _ = alignment.paste_back(frame, 1.0 - crop, transforms, feathered)
    assert float((changed - frame).abs().amax(-1)[mask > 0.9].mean()) > 0.1


def test_feathered_mask_is_eroded_and_soft():
    render_mask = torch.zeros(1, 64, 64)
    render_mask[:, 16:48, 16:48] = 1.0
    hard = alignment.face_mask(render_mask, erode=3, blur=0)
    assert hard[0, 19:45, 19:45].min() == 1.0 and hard[0, 18, 30] == 0.0
    soft = alignment.face_mask(render_mask, erode=3, blur=4)
    assert 0.0 < float(soft[0, 19, 32]) < 1.0
    assert float(soft[0, 32, 32]) == pytest.approx(1.0, abs=1e-4)


def test_lower_face_mask_keeps_the_part_below_the_nose():
    mask = torch.ones(1, 100, 100)
    landmarks = torch.zeros(1, 68, 2)
    landmarks[0, 29] = torch.tensor([50.0, 40.0])
    lower = alignment.lower_face_mask(mask, landmarks, feather=4)
    assert float(lower[0, 20, 50]) == 0.0 and float(lower[0, 60, 50]) == 1.0


def test_colour_matching_moves_statistics_to_the_reference():
    generator = torch.Generator().manual_seed(0)
    reference = torch.rand(1, 32, 32, 3, generator=generator) * 0.3 + 0.5
    crops = torch.rand(1, 32, 32, 3, generator=generator) * 0.2 + 0.1
    matched = alignment.match_colours(crops, reference, torch.ones(1, 32, 32))
    assert torch.allclose(matched.mean((1, 2)), reference.mean((1, 2)), atol=1e-3)


def face(x: float, y: float, size: float, score: float = 0.9, embedding=None):
    box = np.array([x, y, x + size, y + size], np.float32)
    return analysis.DetectedFace(box=box, score=score, keypoints=np.zeros((5, 2), np.float32),
                                 embedding=None if embedding is None else np.asarray(embedding, np.float32))


def test_face_orders_and_index():
    faces = [face(100, 10, 40, 0.7), face(10, 80, 60, 0.95), face(200, 50, 20, 0.8)]
    pick = lambda order, index=0: selection.select_face(faces, order, index, "the image")  # noqa: E731
    assert pick("largest") is faces[1]
    assert pick("left_to_right") is faces[1] and pick("left_to_right", 2) is faces[2]
    assert pick("top_to_bottom") is faces[0]
    assert pick("most_confident") is faces[1]
    with pytest.raises(errors.TalkingFaceError, match="3 faces found in the image"):
        pick("single")
    with pytest.raises(errors.TalkingFaceError, match="has 3 face"):
        pick("largest", 5)
    with pytest.raises(errors.TalkingFaceError, match="no face found in the image"):
        selection.select_face([], "largest", 0, "the image")


def test_track_follows_the_same_person_when_faces_cross():
    alice, bob = np.eye(4)[0], np.eye(4)[1]
    frames = []
    for t in range(6):  # alice walks right, bob walks left; they swap sides at the end
        frames.append([face(10 + 30 * t, 20, 50, embedding=alice), face(160 - 30 * t, 20, 50, embedding=bob)])
    frames[2] = [frames[2][1]]  # alice not detected in frame 2
    track = selection.track_face(frames, "left_to_right", 0)
    assert track[2] is None
    for t in (0, 1, 3, 4, 5):
        assert np.array_equal(track[t].embedding, alice)


def test_one_euro_removes_jitter_and_keeps_steps():
    generator = torch.Generator().manual_seed(1)
    steady = torch.zeros(200, 2)
    noisy = steady + 0.5 * torch.randn(200, 2, generator=generator)
    smoothed = smoothing.one_euro(noisy, 25.0, 1.0, scale=100.0)  # 0.5 px jitter on a 100 px face
    assert smoothed[50:].std() < 0.35 * noisy[50:].std()
    step = torch.cat([torch.zeros(50, 1), torch.full((50, 1), 100.0)])
    followed = smoothing.one_euro(step, 25.0, 1.0, scale=100.0)
    assert float(followed[60]) > 90.0  # a fast move is not held back
    assert torch.equal(smoothing.one_euro(noisy, 25.0, 0.0), noisy)
    with pytest.raises(errors.TalkingFaceError):
        smoothing.one_euro(noisy, 25.0, 1.5)
