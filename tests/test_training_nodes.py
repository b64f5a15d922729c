"""Prepare Training Footage and Train Generator end to end with tiny models: the shards, resuming a
cancelled run exactly, never overwriting, and each bad input named."""
import pytest
import torch
import workflow_runner
from packloader import PACK_ROOT, load_pack, pack_import
from safetensors.torch import load_file
from test_face_analysis import ensure_tiny_insightface

pack = load_pack()
training_nodes = pack_import("nodes.training")
face_nodes = pack_import("nodes.face")
morphable_nodes = pack_import("nodes.morphable")
base_nodes = pack_import("nodes.base")
footage_module = pack_import("pipelines.training.footage")
finetune = pack_import("pipelines.training.finetune")
shards_module = pack_import("pipelines.training.video_shards")
tgdm_training = pack_import("pipelines.training.tgdm")
checkpoint = pack_import("pipelines.generator.checkpoint")
errors = pack_import("pipelines.errors")
ASSETS = PACK_ROOT / "tests" / "assets"
DEMO = "tgdm_demo_64px.safetensors"
# A generator from scratch at toy size: a few CPU steps take about a second.
TINY = dict(resolution=32, channels=8, learning_rate=1e-3, preview_every=0)


@pytest.fixture(scope="module")
def analyzer(tiny_models_dir):
    ensure_tiny_insightface(tiny_models_dir)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TALKINGFACE_MODELS_DIR", str(tiny_models_dir))
        return face_nodes.LoadFaceAnalyzer().execute(pack="buffalo_l", provider="auto", detection_size=640,
                                                     detection_threshold=0.5)[0]


@pytest.fixture(scope="module")
def face_model():
    return morphable_nodes.Load3DMM().execute(model_name="demo face (built-in)")[0]


def analyze(analyzer, images, crop_size=256, missing="interpolate"):
    return face_nodes.AnalyzeFaces().execute(
        analyzer=analyzer, images=images, selection="largest", face_index=0, missing_faces=missing,
        crop_size=crop_size, crop_margin=0.0, smoothing=0.3, fps=25.0)[0]


@pytest.fixture(scope="module")
def video():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TALKINGFACE_INPUT_DIR", str(ASSETS))
        return workflow_runner._load_video("talkingface_face_driving.mp4")[0]["images"]


@pytest.fixture(scope="module")
def faces(analyzer, video):
    return analyze(analyzer, video)


@pytest.fixture(scope="module")
def footage(faces, face_model, tmp_path_factory):
    """The driving clip's 24 frames prepared once for the module (through the pipeline the node calls)."""
    folder = tmp_path_factory.mktemp("footage") / "person"
    footage_module.prepare_footage(faces, face_model, folder, shards_module.PreprocessSettings(crop_size=256))
    return footage_module.footage_in(folder, face_model)


def train(footage, name="person_tgdm", base=training_nodes.FROM_SCRATCH, steps=3, batch_size=4, **changes):
    inputs = dict(footage=footage, name=name, base=base, steps=steps, batch_size=batch_size, time_limit_minutes=0.0,
                  seed=0, **{**TINY, **changes})
    return training_nodes.TrainGenerator().execute(**inputs)


@pytest.mark.parametrize("node_class", training_nodes.TRAINING_NODES, ids=lambda c: c.__name__)
def test_every_input_has_a_tooltip_and_widgets_have_defaults(node_class):
    for name, entry in node_class.INPUT_TYPES()["required"].items():
        assert entry[1].get("tooltip"), name
        if entry[0] in ("INT", "FLOAT", "STRING"):
            assert "default" in entry[1], name
    assert node_class.CATEGORY == "TalkingFace/train"
    assert len(node_class.OUTPUT_TOOLTIPS) == len(node_class.RETURN_TYPES)
    assert f"TalkingFace{node_class.__name__}" in pack.NODE_CLASS_MAPPINGS


