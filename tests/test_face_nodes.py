"""The face and motion nodes, called the way ComfyUI calls them, and the face example workflow."""
import subprocess
import sys

import pytest
import torch
import workflow_runner
from packloader import PACK_ROOT, load_pack, pack_import
from scipy.io import savemat
from test_face_analysis import ensure_tiny_insightface
from test_face_regressor import epoch_20, network  # noqa: F401 (fixtures: the full-size R-Net file)

pack = load_pack()
face_nodes = pack_import("nodes.face")
motion_nodes = pack_import("nodes.motion")
base = pack_import("nodes.base")
morphable_nodes = pack_import("nodes.morphable")
render_nodes = pack_import("nodes.render")
coefficients = pack_import("pipelines.morphable.coefficients")
faces_module = pack_import("pipelines.face.faces")
renderer_module = pack_import("pipelines.render.renderer")
camera_module = pack_import("pipelines.morphable.camera")
ASSETS = PACK_ROOT / "tests" / "assets"
WORKFLOW = PACK_ROOT / "example_workflows" / "faces_reenact_geometry.json"
ALL_NODES = face_nodes.FACE_NODES + motion_nodes.MOTION_NODES


@pytest.fixture
def dirs(host_dirs):
    """The host folders, the session's models/ folder holding the tiny insightface pack too."""
    ensure_tiny_insightface(host_dirs["models"])
    return host_dirs["input"].parent


@pytest.fixture(scope="module")
def analyzer(tiny_models_dir):
    """Loaded once for the module through the node (preparing insightface's sessions is the slow part)."""
    ensure_tiny_insightface(tiny_models_dir)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TALKINGFACE_MODELS_DIR", str(tiny_models_dir))
        return face_nodes.LoadFaceAnalyzer().execute(pack="buffalo_l", provider="auto", detection_size=640,
                                                     detection_threshold=0.5)[0]


@pytest.mark.parametrize("node_class", ALL_NODES, ids=lambda c: c.__name__)
def test_every_input_has_a_tooltip_and_widgets_have_defaults(node_class):
    spec = node_class.INPUT_TYPES()
    for section in ("required", "optional"):
        for name, entry in spec.get(section, {}).items():
            assert entry[1].get("tooltip"), f"{node_class.__name__}.{name}"
            if isinstance(entry[0], list) or entry[0] in ("INT", "FLOAT", "BOOLEAN"):
                assert "default" in entry[1] or isinstance(entry[0], list)
    assert node_class.CATEGORY.startswith("TalkingFace/")
    assert len(node_class.OUTPUT_TOOLTIPS) == len(node_class.RETURN_TYPES)


def test_analyzer_lists_installed_packs_and_names_a_missing_one(dirs):
    choices = face_nodes.LoadFaceAnalyzer.INPUT_TYPES()["required"]["pack"][0]
    assert choices == ["buffalo_l", "dlib_hog", "dlib_cnn"]  # the installed pack, then dlib's two detectors
    with pytest.raises(base.NodeInputError, match="Load Face Analyzer: .*antelopev2"):
        face_nodes.LoadFaceAnalyzer().execute(pack="antelopev2", provider="auto", detection_size=640,
                                              detection_threshold=0.5)


def test_portrait_to_coefficients_to_paste_back(analyzer):
    portrait, _ = workflow_runner.load_image_file(ASSETS / "talkingface_face_portrait.png")
    faces, crops = face_nodes.AnalyzeFaces().execute(
        analyzer=analyzer, images=portrait, selection="single", face_index=0, missing_faces="error",
        crop_size=256, crop_margin=0.0, smoothing=0.0, fps=25.0)
    assert crops.shape == (1, 256, 256, 3)
    face_model = morphable_nodes.Load3DMM().execute(model_name="demo face (built-in)")[0]
    coeffs, error = face_nodes.Fit3DMM().execute(faces=faces, face_model=face_model, estimate_appearance=True,
                                                 video_mode="fast", temporal_smoothing=0.5, expression_prior=1.0,
                                                 batch_size=4)
    assert coeffs.frames == 1 and error < 6.0
    render, mask, _, _ = render_nodes.Render3DMMTarget().execute(face_model=face_model, coefficients=coeffs,
                                                                 resolution=256, batch_size=4)
    # Pasting the unchanged crop back leaves the portrait as it was (up to resampling).
    pasted, paste_mask = face_nodes.PasteBack().execute(faces=faces, generated=crops, face_mask=mask, region="full_face",
                                                        erode=4, blur=8, colour_match=False)
    assert pasted.shape == portrait.shape and paste_mask.shape == portrait.shape[:3]
    assert float(paste_mask.max()) > 0.99
    assert float((pasted - portrait).abs()[paste_mask > 0.5].mean()) < 0.03
    # Pasting the render puts the render's pixels there; the lower-face region leaves the eyes alone.
    pasted_render, _ = face_nodes.PasteBack().execute(faces=faces, generated=render, face_mask=mask, region="full_face",
                                                      erode=2, blur=2, colour_match=True)
    assert float((pasted_render - portrait).abs().amax(-1)[paste_mask > 0.99].mean()) > 0.005
    _, lower = face_nodes.PasteBack().execute(faces=faces, generated=render, face_mask=mask, region="lower_face",
                                              erode=2, blur=2, colour_match=False)
    eyes_row = int(faces.keypoints[0, :2, 1].mean())
    assert float(lower[0, eyes_row].max()) == 0.0 and float(lower.max()) > 0.5
    preview = face_nodes.DrawFaceLandmarks().execute(faces=faces, point_size=1)[0]
    assert preview.shape == portrait.shape and not torch.equal(preview, portrait)


