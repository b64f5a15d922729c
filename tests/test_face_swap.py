"""Face swap: the source's identity and skin on each target frame's motion and light, pasted back into
the target frames; frames without the face pass through; identity averaged over source photos; the
identity token reaches the generator; the Face Swap node's contract and errors."""
import dataclasses

import pytest
import torch
from packloader import load_pack, pack_import

synthetic = pack_import("pipelines.training.synthetic_faces")
demo_model = pack_import("pipelines.morphable.demo_model")
renderer_module = pack_import("pipelines.render.renderer")
camera_module = pack_import("pipelines.morphable.camera")
coefficients_module = pack_import("pipelines.morphable.coefficients")
faces_module = pack_import("pipelines.face.faces")
face_swap = pack_import("pipelines.generator.face_swap")
sampling = pack_import("pipelines.generator.sampler")
config_module = pack_import("pipelines.generator.config")
tgdm = pack_import("pipelines.generator.tgdm")
errors = pack_import("pipelines.errors")
load_pack()

SIZE = 64
FRAME = (96, 128)  # height, width of the "video" frames the crops sit in
OFFSET = (40, 16)  # x, y of the crop's top-left corner in the frame


def _in_frames(photos: torch.Tensor, background: float = 0.3) -> torch.Tensor:
    frames = torch.full((photos.shape[0], *FRAME, 3), background)
    x, y = OFFSET
    frames[:, y : y + SIZE, x : x + SIZE] = photos
    return frames


def _faces(frames: torch.Tensor, maps) -> object:
    """Analysed faces whose fitting crop is exactly where the photos were rendered."""
    x, y = OFFSET
    landmarks = maps.landmarks + torch.tensor([x, y], dtype=torch.float32)
    faces = faces_module.faces_from_landmarks(frames, landmarks, crop_size=SIZE)
    scale = 224 / SIZE
    transform = torch.tensor([[scale, 0.0, -x * scale], [0.0, scale, -y * scale]])
    transforms = transform.expand(frames.shape[0], 2, 3).clone()
    return dataclasses.replace(faces, fit_transforms=transforms, crop_transforms=transforms * SIZE / 224)


@pytest.fixture(scope="module")
def scene():
    """A target person in five frames, a source person in two photos, and the ground truth: the source
    person photographed with the target's motion and light."""
    model = demo_model.demo_face_model()
    settings = synthetic.SyntheticFaceSettings(image_size=SIZE, max_yaw=0.3)
    generator = torch.Generator().manual_seed(3)
    target_person = synthetic.random_identity(model, settings, generator)
    source_person = synthetic.random_identity(model, settings, generator)
    # One background for both, so only the face tells them apart.
    source_person = dataclasses.replace(source_person, background=target_person.background)
    targets = synthetic.random_view_coefficients(model, target_person.identity, target_person.texture, 5, settings, generator)
    sources = synthetic.random_view_coefficients(model, source_person.identity, source_person.texture, 2, settings, generator)
    sources.expression[:] = 0
    renderer = renderer_module.FaceRenderer(model, camera_module.PerspectiveCamera.deep3d(SIZE))
    target_photos, target_maps = synthetic.photograph(renderer, targets, [target_person] * 5)
    source_photos, source_maps = synthetic.photograph(renderer, sources, [source_person] * 2)
    truth_coeffs = face_swap.swap_coefficients(sources[0:1].replace(identity=sources.identity[:1], texture=sources.texture[:1]), targets)
    truth, truth_maps = synthetic.photograph(renderer, truth_coeffs, [source_person] * 5)
    target_frames = _in_frames(target_photos)
    return {
        "model": model, "targets": targets, "sources": sources,
        "target_faces": _faces(target_frames, target_maps), "source_faces": _faces(_in_frames(source_photos), source_maps),
        "truth": _in_frames(truth), "truth_mask": truth_maps.mask, "target_frames": target_frames,
    }


def _face_error(images: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor) -> float:
    x, y = OFFSET
    crop = images[:, y : y + SIZE, x : x + SIZE]
    truth_crop = truth[:, y : y + SIZE, x : x + SIZE]
    weight = mask.unsqueeze(-1)
    return float(((crop - truth_crop).abs() * weight).sum() / weight.sum() / 3)