def test_prepare_writes_shards_once_and_adds_other_clips(host_dirs, analyzer, faces, face_model, video):
    node = training_nodes.PrepareTrainingFootage()
    prepared, preview = node.execute(faces=faces, face_model=face_model, folder="my_person")
    folder = host_dirs["output"] / "talkingface_footage" / "my_person"
    assert prepared.folder == folder and prepared.frames == 24 and prepared.crop_size == 256
    assert preview.shape == (8, 256, 512, 3) and 0 <= preview.min() and preview.max() <= 1
    shards = shards_module.VideoFaceShards(folder)
    assert len(shards) == 24 and shards.photos.shape == (24, 256, 256, 3)
    assert (shards.renders[:].amax(-1) > 0).float().mean() > 0.2, "the renders show the fitted face"
    files = sorted((folder / "shards").iterdir())
    written = {path: path.stat().st_mtime_ns for path in files}
    again, _ = node.execute(faces=faces, face_model=face_model, folder="my_person")
    assert again.frames == 24 and len(shards_module.read_manifest(folder)["videos"]) == 1
    assert {path: path.stat().st_mtime_ns for path in sorted((folder / "shards").iterdir())} == written, \
        "the same frames are found done, not written again"
    other = analyze(analyzer, video[:12].flip(2))  # another clip of the person: mirrored, shorter
    more, _ = node.execute(faces=other, face_model=face_model, folder="my_person")
    assert more.frames == 36 and len(shards_module.read_manifest(folder)["videos"]) == 2


def test_prepare_names_footage_without_a_face(host_dirs, analyzer, face_model):
    blank = torch.zeros(4, 96, 96, 3)  # black: the tiny detector finds nothing there
    faces = analyze(analyzer, blank, missing="pass_through")
    with pytest.raises(base_nodes.NodeInputError, match="Prepare Training Footage: no face was found in any of the 4 frames"):
        training_nodes.PrepareTrainingFootage().execute(faces=faces, face_model=face_model, folder="blank")
    assert not (host_dirs["output"] / "talkingface_footage" / "blank" / "shards").exists()


def test_prepare_refuses_frames_of_another_size_in_one_folder(host_dirs, analyzer, faces, face_model, video):
    node = training_nodes.PrepareTrainingFootage()
    node.execute(faces=faces, face_model=face_model, folder="sized")
    larger = analyze(analyzer, video[:2], crop_size=512)
    with pytest.raises(base_nodes.NodeInputError, match="holds 256 px crops .* set crop_size to 256, or give another folder"):
        node.execute(faces=larger, face_model=face_model, folder="sized")
    with pytest.raises(base_nodes.NodeInputError, match="folder '../up' is not a plain name"):
        node.execute(faces=faces, face_model=face_model, folder="../up")


def test_train_from_a_base_saves_a_new_generator_the_sampler_takes(host_dirs, footage, caplog):
    with torch.inference_mode(), caplog.at_level("INFO"):  # as ComfyUI runs every node
        generator, name = train(footage, base=DEMO, resolution=64, steps=2, batch_size=2, preview_every=1)
    assert "Train Generator: saved " in caplog.text and "after 2 steps (batch_size 2)" in caplog.text
    path = host_dirs["models"] / "talkingface" / "person_tgdm.safetensors"
    assert name == "person_tgdm.safetensors" and path.is_file()
    base = checkpoint.load_tgdm(PACK_ROOT / "assets" / DEMO)
    trained = checkpoint.load_tgdm(path)
    assert trained.config == base.config and checkpoint.read_tgdm_metadata(path)["training_step"] == "2"
    changed = [key for key, value in trained.state_dict().items() if not torch.equal(value, base.state_dict()[key])]
    assert changed, "fine-tuning moved the weights"
    assert generator.model.config == base.config and generator.name == name
    assert name in pack_import("nodes.host").list_models("talkingface"), "Load Generator lists it"
    assert not (host_dirs["output"] / "talkingface_training" / "person_tgdm").exists(), "a finished run leaves no state"


def test_previews_show_truth_and_sample_every_n_steps(tmp_path, footage):
    shown = []
    settings = finetune.FinetuneSettings(steps=4, batch_size=2, resolution=32, channels=8, preview_every=2)
    finetune.finetune_generator(footage, tmp_path / "out.safetensors", tmp_path / "run", settings,
                                on_step=lambda step, loss, image: shown.append((step, image)), log=lambda line: None)
    assert [step for step, _ in shown] == [1, 2, 3, 4]
    previews = [image for _, image in shown if image is not None]
    assert len(previews) == 2 and previews[0].shape == (32, 64, 3)
    assert 0 <= previews[0].min() and previews[0].max() <= 1


class Cancelled(Exception):
    """What ComfyUI's Cancel raises inside the progress callback."""


