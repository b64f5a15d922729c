"""insightface analysis over a tiny model pack with the real ONNX signatures, run through FaceAnalysis."""
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from packloader import PACK_ROOT, pack_import
from PIL import Image, ImageSequence

analysis = pack_import("pipelines.face.analysis")
faces_module = pack_import("pipelines.face.faces")
fit_module = pack_import("pipelines.face.fit")
alignment = pack_import("pipelines.face.alignment")
coefficients = pack_import("pipelines.morphable.coefficients")
demo = pack_import("pipelines.morphable.demo_model")
renderer_module = pack_import("pipelines.render.renderer")
camera_module = pack_import("pipelines.morphable.camera")
errors = pack_import("pipelines.errors")
ASSETS = PACK_ROOT / "tests" / "assets"


def ensure_tiny_insightface(models_root):
    """The tiny insightface pack in the session's models/ folder (written once per session)."""
    if not (models_root / "insightface" / "models" / "buffalo_l" / "det_10g.onnx").is_file():
        subprocess.run([sys.executable, "-m", "scripts.tiny_insightface", str(models_root)], cwd=PACK_ROOT,
                       check=True, capture_output=True, text=True)
    return models_root


@pytest.fixture(scope="module")
def models_root(tiny_models_dir):
    return ensure_tiny_insightface(tiny_models_dir)


@pytest.fixture(scope="module")
def pack(models_root):
    return models_root / "insightface" / "models" / "buffalo_l"


@pytest.fixture(scope="module")
def analyzer(pack):
    return analysis.FaceAnalyzer.load(pack, providers="CPU")


def load_asset(name: str) -> torch.Tensor:
    frames = [np.asarray(f.convert("RGB"), dtype=np.float32) / 255.0 for f in ImageSequence.Iterator(Image.open(ASSETS / name))]
    return torch.from_numpy(np.stack(frames))


