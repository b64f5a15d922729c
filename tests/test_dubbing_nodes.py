"""Load Dubbing Model and Dub Video as ComfyUI runs them, on the tiny models of scripts/tiny_models."""
import pytest
import torch
from packloader import load_pack, pack_import

pack = load_pack()
dubbing_nodes = pack_import("nodes.dubbing")
generator_nodes = pack_import("nodes.generator")
audio_nodes = pack_import("nodes.audio")
nodes_base = pack_import("nodes.base")
dubbing = pack_import("pipelines.generator.dubbing")
faces_module = pack_import("pipelines.face.faces")
audio_synthetic = pack_import("pipelines.training.audio_synthetic")
demo_model = pack_import("pipelines.morphable.demo_model")

DUBBING_FILE = "dubbing.safetensors"
AUDIO_MODEL_FILE = "audio_landmarks.safetensors"


@pytest.fixture(scope="module")
def clip():
    return audio_synthetic.synthetic_clip(demo_model.demo_face_model(resolution=12), seconds=1.0, seed=5)


def dub(clip, faces, **changes):
    model = dubbing_nodes.LoadDubbingModel().execute(checkpoint=DUBBING_FILE, precision="auto")[0]
    motion = audio_nodes.LoadAudioToMotionModel().execute(model_name=AUDIO_MODEL_FILE)[0]
    inputs = dict(dubbing_model=model, motion_model=motion, faces=faces,
                  audio={"waveform": clip.audio[:9600].reshape(1, 1, -1).repeat(1, 2, 1), "sample_rate": 16000},
                  fps=25.0, length_policy="loop", mask_top_shift=0.0, feather=6, sampler="ddim", steps=2, seed=0,
                  landmark_guidance=1.0, batch_size=4, chunk_size=8)
    inputs.update(changes)
    return dubbing_nodes.DubVideo().execute(**inputs)


def test_the_nodes_are_registered():
    assert pack.NODE_CLASS_MAPPINGS["TalkingFaceDubVideo"] is dubbing_nodes.DubVideo
    assert pack.NODE_DISPLAY_NAME_MAPPINGS["TalkingFaceLoadDubbingModel"] == "Load Dubbing Model"


def test_dub_video_returns_frames_audio_and_masks(host_dirs, clip):
    images = torch.rand(6, 80, 80, 3, generator=torch.Generator().manual_seed(0))
    faces = faces_module.faces_from_landmarks(images, clip.landmarks[:6] * (80 / 224))
    frames, audio, masks = dub(clip, faces)
    assert frames.shape == (15, 80, 80, 3) and masks.shape == (15, 80, 80)  # 0.6 s at 25 fps, the video looped
    assert audio["waveform"].shape == (1, 2, 9600) and audio["sample_rate"] == 16000
    assert torch.equal(frames[:, :10], images[[i % 6 for i in range(15)], :10])  # above the face: untouched


def test_wrong_checkpoints_name_the_loader_to_use(host_dirs, clip):
    with pytest.raises(nodes_base.NodeInputError, match="^Load Dubbing Model: .*TGDM generator.*Load Generator"):
        dubbing_nodes.LoadDubbingModel().execute(checkpoint="tgdm_tiny_32px.safetensors", precision="auto")
    with pytest.raises(nodes_base.NodeInputError, match="^Load Generator: .*dubbing model.*Load Dubbing Model"):
        generator_nodes.LoadGenerator().execute(checkpoint=DUBBING_FILE, precision="auto")
    with pytest.raises(nodes_base.NodeInputError, match="^Load Dubbing Model: .*not found.*ComfyUI/models/talkingface/"):
        dubbing_nodes.LoadDubbingModel().execute(checkpoint="absent.safetensors", precision="auto")


def test_dub_video_errors_name_the_node(host_dirs, clip):
    still = faces_module.faces_from_landmarks(torch.rand(1, 80, 80, 3), clip.landmarks[:1] * (80 / 224))
    with pytest.raises(nodes_base.NodeInputError, match="^Dub Video: .*single frame"):
        dub(clip, still)
    faces = faces_module.faces_from_landmarks(torch.rand(3, 80, 80, 3), clip.landmarks[:3] * (80 / 224))
    with pytest.raises(nodes_base.NodeInputError, match="^Dub Video: .*fps"):
        dub(clip, faces, fps=0.0)
    with pytest.raises(nodes_base.NodeInputError, match="^Dub Video: .*NaN"):
        dub(clip, faces, audio={"waveform": torch.full((1, 1, 800), float("nan")), "sample_rate": 16000})