def test_a_cancelled_run_resumes_exactly_where_it_stopped(tmp_path, footage):
    settings = finetune.FinetuneSettings(steps=5, batch_size=2, resolution=32, channels=8, preview_every=0,
                                         learning_rate=1e-3)
    straight = finetune.finetune_generator(footage, tmp_path / "straight.safetensors", tmp_path / "run1", settings,
                                           log=lambda line: None)

    def cancel_at_3(step, loss, image):
        if step == 3:
            raise Cancelled

    with pytest.raises(Cancelled):
        finetune.finetune_generator(footage, tmp_path / "resumed.safetensors", tmp_path / "run2", settings,
                                    on_step=cancel_at_3, log=lambda line: None)
    assert not (tmp_path / "resumed.safetensors").exists()
    assert (tmp_path / "run2" / "training_state" / "trainer_state.json").is_file()
    steps = []
    resumed = finetune.finetune_generator(footage, tmp_path / "resumed.safetensors", tmp_path / "run2", settings,
                                          on_step=lambda step, loss, image: steps.append(step), log=lambda line: None)
    assert steps == [4, 5] and resumed.step == 5 and "continued the interrupted run from step 3" in resumed.notes[0]
    first, second = load_file(str(straight.path)), load_file(str(resumed.path))
    assert all(torch.equal(first[key], second[key]) for key in first), "resuming gives the uninterrupted weights"
    other = finetune.FinetuneSettings(**{**settings.__dict__, "channels": 16})
    with pytest.raises(Cancelled):
        finetune.finetune_generator(footage, tmp_path / "third.safetensors", tmp_path / "run3", settings,
                                    on_step=cancel_at_3, log=lambda line: None)
    with pytest.raises(errors.TalkingFaceError, match="interrupted run of this name .* 8 channels"):
        finetune.finetune_generator(footage, tmp_path / "third.safetensors", tmp_path / "run3", other)


def test_training_never_overwrites_a_file(host_dirs, footage):
    existing = host_dirs["models"] / "talkingface" / "taken.safetensors"
    existing.write_bytes(b"the user's own file")
    with pytest.raises(base_nodes.NodeInputError, match=r"Train Generator: .*taken\.safetensors exists already .* 'taken_2'"):
        train(footage, name="taken")
    assert existing.read_bytes() == b"the user's own file"
    with pytest.raises(base_nodes.NodeInputError, match="name '../taken' is not a plain name"):
        train(footage, name="../taken")


def test_a_base_of_another_resolution_or_kind_is_named(host_dirs, footage):
    with pytest.raises(base_nodes.NodeInputError, match=f"base '{DEMO}' is a 64 px generator .*16 channels.* set resolution to 64"):
        train(footage, base=DEMO, resolution=32)
    with pytest.raises(base_nodes.NodeInputError, match="base 'tgdm_latent.safetensors' is a latent-mode generator"):
        train(footage, base="tgdm_latent.safetensors", resolution=64)
    with pytest.raises(base_nodes.NodeInputError, match="dubbing.safetensors is a dubbing model"):
        train(footage, base="dubbing.safetensors")
    assert "Train Generator: base: " in training_nodes.TrainGenerator.VALIDATE_INPUTS(base="missing.safetensors")


def test_footage_shorter_than_a_batch_is_named(host_dirs, footage):
    with pytest.raises(base_nodes.NodeInputError, match="24 usable frames, fewer than batch_size 32: lower batch_size to 24"):
        train(footage, batch_size=32)


def test_out_of_memory_halves_the_batch_and_names_what_fits(tmp_path, footage, monkeypatch):
    real_step = tgdm_training.TGDMTrainer.training_step
    limit = {"batch": 2}

    def step_within_memory(trainer, views):
        if trainer.settings.batch_size > limit["batch"]:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_step(trainer, views)

    monkeypatch.setattr(tgdm_training.TGDMTrainer, "training_step", step_within_memory)
    settings = finetune.FinetuneSettings(steps=2, batch_size=8, resolution=32, channels=8, preview_every=0)
    result = finetune.finetune_generator(footage, tmp_path / "fits.safetensors", tmp_path / "run", settings,
                                         log=lambda line: None)
    assert result.batch_size == 2 and result.step == 2 and result.path.is_file()
    assert "batch_size 8 ran out of memory; continuing with 4" in result.notes[0]
    assert "batch_size 2 fits in memory" in result.notes
    limit["batch"] = 0
    with pytest.raises(errors.TalkingFaceError, match="out of memory even with batch_size 1 at resolution 32") as caught:
        finetune.finetune_generator(footage, tmp_path / "none.safetensors", tmp_path / "run_none", settings,
                                    log=lambda line: None)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


audio_io = pack_import("pipelines.audio.io")


def speech_for(frames, fps=25.0, rate=22050, short_seconds=0.0, seed=0):
    """A stereo AUDIO of noise as long as ``frames`` frames at ``fps``, less ``short_seconds``."""
    generator = torch.Generator().manual_seed(seed)
    samples = round((frames / fps - short_seconds) * rate)
    return {"waveform": (0.2 * torch.randn(1, 2, samples, generator=generator)).clamp(-1, 1), "sample_rate": rate}