def rendered_face(x_offset: float, size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """A demo face on black at a horizontal offset; returns the image and the centre of its bright pixels."""
    model = demo.demo_face_model(12)
    coeffs = coefficients.FaceCoefficients.neutral(1, model.dims)
    coeffs.translation[0] = torch.tensor([x_offset, 0.0, -10.0])
    image = renderer_module.FaceRenderer(model, camera_module.PerspectiveCamera.deep3d(size)).render(coeffs).image
    rows, cols = torch.nonzero(image[0].mean(-1) > 0.2, as_tuple=True)
    return image, torch.stack([cols.float().mean(), rows.float().mean()]) + 0.5


def test_insightface_routes_every_tiny_model_to_its_class(analyzer):
    assert set(analyzer.app.models) == {"detection", "landmark_3d_68", "landmark_2d_106", "genderage", "recognition"}
    assert analyzer.providers == ["CPUExecutionProvider"]
    assert analyzer.has_landmarks68


@pytest.mark.parametrize("x_offset", [-1.2, 1.2])
def test_detector_finds_the_face_where_it_is(analyzer, x_offset):
    image, centre = rendered_face(x_offset)
    found = analyzer.detect(analysis.images_to_uint8(image)[0])
    assert len(found) == 1
    face = found[0]
    box_centre = torch.tensor([(face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2])
    # The tiny detector measures brightness on 32-px cells at 640 (12.8 px here): a few px of slack.
    assert float((box_centre - centre).norm()) < 5.0
    assert face.landmarks68.shape == (68, 2) and face.landmarks106.shape == (106, 2)
    assert face.embedding.shape == (512,) and abs(np.linalg.norm(face.embedding) - 1.0) < 1e-4
    assert face.pose.shape == (3,)
    # The landmarks lie on the face: the nose tip is inside the box.
    assert face.box[0] < face.landmarks68[30, 0] < face.box[2] and face.box[1] < face.landmarks68[30, 1] < face.box[3]


def test_no_face_in_a_black_portrait_names_the_image(analyzer):
    with pytest.raises(errors.TalkingFaceError, match="no face found in the image"):
        faces_module.analyze_frames(analyzer, torch.zeros(1, 128, 128, 3))


def test_missing_frames_are_interpolated_or_raise(analyzer):
    video = load_asset("talkingface_face_driving.png")[:5].clone()
    video[3] = 0.0
    faces = faces_module.analyze_frames(analyzer, video, missing="interpolate")
    assert faces.detected.tolist() == [True, True, True, False, True]
    assert any("frame(s) 3" in note for note in faces.notes)
    assert torch.allclose(faces.keypoints[3], (faces.keypoints[2] + faces.keypoints[4]) / 2, atol=1e-4)
    with pytest.raises(errors.TalkingFaceError, match=r"frame\(s\) 3 of 5"):
        faces_module.analyze_frames(analyzer, video, missing="error")


def test_tiny_faces_are_refused_with_the_size(analyzer):
    skin = torch.tensor([0.8, 0.6, 0.5]).expand(1, 16, 16, 3).contiguous()
    with pytest.raises(errors.TalkingFaceError, match="px wide"):
        faces_module.analyze_frames(analyzer, skin)


def test_grayscale_and_rgba_images_are_converted_with_a_note(analyzer):
    portrait = load_asset("talkingface_face_portrait.png")
    gray = faces_module.analyze_frames(analyzer, portrait.mean(-1, keepdim=True))
    assert "grayscale" in gray.notes[0] and gray.images.shape[-1] == 3
    rgba = faces_module.analyze_frames(analyzer, torch.cat([portrait, torch.ones_like(portrait[..., :1])], -1))
    assert "alpha" in rgba.notes[0]
    with pytest.raises(errors.TalkingFaceError, match="1, 3 or 4 channels"):
        faces_module.analyze_frames(analyzer, portrait[..., :2])


def test_missing_pack_lists_the_folder_and_the_expected_files(models_root):
    folder = models_root / "insightface" / "models" / "antelopev2"
    with pytest.raises(errors.ModelFileError) as error:
        analysis.FaceAnalyzer.load(folder)
    message = str(error.value)
    assert "scrfd_10g_bnkps.onnx" in message and "glintr100.onnx" in message
    assert "'antelopev2' not found" in message and "ComfyUI/models/insightface/models/" in message
    assert str(models_root) not in message, "no path of the server's disk"
    assert "buffalo_l" in message  # what is there instead


def test_pack_without_a_detector_says_so(pack, tmp_path):
    broken = tmp_path / "buffalo_l"
    shutil.copytree(pack, broken)
    (broken / "det_10g.onnx").unlink()
    with pytest.raises(errors.ModelFileError, match="no face detector"):
        analysis.FaceAnalyzer.load(broken)


def test_providers_are_chosen_from_what_is_installed():
    available = analysis.available_providers()
    auto = analysis.choose_providers("auto")
    assert auto[-1] == "CPUExecutionProvider"
    assert ("CUDAExecutionProvider" in auto) == ("CUDAExecutionProvider" in available)
    if "CUDAExecutionProvider" not in available:
        with pytest.raises(errors.TalkingFaceError, match="onnxruntime-gpu"):
            analysis.choose_providers("CUDA")


def test_an_external_face_analysis_object_is_accepted(pack):
    from insightface.app import FaceAnalysis

    app = FaceAnalysis(name=str(pack), providers=["CPUExecutionProvider"])  # what IPAdapter's loader returns
    app.prepare(ctx_id=-1, det_size=(640, 640))
    wrapped = analysis.FaceAnalyzer.wrap(app)
    faces = faces_module.analyze_frames(wrapped, load_asset("talkingface_face_portrait.png"))
    assert faces.frames == 1 and faces.landmarks68 is not None
    with pytest.raises(errors.TalkingFaceError, match="FaceAnalysis"):
        analysis.FaceAnalyzer.wrap(object())


def test_detect_align_landmarks_fit_coefficients(analyzer):
    """The whole path on the portrait asset: the fitted face covers the face in the fitting crop."""
    portrait = load_asset("talkingface_face_portrait.png")
    faces = faces_module.analyze_frames(analyzer, portrait, crop_size=256)
    mapped = alignment.apply_transforms(faces.fit_transforms, faces.keypoints)
    assert torch.allclose(mapped[0], alignment.crop_template(224), atol=1.0)  # five points land on the template
    model = demo.demo_face_model(12)
    fit = fit_module.fit_faces(model, faces, appearance=True, appearance_resolution=64)
    coeffs = fit.coefficients
    assert all(torch.isfinite(value).all() for value in coeffs.fields().values())
    assert float(fit.landmark_error[0]) < 6.0
    maps = renderer_module.FaceRenderer(model, camera_module.PerspectiveCamera.deep3d(224)).render(coeffs)
    crop = faces.fit_crops(slice(0, 1))
    face_pixels = crop[0].mean(-1) > 0.2
    overlap = (maps.mask[0].bool() & face_pixels).sum() / (maps.mask[0].bool() | face_pixels).sum()
    assert float(overlap) > 0.6
    # Appearance carries the portrait's skin tone: the render is closer to the crop than the mean albedo's.
    neutral = renderer_module.FaceRenderer(model, camera_module.PerspectiveCamera.deep3d(224)).render(
        coeffs.replace(texture=torch.zeros_like(coeffs.texture), lighting=torch.zeros_like(coeffs.lighting)))
    inside = maps.mask[0].bool() & face_pixels
    fitted_error = (maps.image[0] - crop[0]).abs()[inside].mean()
    neutral_error = (neutral.image[0] - crop[0]).abs()[inside].mean()
    assert float(fitted_error) < float(neutral_error)


@pytest.fixture(scope="module")
def two_people():
    """Frames with two demo people (A upper left, B lower right and larger) who move a little, then
    swap sides: a 3-frame clip [3, 320, 400, 3] and each person's rendered face."""
    model = demo.demo_face_model(12)
    generator = torch.Generator().manual_seed(3)
    people = coefficients.FaceCoefficients.neutral(2, model.dims)
    people.identity[:] = torch.randn(2, model.dims.identity, generator=generator)
    people.texture[:] = 1.5 * torch.randn(2, model.dims.texture, generator=generator)
    people.translation[:, 2] = torch.tensor([-4.0, -3.5])
    background = torch.tensor([0.06, 0.07, 0.1])
    maps = renderer_module.FaceRenderer(model, camera_module.PerspectiveCamera.deep3d(160)).render(people)
    faces = maps.image + (1.0 - maps.mask.unsqueeze(-1)) * background
    positions = [((0, 10), (150, 220)), ((4, 18), (146, 212)), ((0, 220), (150, 10))]  # (row, column) of A, B
    clip = background.expand(3, 320, 400, 3).clone()
    for frame, placed in zip(clip, positions, strict=True):
        for face, (row, column) in zip(faces, placed, strict=True):
            frame[row:row + 160, column:column + 160] = face
    return clip


def test_two_faces_are_detected_and_selected_in_each_order(analyzer, two_people):
    found = analyzer.detect(analysis.images_to_uint8(two_people[:1])[0])
    assert len(found) == 2
    left, right = sorted(found, key=lambda face: face.box[0])
    assert left.box[2] < 170 < right.box[0] and left.box[3] < right.box[3]  # A upper left, B lower right
    assert right.area > left.area
    assert float(np.dot(left.embedding, right.embedding)) < 0.8  # two people, two identities
    expected = {("largest", 0): right, ("largest", 1): left, ("left_to_right", 0): left, ("left_to_right", 1): right,
                ("top_to_bottom", 0): left, ("top_to_bottom", 1): right}
    for (order, index), face in expected.items():
        chosen = faces_module.analyze_frames(analyzer, two_people[:1], order=order, face_index=index)
        assert torch.allclose(chosen.boxes[0], torch.from_numpy(face.box), atol=1e-3), (order, index)
    confident = faces_module.analyze_frames(analyzer, two_people[:1], order="most_confident", face_index=0)
    assert float(confident.scores[0]) == max(face.score for face in found)
    with pytest.raises(errors.TalkingFaceError, match="2 faces found in the image and the selection is 'single'"):
        faces_module.analyze_frames(analyzer, two_people[:1], order="single")
    with pytest.raises(errors.TalkingFaceError, match="face_index is 2"):
        faces_module.analyze_frames(analyzer, two_people[:1], order="largest", face_index=2)


@pytest.mark.parametrize("index", [0, 1], ids=["A", "B"])
def test_a_video_track_follows_one_person_across_frames(analyzer, two_people, index):
    """Frame 1: the person moved a little (box overlap); frame 2: the two swapped sides, no box overlaps the
    last one, so only the ArcFace embedding tells who is who."""
    faces = faces_module.analyze_frames(analyzer, two_people, order="left_to_right", face_index=index, missing="error")
    centres = (faces.boxes[:, :2] + faces.boxes[:, 2:]) / 2
    starts_left = index == 0
    assert (float(centres[0, 0]) < 200) == starts_left and (float(centres[1, 0]) < 200) == starts_left
    assert (float(centres[2, 0]) < 200) != starts_left  # followed to the other side
    assert (float(centres[2, 1]) < 160) == starts_left  # A stays in the upper row, B in the lower
    assert float(faces.embeddings[2] @ faces.embeddings[0]) > 0.85


def test_tiny_landmark_models_follow_the_mouth(analyzer):
    """The driving clip opens the jaw in frames 1–3 and 5–7 (fully in 2 and 6): the inner lips part there."""
    faces = faces_module.analyze_frames(analyzer, load_asset("talkingface_face_driving.png"), missing="error")
    opening = (faces.landmarks68[:, 66, 1] - faces.landmarks68[:, 62, 1]).tolist()
    assert max(opening[0], opening[4]) < 1.0
    assert min(opening[2], opening[6]) > 3.0 and min(opening[1], opening[3], opening[5], opening[7]) > 2.0