def test_paste_back_refuses_mismatched_frames(analyzer):
    video, _ = workflow_runner.load_image_file(ASSETS / "talkingface_face_driving.png")
    faces, crops = face_nodes.AnalyzeFaces().execute(
        analyzer=analyzer, images=video[:3], selection="largest", face_index=0, missing_faces="interpolate",
        crop_size=256, crop_margin=0.0, smoothing=0.3, fps=25.0)
    with pytest.raises(base.NodeInputError, match="Paste Back: 2 generated crops for 3 analysed frames"):
        face_nodes.PasteBack().execute(faces=faces, generated=crops[:2], face_mask=torch.ones(1, 256, 256),
                                       region="full_face", erode=0, blur=0, colour_match=False)
    # A 512-px crop of the same framing goes back to the same place.
    big = torch.nn.functional.interpolate(crops.permute(0, 3, 1, 2), size=512, mode="bilinear").permute(0, 2, 3, 1)
    pasted, _ = face_nodes.PasteBack().execute(faces=faces, generated=big, face_mask=torch.ones(1, 64, 64),
                                               region="full_face", erode=8, blur=4, colour_match=False)
    assert float((pasted - video[:3]).abs().mean()) < 0.01


def test_paste_back_feathers_in_analysed_crop_pixels(analyzer):
    portrait, _ = workflow_runner.load_image_file(ASSETS / "talkingface_face_portrait.png")
    faces, crops = face_nodes.AnalyzeFaces().execute(
        analyzer=analyzer, images=portrait, selection="single", face_index=0, missing_faces="error",
        crop_size=256, crop_margin=0.0, smoothing=0.0, fps=25.0)
    disc = torch.zeros(1, 256, 256)
    yy, xx = torch.meshgrid(torch.arange(256.0), torch.arange(256.0), indexing="ij")
    disc[0][(yy - 128) ** 2 + (xx - 128) ** 2 < 90**2] = 1.0
    small = torch.nn.functional.interpolate(crops.permute(0, 3, 1, 2), size=64, mode="bilinear").permute(0, 2, 3, 1)
    masks = [face_nodes.PasteBack().execute(faces=faces, generated=generated, face_mask=disc, region="full_face",
                                            erode=8, blur=16, colour_match=False)[1] for generated in (crops, small)]
    # The same erode and blur settings give the same seam in the frame, whatever the generator's size.
    assert float((masks[0] - masks[1]).abs().mean()) < 0.01 * float(masks[0].mean())
    assert float(masks[1].max()) > 0.99


def test_motion_nodes(dirs):
    face_model = morphable_nodes.Load3DMM().execute(model_name="demo face (built-in)")[0]
    generator = torch.Generator().manual_seed(0)
    source = coefficients.FaceCoefficients.neutral(1, face_model.dims)
    source.identity[0] = torch.randn(face_model.dims.identity, generator=generator)
    driver = coefficients.FaceCoefficients.neutral(30, face_model.dims)
    driver.rotation[:, 1] = 0.2 + 0.02 * torch.randn(30, generator=generator)
    mixed = motion_nodes.ReplaceCoefficients().execute(
        source=source, driver=driver, preset="reenact", identity="preset", texture="preset", lighting="preset",
        expression="preset", pose="source", gaze="preset")[0]
    assert mixed.frames == 30 and torch.equal(mixed.identity[5], source.identity[0])
    assert torch.equal(mixed.rotation, source.rotation.expand(30, -1))  # pose switched to the source
    smoothed = motion_nodes.SmoothMotion().execute(coefficients=driver, strength=1.0, fields="pose", fps=25.0)[0]
    assert smoothed.rotation[10:, 1].std() < 0.6 * driver.rotation[10:, 1].std()
    assert torch.equal(smoothed.identity, driver.identity)
    edited = motion_nodes.EditExpressionAndPose().execute(
        coefficients=source, face_model=face_model, pitch=0.0, yaw=10.0, roll=0.0, jaw_open=1.0, smile=0.0,
        brow_raise=0.0, blink=0.0)[0]
    assert float(edited.expression[0, face_model.expression_index("jaw_open")]) == pytest.approx(1.0)
    with pytest.raises(base.NodeInputError, match="Replace Coefficients: .*different face models"):
        other = coefficients.FaceCoefficients.neutral(1, coefficients.CoefficientDims(10, 10, 10))
        motion_nodes.ReplaceCoefficients().execute(source=other, driver=driver, preset="swap", identity="preset",
                                                   texture="preset", lighting="preset", expression="preset",
                                                   pose="preset", gaze="preset")