def test_a_latent_dubbing_model_needs_its_vae(host_dirs, clip):
    torch.manual_seed(0)
    config = dubbing.DubbingConfig(space="latent", image_size=8, base_channels=8, channel_multipliers=(1, 2),
                                   attention_resolutions=(8,), attention_head_channels=8, reference_base_channels=8,
                                   reference_frames=2, norm_groups=4, token_width=8, coordinate_frequencies=2)
    dubbing.save_dubbing(dubbing.DubbingDenoiser(config), host_dirs["models"] / "talkingface" / "dub_latent_test.safetensors")
    with pytest.raises(nodes_base.NodeInputError, match="latent-mode generator.*ComfyUI/models/vae/"):
        dubbing_nodes.LoadDubbingModel().execute(checkpoint="dub_latent_test.safetensors", precision="auto")
    loaded = dubbing_nodes.LoadDubbingModel().execute(checkpoint="dub_latent_test.safetensors", precision="auto",
                                                      vae_name="vae-ft-mse-840000-ema-pruned.safetensors")[0]
    faces = faces_module.faces_from_landmarks(torch.rand(3, 80, 80, 3), clip.landmarks[:3] * (80 / 224))
    frames, _, masks = dub(clip, faces, dubbing_model=loaded, steps=1, length_policy="cut_to_shorter")
    assert frames.shape == (3, 80, 80, 3) and masks.amax() > 0.5
    (host_dirs["models"] / "talkingface" / "dub_latent_test.safetensors").unlink()


def test_progress_shows_a_preview_of_the_frames_done(monkeypatch):
    import types

    host = pack_import("nodes.host")
    calls = []

    class Bar:
        def __init__(self, total):
            self.total, self.current = total, 0

        def update(self, steps):
            self.current += steps

        def update_absolute(self, value, total=None, preview=None):
            self.current = value
            calls.append((value, preview))

    monkeypatch.setattr(host, "IN_COMFYUI", True)
    monkeypatch.setattr(host, "comfy_utils", types.SimpleNamespace(ProgressBar=Bar))
    progress = host.Progress(10)
    progress.advance(3)
    progress.advance(0, preview=torch.rand(8, 6, 3))
    (value, (kind, image, size)), = calls
    assert value == 3 and kind == "JPEG" and image.size == (6, 8) and size == host.PREVIEW_SIZE


def two_speakers(frames: int = 4):
    """Two demo-face people side by side on a dark wall (left: seed 1, right: seed 2), ``[T, 160, 336, 3]``,
    and a photo of the right one alone."""
    from test_video_shards import talking_frames

    # Facing the camera: the tiny recognition model of the tests tells people apart, not poses.
    left, right = (torch.from_numpy(talking_frames(seed, frames, turn=0.0)).float() / 255 for seed in (1, 2))
    wall = left[:, :, :16] * 0 + torch.tensor([0.06, 0.07, 0.1])
    photo = torch.cat([wall[:1].expand(1, 160, 16, 3)] * 5 + [right[1:2]] + [wall[:1].expand(1, 160, 16, 3)] * 5, dim=2)
    return torch.cat([left, wall, right], dim=2), photo


def test_dub_video_speaker_nearest_to_a_reference_face(host_dirs, clip):
    """Who speaks is Analyze Faces' choice, as for Face Swap: most_similar with a reference_image follows the
    person nearest that face, and Dub Video regenerates that person's mouth only."""
    face_nodes = pack_import("nodes.face")
    from test_face_analysis import ensure_tiny_insightface

    ensure_tiny_insightface(host_dirs["models"])
    analyzer = face_nodes.LoadFaceAnalyzer().execute(pack="buffalo_l", provider="auto", detection_size=640,
                                                     detection_threshold=0.5)[0]
    frames, photo = two_speakers()

    def analyze(selection, reference_image=None):
        inputs = dict(analyzer=analyzer, images=frames, selection=selection, face_index=0, missing_faces="interpolate",
                      crop_size=256, crop_margin=0.0, smoothing=0.0, fps=25.0)
        if reference_image is not None:
            inputs["reference_image"] = reference_image
        return face_nodes.AnalyzeFaces().execute(**inputs)[0]

    half = frames.shape[2] // 2
    for selection, reference, speaker in (("most_similar", photo, "right"), ("left_to_right", None, "left")):
        faces = analyze(selection, reference)
        assert bool(faces.detected.all())
        _, _, masks = dub(clip, faces, length_policy="cut_to_shorter")
        left, right = masks[..., :half].sum(), masks[..., half:].sum()
        assert (right > 0 and left == 0) if speaker == "right" else (left > 0 and right == 0), (selection, left, right)
    with pytest.raises(nodes_base.NodeInputError, match="^Analyze Faces: .*most_similar.*connect a reference_image"):
        analyze("most_similar")
    with pytest.raises(nodes_base.NodeInputError, match="^Analyze Faces: no face found in reference_image 0"):
        analyze("most_similar", torch.zeros(1, 160, 160, 3))
