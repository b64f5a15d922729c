"""The dubbing denoiser, its TalkFormer and its checkpoint files, at toy size."""
import json

import pytest
import torch
from packloader import pack_import
from safetensors.torch import save_file

dubbing = pack_import("pipelines.generator.dubbing")
talkformer = pack_import("pipelines.generator.talkformer")
tgdm_checkpoint = pack_import("pipelines.generator.checkpoint")
tgdm = pack_import("pipelines.generator.tgdm")
tgdm_config = pack_import("pipelines.generator.config")
errors = pack_import("pipelines.errors")

TINY = dict(image_size=16, base_channels=8, channel_multipliers=(1, 2), attention_resolutions=(16, 8),
            attention_head_channels=4, reference_base_channels=8, norm_groups=4, token_width=16,
            coordinate_frequencies=3, reference_frames=2)


def wake(model):
    """Zero-initialised output projections would hide every input at initialisation."""
    torch.manual_seed(1)
    for name, parameter in model.named_parameters():
        if name.endswith(("output.weight", "landmark_out.weight", "warp_out.weight")):
            torch.nn.init.normal_(parameter, std=0.2)
    return model


def tiny(**changes):
    torch.manual_seed(0)
    return wake(dubbing.DubbingDenoiser(dubbing.DubbingConfig(**{**TINY, **changes}))).eval()