def test_face_example_workflow_runs(dirs):
    """Portrait + driving video → rendered target geometry video, with the core nodes it uses stood in."""
    input_dir = dirs / "input"
    for asset in ASSETS.glob("talkingface_face_*"):
        (input_dir / asset.name).write_bytes(asset.read_bytes())
    recorded = workflow_runner.run_workflow(WORKFLOW, pack.NODE_CLASS_MAPPINGS)
    renders = recorded[12]["images"]
    assert renders.shape == (8, 256, 256, 3)
    assert float(renders.mean()) > 0.05  # a lit face, not a black frame
    side_by_side = recorded[14]["images"]
    assert side_by_side.shape == (8, 192, 384, 3)
    # The render carries the portrait's skin tone (texture and light fitted from the source crop).
    portrait, _ = workflow_runner.load_image_file(ASSETS / "talkingface_face_portrait.png")
    skin = portrait[0][portrait[0].mean(-1) > 0.3].mean(0)
    covered = renders[0].mean(-1) > 0.3  # skin, not hair or brows, as for the portrait
    assert torch.allclose(renders[0][covered].mean(0), skin, atol=0.08), (renders[0][covered].mean(0), skin)


def test_committed_face_assets_are_what_the_script_writes(tmp_path):
    subprocess.run([sys.executable, "-m", "scripts.tiny_insightface", "--assets", str(tmp_path)], cwd=PACK_ROOT,
                   check=True, capture_output=True, text=True)
    for written in sorted(tmp_path.iterdir()):
        committed = ASSETS / written.name
        assert committed.is_file(), f"tests/assets/{written.name} is missing: run python -m scripts.tiny_insightface --assets tests/assets"
        fresh, kept = workflow_runner.load_image_file(written)[0], workflow_runner.load_image_file(committed)[0]
        assert fresh.shape == kept.shape
        # Renders may differ by a rounding step between machines; anything more means the asset is stale.
        assert float((fresh - kept).abs().max()) <= 2.0 / 255.0, f"tests/assets/{written.name} is stale"


def test_face_regressor_loads_from_the_3dmm_folder_and_starts_the_fit(epoch_20, tmp_path, monkeypatch):  # noqa: F811
    models = tmp_path / "models"
    (models / "3dmm" / "BFM_Fitting").mkdir(parents=True)
    (models / "3dmm" / "BFM_Fitting" / "epoch_20.pth").symlink_to(epoch_20)
    monkeypatch.setenv("TALKINGFACE_MODELS_DIR", str(models))
    face_model = morphable_nodes.Load3DMM().execute(model_name="demo face (built-in)")[0]
    # SadTalker's BFM_Fitting/ holds the landmark template beside the weights; here the demo face's own.
    savemat(models / "3dmm" / "BFM_Fitting" / "similarity_Lm3D_all.mat",
                     {"lm": face_model.mean_shape[face_model.landmark_ids].numpy()})
    choices = face_nodes.LoadFaceRegressor.INPUT_TYPES()["required"]["weights"][0]
    assert choices == ["3dmm/BFM_Fitting/epoch_20.pth"]
    loaded = face_nodes.LoadFaceRegressor().execute(weights=choices[0], refine="pose")[0]
    assert loaded.template is not None and loaded.refine_groups == ("rotation", "translation")
    with pytest.raises(base.NodeInputError, match="Load Face Regressor: .*epoch_20.pth.*ComfyUI/models/3dmm/"):
        face_nodes.LoadFaceRegressor().execute(weights="3dmm/epoch_20.pth", refine="pose")
    coeffs = coefficients.FaceCoefficients.neutral(1, face_model.dims)
    coeffs.rotation[0, 1] = 0.2
    maps = renderer_module.FaceRenderer(face_model, camera_module.PerspectiveCamera.deep3d(224)).render(coeffs)
    faces = faces_module.faces_from_landmarks(maps.image, maps.landmarks)
    fitted, error = face_nodes.Fit3DMM().execute(faces=faces, face_model=face_model, estimate_appearance=False,
                                                 video_mode="fast", temporal_smoothing=0.5, expression_prior=1.0,
                                                 batch_size=4, regressor=loaded)
    # Untrained heads (zero, as Deep3DFaceRecon starts) predict the mean face; only the pose is refined.
    assert not fitted.identity.any() and not fitted.expression.any()
    assert torch.isfinite(fitted.to_flat()).all() and error < 3.0
    assert float(fitted.rotation[0, 1]) == pytest.approx(0.2, abs=0.05)