def test_swap_coefficients_take_identity_and_texture_from_the_source_and_the_rest_from_the_target(scene):
    person = scene["sources"][0:1]
    swapped = face_swap.swap_coefficients(person, scene["targets"])
    assert torch.equal(swapped.identity, person.identity.expand(5, -1))
    assert torch.equal(swapped.texture, person.texture.expand(5, -1))
    for name in ("expression", "rotation", "translation", "gaze", "lighting"):
        assert torch.equal(getattr(swapped, name), getattr(scene["targets"], name)), name


def test_several_source_photos_are_averaged_into_one_person(scene):
    sources = scene["sources"].replace(identity=scene["sources"].identity + torch.tensor([[0.5], [-0.5]]))
    faces = scene["source_faces"]
    faces = dataclasses.replace(faces, embeddings=torch.nn.functional.normalize(torch.randn(2, 16), dim=1))
    source = face_swap.swap_source(faces, sources, SIZE)
    assert source.photos == 2 and source.crops.shape == (2, SIZE, SIZE, 3)
    assert torch.allclose(source.person.identity[0], scene["sources"].identity[0], atol=1e-6)
    assert source.person.frames == 1
    assert torch.allclose(source.descriptor, torch.nn.functional.normalize(faces.embeddings.mean(0), dim=0))
    assert torch.allclose(source.descriptor.norm(), torch.tensor(1.0))
    # The crops are the photos again: the fitting framing is where they were rendered.
    x, y = OFFSET
    assert (source.crops - faces.images[:, y : y + SIZE, x : x + SIZE]).abs().mean() < 0.02


def test_each_target_frame_takes_the_source_photo_nearest_its_pose():
    sources = torch.tensor([[0.0, -0.4, 0.0], [0.0, 0.4, 0.0]])
    targets = torch.tensor([[0.0, -0.3, 0.0], [0.0, 0.35, 0.1], [0.0, -0.05, 0.0]])
    assert face_swap.nearest_photo(sources, targets).tolist() == [0, 1, 0]


def test_weight_free_swap_puts_the_source_face_on_the_target_motion(scene):
    source = face_swap.swap_source(scene["source_faces"], scene["sources"], SIZE)
    result = face_swap.swap_faces(scene["model"], source, scene["target_faces"], scene["targets"],
                                  face_swap.SwapSettings(resolution=SIZE, colour_match=0.0, erode=2, blur=2))
    frames = scene["target_frames"]
    assert result.images.shape == frames.shape and result.swapped.all()
    swapped_error = _face_error(result.images, scene["truth"], scene["truth_mask"])
    target_error = _face_error(frames, scene["truth"], scene["truth_mask"])
    assert swapped_error < 0.6 * target_error, (swapped_error, target_error)
    # Outside the face the target frame is kept.
    outside = result.masks < 1e-3
    assert torch.equal(result.images[outside], frames[outside])
    assert (result.masks > 0.5).float().mean() > 0.05
    assert torch.equal(frames, scene["target_faces"].images), "the input frames are not modified"


def test_frames_without_the_target_face_pass_through_untouched(scene):
    source = face_swap.swap_source(scene["source_faces"], scene["sources"], SIZE)
    faces = scene["target_faces"]
    detected = torch.tensor([True, False, True, False, True])
    faces = dataclasses.replace(faces, detected=detected)
    result = face_swap.swap_faces(scene["model"], source, faces, scene["targets"],
                                  face_swap.SwapSettings(resolution=SIZE, chunk_size=2))
    assert result.swapped.tolist() == detected.tolist()
    for frame in (1, 3):
        assert torch.equal(result.images[frame], faces.images[frame])
        assert result.masks[frame].abs().sum() == 0
    assert all((result.images[frame] != faces.images[frame]).any() for frame in (0, 2, 4))


def test_chunks_do_not_change_the_result(scene):
    source = face_swap.swap_source(scene["source_faces"], scene["sources"], SIZE)
    args = (scene["model"], source, scene["target_faces"], scene["targets"])
    whole = face_swap.swap_faces(*args, face_swap.SwapSettings(resolution=SIZE, chunk_size=16))
    pieces = face_swap.swap_faces(*args, face_swap.SwapSettings(resolution=SIZE, chunk_size=2))
    assert torch.allclose(whole.images, pieces.images, atol=1e-5)