def test_prepare_keeps_the_speech_and_other_audio_is_another_clip(host_dirs, faces, face_model):
    node = training_nodes.PrepareTrainingFootage()
    speech = speech_for(24)
    node.execute(faces=faces, face_model=face_model, folder="speaking", audio=speech)
    folder = host_dirs["output"] / "talkingface_footage" / "speaking"
    shards = shards_module.VideoFaceShards(folder)
    video = shards.video_indices[0]
    assert shards.has_audio(video) and shards.video_fps(video) == 25.0
    stored = shards.clip_audio(shards.video_rows(video))
    expected = audio_io.prepare_speech(speech).samples  # mono 16 kHz, from the first frame
    assert stored.shape == (24 * 640,)
    assert (stored[:expected.shape[0]] - expected[:24 * 640]).abs().max() <= 1 / 32767 + 1e-6
    files = sorted((folder / "shards").iterdir())
    written = {path: path.stat().st_mtime_ns for path in files}
    node.execute(faces=faces, face_model=face_model, folder="speaking", audio=speech)
    assert len(shards_module.read_manifest(folder)["videos"]) == 1, "the same frames and sound are found done"
    node.execute(faces=faces, face_model=face_model, folder="speaking", audio=speech_for(24, seed=1))
    listed = shards_module.read_manifest(folder)["videos"]
    assert len(listed) == 2 and listed[0]["name"] != listed[1]["name"], "other audio is another clip"
    assert {path: path.stat().st_mtime_ns for path in files} == written, "nothing of the first clip is written over"
    with pytest.raises(base_nodes.NodeInputError,
                       match=r"Prepare Training Footage: audio: it lasts 0\.88 s but the 24 frames last 0\.96 s at 25 fps"):
        node.execute(faces=faces, face_model=face_model, folder="speaking", audio=speech_for(24, short_seconds=0.08))
    assert len(shards_module.read_manifest(folder)["videos"]) == 2


def test_footage_audio_pads_up_to_one_frame_and_cuts_longer_audio():
    half_frame_short = footage_module.footage_audio(speech_for(10, short_seconds=0.02), 10, 25.0)
    assert half_frame_short.samples.shape == (6400,) and half_frame_short.samples[-300:].abs().max() == 0
    longer = footage_module.footage_audio(speech_for(30), 10, 25.0)
    assert longer.samples.shape == (6400,) and longer.frame_rate == 25.0
    with pytest.raises(errors.TalkingFaceError, match="audio: it lasts 0.36 s but the 10 frames last 0.40 s"):
        footage_module.footage_audio(speech_for(10, short_seconds=0.04 + 0.001), 10, 25.0)


finetune_dubbing = pack_import("pipelines.training.finetune_dubbing")
dubbing_model = pack_import("pipelines.generator.dubbing")
TINY_DUBBING = dict(resolution=32, channels=8, learning_rate=1e-3)


def train_dubbing(footage, name="person_dubbing", base=training_nodes.FROM_SCRATCH, steps=2, batch_size=2, **changes):
    inputs = dict(footage=footage, name=name, base=base, steps=steps, batch_size=batch_size, time_limit_minutes=0.0,
                  seed=0, **{**TINY_DUBBING, **changes})
    return training_nodes.TrainDubbingModel().execute(**inputs)


def test_train_dubbing_model_saves_a_model_dub_video_takes(host_dirs, footage):
    with torch.inference_mode():
        loaded, name, motion = train_dubbing(footage)
    assert motion is None, "no motion model trained without one connected"
    path = host_dirs["models"] / "talkingface" / name
    assert name == "person_dubbing.safetensors" and path.is_file()
    model = dubbing_model.load_dubbing(path)
    assert model.config.pixel_size == 32 and model.config.base_channels == 8 and model.config.fps == 25.0
    assert loaded.model.config == model.config and loaded.name == name
    with pytest.raises(base_nodes.NodeInputError, match=r"person_dubbing\.safetensors exists already"):
        train_dubbing(footage)
    with pytest.raises(base_nodes.NodeInputError, match="base 'dubbing.safetensors' is a 32 px dubbing model .* set resolution to 32"):
        train_dubbing(footage, name="other", base="dubbing.safetensors", resolution=64)
    with pytest.raises(base_nodes.NodeInputError, match="is a TGDM generator checkpoint, not a dubbing model"):
        train_dubbing(footage, name="other", base=DEMO)
    with pytest.raises(base_nodes.NodeInputError, match="24 usable frames, fewer than batch_size 64"):
        train_dubbing(footage, name="other", batch_size=64)


