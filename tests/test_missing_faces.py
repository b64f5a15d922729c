"""Frames without a face never stop a video job: each no-face policy end to end through the nodes
(Analyze Faces → Fit 3DMM → Render 3DMM Target → Paste Back), with 10% of the frames faceless and with
no face at all."""
import pytest
import torch
import workflow_runner
from packloader import PACK_ROOT, load_pack, pack_import
from test_face_analysis import ensure_tiny_insightface

load_pack()
face_nodes = pack_import("nodes.face")
base = pack_import("nodes.base")
morphable_nodes = pack_import("nodes.morphable")
render_nodes = pack_import("nodes.render")
ASSETS = PACK_ROOT / "tests" / "assets"
FACELESS = [5, 14]  # 2 of 20 frames


@pytest.fixture(scope="module")
def analyzer(tiny_models_dir):
    ensure_tiny_insightface(tiny_models_dir)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TALKINGFACE_MODELS_DIR", str(tiny_models_dir))
        return face_nodes.LoadFaceAnalyzer().execute(pack="buffalo_l", provider="CPU", detection_size=640,
                                                     detection_threshold=0.5)[0]


@pytest.fixture(scope="module")
def video():
    """20 frames of the driving clip (it loops) with frames 5 and 14 black: a cut or a covered face."""
    clip, _ = workflow_runner.load_image_file(ASSETS / "talkingface_face_driving.png")
    frames = clip[torch.arange(20) % clip.shape[0]].clone()
    frames[FACELESS] = 0.0
    return frames


@pytest.fixture(scope="module")
def face_model():
    return morphable_nodes.Load3DMM().execute(model_name="demo face (built-in)")[0]


def analyze(analyzer, images, policy, **options):
    settings = dict(selection="largest", face_index=0, missing_faces=policy, crop_size=256, crop_margin=0.0,
                    smoothing=0.3, fps=25.0)
    settings.update(options)
    return face_nodes.AnalyzeFaces().execute(analyzer=analyzer, images=images, **settings)


def render_and_paste(faces, face_model):
    """The rest of a video job: fit, render the target geometry, paste the render back into the frames."""
    coeffs, error = face_nodes.Fit3DMM().execute(faces=faces, face_model=face_model, estimate_appearance=False,
                                                 video_mode="fast", temporal_smoothing=0.5, expression_prior=1.0,
                                                 batch_size=8)
    assert coeffs.frames == faces.frames and torch.isfinite(coeffs.to_flat()).all()
    render, mask, _, _ = render_nodes.Render3DMMTarget().execute(face_model=face_model, coefficients=coeffs,
                                                                 resolution=256, batch_size=8)
    return face_nodes.PasteBack().execute(faces=faces, generated=render, face_mask=mask, region="full_face",
                                          erode=2, blur=4, colour_match=False)


def test_interpolate_fills_the_faceless_frames_and_pastes_there_too(analyzer, video, face_model):
    faces, crops = analyze(analyzer, video, "interpolate", smoothing=0.0)
    assert torch.nonzero(~faces.detected).flatten().tolist() == FACELESS
    assert not faces.untouched.any()
    assert any("frame(s) 5, 14" in note and "interpolation" in note for note in faces.notes)
    # The filled face lies between its neighbours.
    assert torch.allclose(faces.keypoints[5], (faces.keypoints[4] + faces.keypoints[6]) / 2, atol=1e-3)
    pasted, mask = render_and_paste(faces, face_model)
    assert pasted.shape == video.shape
    assert all(float(mask[t].max()) > 0.5 for t in range(20))  # a face is pasted into every frame