def test_colour_matching_moves_the_face_towards_the_target_colours(scene):
    source = face_swap.swap_source(scene["source_faces"], scene["sources"], SIZE)
    args = (scene["model"], source, scene["target_faces"], scene["targets"])
    plain = face_swap.swap_faces(*args, face_swap.SwapSettings(resolution=SIZE, colour_match=0.0))
    matched = face_swap.swap_faces(*args, face_swap.SwapSettings(resolution=SIZE, colour_match=1.0))
    frames = scene["target_frames"]
    weight = (plain.masks > 0.9).unsqueeze(-1).float()

    def mean_colour(images):
        return (images * weight).sum((0, 1, 2)) / weight.sum()

    target_colour = mean_colour(frames)
    assert (mean_colour(matched.images) - target_colour).abs().sum() < (mean_colour(plain.images) - target_colour).abs().sum()


def _generator(identity_dim: int):
    config = config_module.TGDMConfig(
        image_size=SIZE, base_channels=8, channel_multipliers=(1, 2), attention_resolutions=(32,),
        attention_head_channels=8, source_base_channels=8, norm_groups=4, surface_frequencies=2, identity_dim=identity_dim,
    )
    torch.manual_seed(0)
    return tgdm.TGDMDenoiser(config).eval()


def test_the_generator_receives_the_source_descriptor_as_identity_token(scene, monkeypatch):
    model = _generator(16)
    faces = dataclasses.replace(scene["source_faces"], embeddings=torch.nn.functional.normalize(torch.randn(2, 16), dim=1))
    source = face_swap.swap_source(faces, scene["sources"], SIZE)
    seen = []
    original = tgdm.TGDMDenoiser.forward

    def spy(self, *args, **kwargs):
        seen.append(args[6] if len(args) > 6 else kwargs.get("identity"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(tgdm.TGDMDenoiser, "forward", spy)
    sampler = sampling.TGDMSampler(model, sampling.SamplerSettings(steps=2, batch_size=4))
    result = face_swap.swap_faces(scene["model"], source, scene["target_faces"], scene["targets"],
                                  face_swap.SwapSettings(chunk_size=3), sampler)
    assert result.images.shape == scene["target_frames"].shape and result.swapped.all()
    assert seen and all(token is not None and torch.allclose(token[0], source.descriptor) for token in seen)


def test_a_generator_with_an_identity_token_needs_a_matching_descriptor(scene):
    sampler = sampling.TGDMSampler(_generator(16), sampling.SamplerSettings(steps=1))
    without = face_swap.swap_source(dataclasses.replace(scene["source_faces"], embeddings=None), scene["sources"], SIZE)
    with pytest.raises(errors.TalkingFaceError, match="insightface"):
        face_swap.swap_faces(scene["model"], without, scene["target_faces"], scene["targets"], sampler=sampler)
    wrong = face_swap.swap_source(dataclasses.replace(scene["source_faces"], embeddings=torch.ones(2, 8)), scene["sources"], SIZE)
    with pytest.raises(errors.TalkingFaceError, match="16-value identity descriptors"):
        face_swap.swap_faces(scene["model"], wrong, scene["target_faces"], scene["targets"], sampler=sampler)


def test_source_without_a_face_and_mismatched_face_models_are_errors(scene):
    faces = dataclasses.replace(scene["source_faces"], detected=torch.tensor([False, False]))
    with pytest.raises(errors.TalkingFaceError, match="no face was found in the source"):
        face_swap.swap_source(faces, scene["sources"], SIZE)
    source = face_swap.swap_source(scene["source_faces"], scene["sources"], SIZE)
    dims = coefficients_module.CoefficientDims(identity=10, expression=10, texture=10)
    other = coefficients_module.FaceCoefficients.neutral(5, dims)
    with pytest.raises(errors.TalkingFaceError, match="same Load 3DMM model"):
        face_swap.swap_faces(scene["model"], source, scene["target_faces"], other)


selection = pack_import("pipelines.face.selection")
analysis = pack_import("pipelines.face.analysis")


def _detected(x: float, embedding) -> object:
    import numpy as np

    vector = np.asarray(embedding, dtype=np.float32)
    return analysis.DetectedFace(box=np.array([x, 10.0, x + 40.0, 50.0], dtype=np.float32), score=0.9,
                                 keypoints=np.zeros((5, 2), np.float32), embedding=vector / np.linalg.norm(vector))


def test_most_similar_selection_picks_and_follows_the_reference_person():
    import numpy as np

    alice, bob = [1.0, 0.1, 0.0], [0.0, 1.0, 0.2]
    reference = np.asarray(alice, np.float32) / np.linalg.norm(alice)
    frame = [_detected(0.0, bob), _detected(100.0, alice)]
    assert selection.select_face(frame, "most_similar", 0, "the image", reference) is frame[1]
    # The two people swap places between frames: the track stays with the reference person.
    # The two people swap places between frames, then only the other person is in view: the track
    # stays with the reference person and leaves that frame empty (a swap passes it through).
    frames = [frame, [_detected(100.0, bob), _detected(0.0, alice)], [_detected(0.0, alice)], [_detected(0.0, bob)]]
    track = selection.track_face(frames, "most_similar", 0, reference)
    assert [None if face is None else float(face.box[0]) for face in track] == [100.0, 0.0, 0.0, None]
    with pytest.raises(errors.TalkingFaceError, match="reference_image"):
        selection.select_face(frame, "most_similar", 0, "the image")


def _node_inputs(scene, **changes):
    inputs = dict(face_model=scene["model"], source_faces=scene["source_faces"], source_coefficients=scene["sources"],
                  target_faces=scene["target_faces"], target_coefficients=scene["targets"], resolution=SIZE,
                  colour_match=0.5, relight=True, mouth="drawn teeth", erode=2, blur=2, sampler="ddim", steps=2,
                  seed=0, batch_size=4, chunk_size=3)
    inputs.update(changes)
    return inputs


def test_face_swap_node_swaps_without_weights_and_names_itself_in_errors(scene, caplog):
    node = load_pack().NODE_CLASS_MAPPINGS["TalkingFaceFaceSwap"]()
    faces = dataclasses.replace(scene["target_faces"], detected=torch.tensor([True, True, False, True, True]))
    images, mask = node.execute(**_node_inputs(scene, target_faces=faces))
    assert images.shape == scene["target_frames"].shape and mask.shape == images.shape[:3]
    assert torch.equal(images[2], scene["target_frames"][2]) and mask[2].sum() == 0
    assert "passed through unchanged" in caplog.text
    dims = coefficients_module.CoefficientDims(identity=10, expression=10, texture=10)
    with pytest.raises(errors.TalkingFaceError, match="^Face Swap: .*same Load 3DMM model"):
        node.execute(**_node_inputs(scene, source_coefficients=coefficients_module.FaceCoefficients.neutral(2, dims)))
    with pytest.raises(errors.TalkingFaceError, match="^Face Swap: 1 source_coefficients rows for 2"):
        node.execute(**_node_inputs(scene, source_coefficients=scene["sources"][0:1]))


def test_every_track_puts_each_face_in_exactly_one_track():
    a, b, c = [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]
    frames = [[_detected(0.0, a), _detected(100.0, b)], [_detected(102.0, b), _detected(2.0, a)], [_detected(4.0, a)],
              [_detected(200.0, c), _detected(6.0, a)]]
    tracks = selection.every_track(frames)
    where = [[None if face is None else float(face.box[0]) for face in track] for track in tracks]
    assert where == [[0.0, 2.0, 4.0, 6.0], [100.0, 102.0, None, None], [None, None, None, 200.0]]
    assert selection.every_track([[], []]) == []


class ToldFaces:
    """An analyzer for the tests: in each successive frame it finds the faces whose 68 landmarks it was given."""

    def __init__(self, per_frame_landmarks: list[list[torch.Tensor]]):
        self.per_frame = per_frame_landmarks
        self.calls = 0

    def detect(self, image):
        landmarks = self.per_frame[self.calls]
        self.calls += 1
        faces = []
        for points in landmarks:
            keypoints = faces_module.keypoints_from_landmarks68(points[None])[0]
            box = torch.cat([points.amin(0), points.amax(0)])
            faces.append(analysis.DetectedFace(box=box.numpy(), score=0.9, keypoints=keypoints.numpy(),
                                               landmarks68=points.numpy()))
        return faces


GROUP_WIDTH = 176
PLACES = (8, 100)  # x of each person's 64-px photo in the group frame


@pytest.fixture(scope="module")
def group(scene):
    """The target person twice side by side in five frames, the right one absent from frame 2, and the truth."""
    renderer = renderer_module.FaceRenderer(scene["model"], camera_module.PerspectiveCamera.deep3d(SIZE))
    landmarks = renderer.render(scene["targets"]).landmarks
    photos = scene["target_frames"][:, OFFSET[1]: OFFSET[1] + SIZE, OFFSET[0]: OFFSET[0] + SIZE]
    truth = scene["truth"][:, OFFSET[1]: OFFSET[1] + SIZE, OFFSET[0]: OFFSET[0] + SIZE]
    frames = torch.full((5, FRAME[0], GROUP_WIDTH, 3), 0.3)
    truths = frames.clone()
    told = []
    y = OFFSET[1]
    for t in range(5):
        people = []
        for k, x in enumerate(PLACES):
            if k == 1 and t == 2:
                continue
            frames[t, y: y + SIZE, x: x + SIZE] = photos[t]
            truths[t, y: y + SIZE, x: x + SIZE] = truth[t]
            people.append(landmarks[t] + torch.tensor([x, y], dtype=torch.float32))
        told.append(people)
    return frames, truths, told


def _place_error(images, truth, x, t=slice(None)):
    y = OFFSET[1]
    return float((images[t, y: y + SIZE, x: x + SIZE] - truth[t, y: y + SIZE, x: x + SIZE]).abs().mean())


def test_every_face_is_swapped_and_an_absent_person_leaves_their_place_alone(scene, group):
    frames, truths, told = group
    detector = ToldFaces(told)
    tracks = selection.every_track([detector.detect(None) for _ in range(5)])
    assert [[face is not None for face in track] for track in tracks] == [[True] * 5, [True, True, False, True, True]]
    source = face_swap.swap_source(scene["source_faces"], scene["sources"], SIZE)
    settings = face_swap.SwapSettings(resolution=SIZE, erode=2, blur=2, chunk_size=3)
    result = face_swap.swap_every_face(scene["model"], source, frames, tracks, settings, fps=25.0)
    assert result.swapped.all() and result.images.shape == frames.shape
    for x in PLACES:
        assert _place_error(result.images, truths, x) < 0.75 * _place_error(frames, truths, x), x
        assert result.masks[:, OFFSET[1]: OFFSET[1] + SIZE, x: x + SIZE].sum() > 0
    right = slice(PLACES[1], PLACES[1] + SIZE)
    assert torch.equal(result.images[2, :, right], frames[2, :, right]), "the absent person's place is untouched"
    assert result.masks[2, :, right].sum() == 0


def test_face_swap_every_face_node_finds_everyone_and_passes_faceless_frames(scene, group, caplog):
    frames, truths, told = group
    node = load_pack().NODE_CLASS_MAPPINGS["TalkingFaceFaceSwapEveryFace"]()
    inputs = _node_inputs(scene)
    for name in ("target_faces", "target_coefficients"):
        del inputs[name]
    images, mask = node.execute(**inputs, analyzer=ToldFaces(told), images=frames, fps=25.0, temporal_smoothing=0.5)
    for x in PLACES:
        assert _place_error(images, truths, x) < 0.75 * _place_error(frames, truths, x)
    empty = torch.full((2, FRAME[0], GROUP_WIDTH, 3), 0.3)
    images, mask = node.execute(**inputs, analyzer=ToldFaces([[], []]), images=empty, fps=25.0, temporal_smoothing=0.5)
    assert torch.equal(images, empty) and mask.sum() == 0
    assert "no face in any of the 2 target frames" in caplog.text
    with pytest.raises(errors.TalkingFaceError, match="^Face Swap \\(Every Face\\): video_info has no usable frame rate"):
        node.execute(**inputs, analyzer=ToldFaces(told), images=frames, fps=25.0, temporal_smoothing=0.5,
                     video_info={"loaded_fps": 0})