def test_a_cancelled_dubbing_run_resumes_exactly(tmp_path, footage):
    settings = finetune_dubbing.DubbingFinetuneSettings(steps=4, batch_size=2, resolution=32, channels=8,
                                                        learning_rate=1e-3, validate_every=2)
    straight = finetune_dubbing.finetune_dubbing(footage, tmp_path / "straight.safetensors", tmp_path / "run1", settings,
                                                 log=lambda line: None)

    def cancel_at_3(step, loss):
        if step == 3:
            raise Cancelled

    with pytest.raises(Cancelled):
        finetune_dubbing.finetune_dubbing(footage, tmp_path / "resumed.safetensors", tmp_path / "run2", settings,
                                          on_step=cancel_at_3, log=lambda line: None)
    assert not (tmp_path / "resumed.safetensors").exists()
    steps = []
    resumed = finetune_dubbing.finetune_dubbing(footage, tmp_path / "resumed.safetensors", tmp_path / "run2", settings,
                                                on_step=lambda step, loss: steps.append(step), log=lambda line: None)
    assert steps == [4] and resumed.step == 4 and "from step 3" in resumed.notes[0]
    first, second = load_file(str(straight.path)), load_file(str(resumed.path))
    assert all(torch.equal(first[key], second[key]) for key in first), "resuming gives the uninterrupted weights"


def test_a_time_limit_saves_what_was_trained(tmp_path, footage):
    settings = finetune_dubbing.DubbingFinetuneSettings(steps=50, batch_size=2, resolution=32, channels=8,
                                                        time_limit_s=1e-9)
    result = finetune_dubbing.finetune_dubbing(footage, tmp_path / "quick.safetensors", tmp_path / "run", settings,
                                               log=lambda line: None)
    assert result.step == 1 and result.path.is_file()
    assert "the time limit stopped the training at step 1 of 50" in result.notes


def test_a_generator_time_limit_saves_what_was_trained(tmp_path, footage):
    settings = finetune.FinetuneSettings(steps=50, batch_size=2, resolution=32, channels=8, preview_every=0,
                                         time_limit_s=1e-9)
    result = finetune.finetune_generator(footage, tmp_path / "quick.safetensors", tmp_path / "run", settings,
                                         log=lambda line: None)
    assert result.step == 1 and checkpoint.read_tgdm_metadata(result.path)["training_step"] == "1"
    assert "the time limit stopped the training at step 1 of 50" in result.notes


def test_train_dubbing_model_jointly_with_the_motion_model_on_footage_with_audio(host_dirs, faces, face_model, footage):
    audio_nodes = pack_import("nodes.audio")
    folder = host_dirs["output"] / "speaking_footage"
    footage_module.prepare_footage(faces, face_model, folder, shards_module.PreprocessSettings(crop_size=256),
                                   audio=speech_for(24))
    speaking = footage_module.footage_in(folder, face_model)
    motion = audio_nodes.LoadAudioToMotionModel().execute(model_name="audio_landmarks.safetensors")[0]
    before = {key: value.clone() for key, value in motion.state_dict().items()}
    with torch.inference_mode():
        loaded, name, trained = train_dubbing(speaking, name="joint", motion_model=motion, learning_rate=1e-2)
    models = host_dirs["models"] / "talkingface"
    assert name == "joint.safetensors" and (models / "joint.safetensors").is_file()
    assert (models / "joint_landmarks.safetensors").is_file() and trained.config == motion.config
    assert any(not torch.equal(value, trained.state_dict()[key]) for key, value in before.items()), "trained jointly"
    assert all(torch.equal(value, motion.state_dict()[key]) for key, value in before.items()), "the input is not changed"
    (models / "taken_landmarks.safetensors").write_bytes(b"a file of the user's")
    with pytest.raises(base_nodes.NodeInputError, match=r"taken_landmarks\.safetensors exists already"):
        train_dubbing(speaking, name="taken", motion_model=motion)
    assert not (models / "taken.safetensors").exists()
    assert (models / "taken_landmarks.safetensors").read_bytes() == b"a file of the user's"
    with pytest.raises(base_nodes.NodeInputError,
                       match="^Train Dubbing Model: joint training needs clips with audio.*connect the audio to Prepare Training Footage"):
        train_dubbing(footage, name="silent", motion_model=motion)