def inputs(model, batch=3, seed=2):
    generator = torch.Generator().manual_seed(seed)
    config = model.config
    size, channels = config.image_size, config.denoised_channels

    def randn(*shape):
        return torch.randn(*shape, generator=generator)

    landmarks = (torch.rand(batch, 37, 2, generator=generator) - 0.5)
    mask = torch.zeros(batch, 1, config.pixel_size, config.pixel_size)
    mask[:, :, config.pixel_size // 2:] = 1
    kwargs = dict(noisy=randn(batch, channels, size, size), timesteps=torch.tensor([5, 500, 999][:batch]),
                  masked=randn(batch, channels, size, size), mask=mask, landmarks=landmarks)
    references = randn(1, 2, channels, size, size), torch.rand(1, 2, 37, 2, generator=generator) - 0.5
    return kwargs, references


def test_every_condition_reaches_the_output():
    model = tiny()
    kwargs, (references, reference_landmarks) = inputs(model)
    with torch.no_grad():
        features = model.encode_references(references, reference_landmarks)
        base = model(references=features, **kwargs)
        assert base.shape == kwargs["noisy"].shape and torch.isfinite(base).all()
        for name, value in {"masked": kwargs["masked"] + 1, "mask": 1 - kwargs["mask"],
                            "landmarks": kwargs["landmarks"] + 0.1, "timesteps": kwargs["timesteps"] + 50}.items():
            assert not torch.allclose(model(references=features, **{**kwargs, name: value}), base), name
        moved = model.encode_references(references, reference_landmarks + 0.1)
        assert not torch.allclose(model(references=moved, **kwargs), base), "reference landmarks"
        other = model.encode_references(references.flip(-1), reference_landmarks)
        assert not torch.allclose(model(references=other, **kwargs), base), "reference images"


def test_the_diffusion_loss_gradient_reaches_the_landmark_coordinates():
    model = tiny()
    kwargs, (references, reference_landmarks) = inputs(model)
    landmarks = kwargs.pop("landmarks").clone().requires_grad_(True)
    reference_landmarks = reference_landmarks.clone().requires_grad_(True)
    prediction = model(references=model.encode_references(references, reference_landmarks), landmarks=landmarks, **kwargs)
    loss = torch.nn.functional.mse_loss(prediction, torch.randn_like(prediction))
    loss.backward()
    assert landmarks.grad is not None and landmarks.grad.abs().sum() > 0
    # every point of every frame steers the output: tokens, not a rasterised sketch with dead pixels
    assert (landmarks.grad.abs().sum(-1) > 0).all()
    assert reference_landmarks.grad.abs().sum() > 0


def test_dropping_the_landmarks_removes_exactly_them():
    model = tiny()
    kwargs, (references, reference_landmarks) = inputs(model)
    keep = torch.tensor([1.0, 0.0, 1.0])
    with torch.no_grad():
        features = model.encode_references(references, reference_landmarks)
        dropped = model(references=features, landmark_keep=keep, **kwargs)
        moved = dict(kwargs, landmarks=kwargs["landmarks"] * -1)
        moved_references = model.encode_references(references, reference_landmarks * 0.5)
        moved_dropped = model(references=moved_references, landmark_keep=keep, **moved)
        assert torch.allclose(dropped[1], moved_dropped[1], atol=1e-5)
        assert not torch.allclose(dropped[0], moved_dropped[0])
        assert torch.allclose(dropped[0], model(references=features, **kwargs)[0], atol=1e-5)


def test_landmark_codes_depend_on_pixel_position_and_landmark_coordinates():
    """The landmark code that keys implicit warping: where a pixel lies relative to a landmark set.
    It differs between pixels, moves with the landmarks, and is what links a target pixel to the
    reference pixels at the same place relative to their own landmarks."""
    torch.manual_seed(0)
    block = talkformer.TalkFormer(8, 8, 8, 8, 4, 3)
    tokenizer = talkformer.LandmarkTokenizer(37, 8, 3)
    points = torch.rand(1, 37, 2) - 0.5
    first = block.landmark_code(tokenizer(points), 4, 4)
    assert first.shape == (1, 16, 8)
    assert not torch.allclose(first[0, 0], first[0, 15])  # two pixels, two codes
    assert not torch.allclose(first, block.landmark_code(tokenizer(points + 0.3), 4, 4))
    # pixel grid and landmarks share one frame: a grid cell's centre is where its coordinates say
    grid = talkformer.pixel_grid(4, 4, torch.device("cpu"), torch.float32)
    assert torch.allclose(grid[0], torch.tensor([-0.75, -0.75])) and torch.allclose(grid[1], torch.tensor([-0.25, -0.75]))
    assert torch.allclose(dubbing.crop_coordinates(torch.tensor([[0.5, 3.5]]), 4), torch.tensor([[-0.75, 0.75]]))


def test_latent_mode_uses_the_same_network_on_latents():
    model = tiny(space="latent", image_size=8, attention_resolutions=(8, 4), vae_scale_factor=4)
    assert model.config.pixel_size == 32 and model.input.in_channels == 2 * 4 + 1
    kwargs, (references, reference_landmarks) = inputs(model)
    assert kwargs["mask"].shape[-1] == 32  # the mask comes at pixel size and is averaged onto the latent grid
    with torch.no_grad():
        out = model(references=model.encode_references(references, reference_landmarks), **kwargs)
    assert out.shape == (3, 4, 8, 8)


def test_wrong_shapes_say_what_is_expected():
    model = tiny()
    kwargs, (references, reference_landmarks) = inputs(model)
    features = model.encode_references(references, reference_landmarks)
    with pytest.raises(errors.TalkingFaceError, match="lip and jaw points"):
        model(references=features, **{**kwargs, "landmarks": kwargs["landmarks"][:, :20]})
    with pytest.raises(errors.TalkingFaceError, match="16x16 images with 3 channels"):
        model(references=features, **{**kwargs, "masked": kwargs["masked"][:, :, :8]})
    with pytest.raises(errors.TalkingFaceError, match="reference landmarks"):
        model.encode_references(references, reference_landmarks[:, :1])


def test_checkpoint_round_trip_is_exact(tmp_path):
    model = tiny()
    path = tmp_path / "dub.safetensors"
    dubbing.save_dubbing(model, path, {"note": "test"})
    loaded = dubbing.load_dubbing(path)
    assert loaded.config == model.config
    assert json.loads(dubbing.read_dubbing_metadata(path)["config"])["token_width"] == 16
    kwargs, (references, reference_landmarks) = inputs(model)
    with torch.no_grad():
        expected = model(references=model.encode_references(references, reference_landmarks), **kwargs)
        got = loaded(references=loaded.encode_references(references, reference_landmarks), **kwargs)
    assert torch.equal(expected, got)


def test_wrong_files_are_refused_with_the_loader_to_use(tmp_path):
    tgdm_path = tmp_path / "tgdm.safetensors"
    tgdm_checkpoint.save_tgdm(tgdm.TGDMDenoiser(tgdm_config.TGDMConfig(
        image_size=16, base_channels=8, channel_multipliers=(1, 2), attention_resolutions=(8,),
        attention_head_channels=4, source_base_channels=8, norm_groups=4, surface_frequencies=0)), tgdm_path)
    with pytest.raises(errors.ModelFileError, match="TGDM generator checkpoint.*Load Generator"):
        dubbing.load_dubbing(tgdm_path)
    dub_path = tmp_path / "dub.safetensors"
    dubbing.save_dubbing(tiny(), dub_path)
    with pytest.raises(errors.ModelFileError, match="dubbing model.*Load Dubbing Model"):
        tgdm_checkpoint.load_tgdm(dub_path)

    weights = dict(tiny().state_dict())
    metadata = {"format": dubbing.FILE_FORMAT, "version": "1", "config": tiny().config.to_json()}
    del weights["tokenizer.point_embedding"]
    broken = tmp_path / "broken.safetensors"
    save_file({k: v.contiguous() for k, v in weights.items()}, str(broken), metadata=metadata)
    with pytest.raises(errors.ModelFileError, match="missing 1 weights.*tokenizer.point_embedding"):
        dubbing.load_dubbing(broken)
    unknown = tmp_path / "unknown.safetensors"
    save_file({"x": torch.zeros(1)}, str(unknown), metadata={**metadata, "config": json.dumps({"mystery": 1})})
    with pytest.raises(errors.ModelFileError, match="does not know.*mystery"):
        dubbing.load_dubbing(unknown)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"not a safetensors file")
    with pytest.raises(errors.ModelFileError, match="could not be read"):
        dubbing.load_dubbing(corrupt)
    with pytest.raises(errors.ModelFileError, match="not found"):
        dubbing.load_dubbing(tmp_path / "absent.safetensors")