def test_pass_through_leaves_the_faceless_frames_exactly_as_they_were(analyzer, video, face_model):
    faces, crops = analyze(analyzer, video, "pass_through")
    assert torch.nonzero(faces.untouched).flatten().tolist() == FACELESS
    assert any("frame(s) 5, 14" in note and "pass through" in note for note in faces.notes)
    pasted, mask = render_and_paste(faces, face_model)
    for t in range(20):
        if t in FACELESS:
            assert torch.equal(pasted[t], video[t]) and not mask[t].any(), t
        else:
            assert float(mask[t].max()) > 0.5 and not torch.equal(pasted[t], video[t]), t
    # The lower-face region too (it needs the landmarks only of the frames it changes).
    render = torch.zeros(20, 256, 256, 3)
    lower, _ = face_nodes.PasteBack().execute(faces=faces, generated=render, face_mask=torch.ones(1, 256, 256),
                                              region="lower_face", erode=0, blur=2, colour_match=True)
    assert torch.equal(lower[FACELESS], video[FACELESS])


def test_error_names_the_faceless_frames(analyzer, video):
    with pytest.raises(base.NodeInputError, match=r"Analyze Faces: images: no face .* frame\(s\) 5, 14 of 20.*pass_through"):
        analyze(analyzer, video, "error")


@pytest.mark.parametrize("policy", ["interpolate", "error"])
def test_a_video_without_any_face_fails_clearly_unless_it_passes_through(analyzer, policy):
    with pytest.raises(base.NodeInputError, match="Analyze Faces: images: no face found in any of the 6 frames.*'pass_through'"):
        analyze(analyzer, torch.zeros(6, 128, 160, 3), policy)


def test_a_video_without_any_face_passes_through_the_whole_job(analyzer, face_model):
    frames = torch.rand(6, 128, 160, 3, generator=torch.Generator().manual_seed(0)) * 0.05  # dark noise, no face
    faces, crops = analyze(analyzer, frames, "pass_through")
    assert faces.untouched.all() and not faces.detected.any() and crops.shape == (6, 256, 256, 3)
    assert any("every frame passes through" in note for note in faces.notes)
    pasted, mask = render_and_paste(faces, face_model)
    assert torch.equal(pasted, frames) and not mask.any()
    preview = face_nodes.DrawFaceLandmarks().execute(faces=faces, point_size=1)[0]
    assert preview.shape == frames.shape


def test_a_portrait_without_a_face_passes_through_into_every_output_frame(analyzer, face_model):
    portrait = torch.full((1, 96, 96, 3), 0.02)
    faces, _ = analyze(analyzer, portrait, "pass_through")
    pasted, mask = face_nodes.PasteBack().execute(faces=faces, generated=torch.rand(3, 256, 256, 3),
                                                  face_mask=torch.ones(1, 256, 256), region="full_face", erode=0,
                                                  blur=0, colour_match=False)
    assert torch.equal(pasted, portrait.expand(3, -1, -1, -1)) and not mask.any()


def test_fps_comes_from_the_widget_or_from_video_helper_suite(analyzer, video):
    faces, _ = analyze(analyzer, video[:4], "interpolate", fps=12.0)
    assert faces.fps == 12.0
    info = {"source_fps": 30.0, "loaded_fps": 15.0, "loaded_frame_count": 4}
    faces, _ = analyze(analyzer, video[:4], "interpolate", fps=12.0, video_info=info)
    assert faces.fps == 15.0
    with pytest.raises(base.NodeInputError, match="Analyze Faces: video_info has no usable frame rate"):
        analyze(analyzer, video[:4], "interpolate", video_info={"loaded_fps": 0})


def test_unscaled_8_and_16_bit_pixels_are_refused_with_the_divisor(analyzer, video):
    with pytest.raises(base.NodeInputError, match=r"Analyze Faces: .*go up to 1\d\d; .*divide by 255 \(8-bit\)"):
        analyze(analyzer, video[:2] * 255.0, "interpolate")
    with pytest.raises(base.NodeInputError, match="Analyze Faces: .*divide by 65535"):
        analyze(analyzer, video[:2] * 65535.0, "interpolate")
    with pytest.raises(base.NodeInputError, match="Analyze Faces: .*torch.uint8"):
        analyze(analyzer, (video[:2] * 255).to(torch.uint8), "interpolate")
