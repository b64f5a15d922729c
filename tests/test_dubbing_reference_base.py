"""The dubbing denoiser's ``reference_base``: the clean frame as a correction of the nearest reference warped
onto the target landmarks (thin-plate spline), at toy size."""
import json

import pytest
import torch
from packloader import pack_import

dubbing = pack_import("pipelines.generator.dubbing")
mouth_warp = pack_import("pipelines.generator.mouth_warp")
errors = pack_import("pipelines.errors")

TINY = dict(image_size=16, base_channels=8, channel_multipliers=(1, 2), attention_resolutions=(16, 8),
            attention_head_channels=4, reference_base_channels=8, norm_groups=4, token_width=16,
            coordinate_frequencies=3, reference_frames=3, reference_base=True)


def mouth(shift=(0.0, 0.0), opening=0.0, batch=1):
    """37 lip/jaw-like points in -1..1: a jaw arc and two lip rings, the lower lip lowered by ``opening``."""
    angles = torch.linspace(0.2, torch.pi - 0.2, 17)
    jaw = torch.stack([-0.7 * torch.cos(angles), 0.1 + 0.6 * torch.sin(angles)], -1)
    ring = torch.linspace(0, 2 * torch.pi, 13)[:-1]
    outer = torch.stack([0.3 * torch.cos(ring), 0.35 + 0.1 * torch.sin(ring)], -1)
    outer[6:, 1] += opening  # the lower half
    inner_ring = torch.linspace(0, 2 * torch.pi, 9)[:-1]
    inner = torch.stack([0.2 * torch.cos(inner_ring), 0.35 + 0.03 * torch.sin(inner_ring)], -1)
    inner[4:, 1] += opening
    points = torch.cat([jaw, outer, inner]) + torch.tensor(shift)
    return points.expand(batch, -1, -1).clone()


def pattern(size=16, channels=3, seed=0):
    return torch.randn(1, channels, size, size, generator=torch.Generator().manual_seed(seed)).clamp(-1, 1)


def test_the_spline_is_the_identity_for_unmoved_points_and_moves_the_image_with_them():
    image = torch.nn.functional.interpolate(pattern(8), size=32, mode="bilinear", align_corners=False)
    points = mouth()
    assert torch.allclose(mouth_warp.warp_to_landmarks(image, points, points), image, atol=1e-4)
    # every point 4 pixels (0.25 in -1..1 over 32 px) to the right: the image follows
    moved = mouth_warp.warp_to_landmarks(image, points, points + torch.tensor([0.25, 0.0]))
    assert torch.allclose(moved[..., 4:], image[..., :-4], atol=1e-3)


def test_the_nearest_reference_is_chosen_by_mouth_shape_wherever_it_sits():
    references = torch.stack([mouth(opening=0.0)[0], mouth(opening=0.2)[0], mouth(opening=0.1)[0]]).unsqueeze(0)
    target = mouth(shift=(0.3, -0.2), opening=0.19)
    assert mouth_warp.nearest_reference(target, references).tolist() == [1]


def tiny(**changes):
    torch.manual_seed(0)
    return dubbing.DubbingDenoiser(dubbing.DubbingConfig(**{**TINY, **changes})).eval()


def inputs(model, batch=2):
    config = model.config
    size, channels = config.image_size, config.denoised_channels
    generator = torch.Generator().manual_seed(3)
    mask = torch.zeros(batch, 1, config.pixel_size, config.pixel_size)
    mask[:, :, config.pixel_size // 2:] = 1
    masked = torch.randn(batch, channels, size, size, generator=generator)
    kwargs = dict(noisy=torch.randn(batch, channels, size, size, generator=generator), timesteps=torch.tensor([10, 900][:batch]),
                  masked=masked, mask=mask, landmarks=mouth(opening=0.15, batch=batch))
    references = torch.cat([pattern(size, channels, seed) for seed in (5, 6, 7)]).unsqueeze(0)
    reference_landmarks = torch.stack([mouth(opening=o)[0] for o in (0.0, 0.15, 0.3)]).unsqueeze(0)
    return kwargs, model.encode_references(references, reference_landmarks), references


def test_an_untrained_model_outputs_exactly_the_template_and_the_warped_nearest_reference():
    model = tiny()
    kwargs, features, references = inputs(model)
    with torch.no_grad():
        output = model(references=features, **kwargs)
    outside = kwargs["mask"] == 0
    assert torch.equal(output.masked_select(outside), kwargs["masked"].masked_select(outside))
    # the nearest reference (opening 0.15) under unmoved points: itself
    inside = kwargs["mask"].expand_as(output) == 1
    expected = references[0, 1].expand_as(output)
    assert torch.allclose(output[inside], expected[inside], atol=1e-4)


def test_without_landmarks_no_target_point_reaches_the_output():
    model = tiny()
    torch.nn.init.normal_(model.output.weight, std=0.2)  # a trained-like correction
    kwargs, features, references = inputs(model)
    drop = torch.zeros(2)
    with torch.no_grad():
        free = model(references=features, landmark_keep=drop, **kwargs)
        moved = model(references=features, landmark_keep=drop, **{**kwargs, "landmarks": mouth(opening=0.3, batch=2)})
        full = model(references=features, **kwargs)
    assert torch.equal(free, moved)
    assert not torch.allclose(free, full)


def test_the_loss_reaches_the_landmarks_through_the_warp_too():
    model = tiny().train()
    kwargs, features, _ = inputs(model)
    landmarks = kwargs.pop("landmarks").requires_grad_(True)
    # the TalkFormer blocks start as the identity, so at initialisation only the warp carries the points
    model(references=features, landmarks=landmarks, **kwargs).square().mean().backward()
    assert landmarks.grad.abs().sum() > 0


def test_latent_mode_warps_latents_on_the_same_code_path():
    model = tiny(space="latent", latent_channels=4, vae_scale_factor=2)
    kwargs, features, _ = inputs(model)
    assert kwargs["mask"].shape[-1] == 32  # pixel-size mask, averaged down to the latent grid
    with torch.no_grad():
        output = model(references=features, **kwargs)
    assert output.shape == (2, 4, 16, 16) and torch.isfinite(output).all()


def test_reference_base_needs_the_clean_frame_target_and_the_reference_images():
    with pytest.raises(errors.ModelFileError, match="prediction_type 'sample'"):
        dubbing.DubbingConfig(**{**TINY, "prediction_type": "epsilon"})
    model = tiny()
    kwargs, features, _ = inputs(model)
    without_images = dubbing.ReferenceFeatures(features.levels, features.landmarks)
    with pytest.raises(errors.TalkingFaceError, match="encode the references"):
        model(references=without_images, **kwargs)


def test_files_written_before_the_switch_load_as_they_were_trained(tmp_path):
    config = dubbing.DubbingConfig(**{**TINY, "reference_base": False})
    values = json.loads(config.to_json())
    del values["reference_base"]
    assert dubbing.DubbingConfig.from_json(json.dumps(values)).reference_base is False
    model = dubbing.DubbingDenoiser(dubbing.DubbingConfig(**TINY))
    dubbing.save_dubbing(model, tmp_path / "base.safetensors")
    loaded = dubbing.load_dubbing(tmp_path / "base.safetensors")
    assert loaded.config.reference_base and loaded.input.in_channels == 3 * 3 + 1
