"""The TGDM denoiser, its texture attention and its checkpoint files, at toy size."""
import json

import pytest
import torch
from packloader import pack_import
from safetensors.torch import save_file

config_module = pack_import("pipelines.generator.config")
tgdm = pack_import("pipelines.generator.tgdm")
attention = pack_import("pipelines.generator.attention")
checkpoint = pack_import("pipelines.generator.checkpoint")
errors = pack_import("pipelines.errors")

TINY = dict(image_size=16, base_channels=8, channel_multipliers=(1, 2), attention_resolutions=(16, 8),
            attention_head_channels=4, source_base_channels=8, norm_groups=4, surface_frequencies=2)


def tiny(**changes):
    torch.manual_seed(0)
    model = tgdm.TGDMDenoiser(config_module.TGDMConfig(**{**TINY, **changes}))
    torch.nn.init.normal_(model.output.weight, std=0.05)  # zero-initialised output would hide every input
    return model.eval()


def inputs(model, batch=3, seed=1):
    generator = torch.Generator().manual_seed(seed)
    size, dim = model.config.image_size, model.config.coefficient_dim

    def randn(*shape):
        return torch.randn(*shape, generator=generator)

    conditions = dict(
        noisy=randn(batch, 3, size, size), timesteps=torch.tensor([5, 500, 999][:batch]),
        render=randn(batch, 3, size, size), coefficients=randn(batch, dim),
        target_surface=torch.rand(batch, 3, size, size, generator=generator),
    )
    if model.config.warp_condition:
        valid = (torch.rand(batch, 1, size, size, generator=generator) > 0.3).float()
        conditions["warped_source"] = torch.cat([randn(batch, 3, size, size) * valid, valid], dim=1)
    return conditions, (randn(1, 3, size, size), torch.rand(1, 3, size, size, generator=generator))


def test_every_condition_reaches_the_output():
    model = tiny(identity_dim=6)
    kwargs, (source, source_surface) = inputs(model)
    identity = torch.randn(3, 6)
    with torch.no_grad():
        features = model.encode_source(source, source_surface)
        base = model(source=features, identity=identity, **kwargs)
        assert base.shape == kwargs["noisy"].shape and torch.isfinite(base).all()
        changed = {
            "render": dict(kwargs, render=kwargs["render"] + 1),
            "coefficients": dict(kwargs, coefficients=kwargs["coefficients"] + 1),
            "timesteps": dict(kwargs, timesteps=kwargs["timesteps"] + 50),
            "target surface": dict(kwargs, target_surface=kwargs["target_surface"].flip(-1)),
            "warped source": dict(kwargs, warped_source=kwargs["warped_source"].flip(-1)),
        }
        for name, variant in changed.items():
            assert not torch.allclose(model(source=features, identity=identity, **variant), base), name
        other_source = model.encode_source(source.flip(-1), source_surface)
        assert not torch.allclose(model(source=other_source, identity=identity, **kwargs), base), "source"
        assert not torch.allclose(model(source=features, identity=identity + 1, **kwargs), base), "identity"


def test_dropping_conditions_per_sample_removes_exactly_them():
    model = tiny()
    kwargs, (source, source_surface) = inputs(model)
    with torch.no_grad():
        features = model.encode_source(source, source_surface)
        no_texture = model(source=features, texture_keep=torch.zeros(3), **kwargs)
        other = model.encode_source(-source, source_surface)
        other_warp = dict(kwargs, warped_source=-kwargs["warped_source"])
        assert torch.allclose(model(source=other, texture_keep=torch.zeros(3), **other_warp), no_texture, atol=1e-6)
        no_geometry = model(source=features, geometry_keep=torch.zeros(3), **kwargs)
        moved = dict(kwargs, render=kwargs["render"] * 3, coefficients=kwargs["coefficients"] - 2,
                     target_surface=kwargs["target_surface"].flip(-1))
        assert torch.allclose(model(source=features, geometry_keep=torch.zeros(3), **moved), no_geometry, atol=1e-6)
        mixed = model(source=features, geometry_keep=torch.tensor([1.0, 0.0, 1.0]), **kwargs)
        full = model(source=features, **kwargs)
        assert torch.allclose(mixed[0], full[0], atol=1e-6) and torch.allclose(mixed[1], no_geometry[1], atol=1e-6)


def test_texture_attention_uses_the_surface_encodings_to_find_source_points():
    torch.manual_seed(0)
    block = attention.TextureAttention(8, 8, 4, 4, surface_channels=5)
    hidden, source = torch.randn(2, 8, 4, 4), torch.randn(1, 8, 4, 4)
    surface = torch.randn(1, 5, 4, 4)
    out = block(hidden, source, None, surface.expand(2, -1, -1, -1), surface)
    assert out.shape == hidden.shape
    assert not torch.allclose(out, block(hidden, source, None, surface.expand(2, -1, -1, -1), surface.flip(-1)))
    assert torch.equal(block(hidden, source, torch.zeros(2)), hidden), "a dropped texture adds nothing"


def test_bad_inputs_are_named():
    model = tiny()
    kwargs, (source, source_surface) = inputs(model)
    features = model.encode_source(source, source_surface)
    with pytest.raises(errors.TalkingFaceError, match=r"16x16 .* render input is \(3, 3, 8, 8\)"):
        model(source=features, **dict(kwargs, render=torch.zeros(3, 3, 8, 8)))
    with pytest.raises(errors.TalkingFaceError, match="coefficients"):
        model(source=features, **dict(kwargs, coefficients=torch.zeros(3, 257)))
    with pytest.raises(errors.ModelFileError, match="norm groups"):
        config_module.TGDMConfig(**{**TINY, "base_channels": 6})


def test_checkpoint_round_trip(tmp_path):
    model = tiny(prediction_type="v_prediction", identity_dim=4)
    path = tmp_path / "tgdm.safetensors"
    checkpoint.save_tgdm(model, path)
    loaded = checkpoint.load_tgdm(path)
    assert loaded.config == model.config
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    kwargs, (source, source_surface) = inputs(model)
    identity = torch.randn(3, 4)
    with torch.no_grad():
        assert torch.equal(
            loaded(source=loaded.encode_source(source, source_surface), identity=identity, **kwargs),
            model(source=model.encode_source(source, source_surface), identity=identity, **kwargs),
        )


def test_strict_loading_says_what_is_wrong(tmp_path):
    model = tiny()
    good = tmp_path / "good.safetensors"
    checkpoint.save_tgdm(model, good)
    weights = {name: value.contiguous() for name, value in model.state_dict().items()}
    metadata = {"format": "talkingface.tgdm", "version": "1", "config": model.config.to_json()}

    def write(name, tensors, meta):
        path = tmp_path / name
        save_file(tensors, str(path), metadata=meta)
        return path

    cases = {
        write("lora.safetensors", {"w": torch.zeros(1)}, {"format": "lora"}): r"not a TGDM generator checkpoint \(format 'lora'",
        write("plain.safetensors", {"w": torch.zeros(1)}, {}): "not a TGDM generator checkpoint .no 'format'",
        write("noconfig.safetensors", weights, {"format": "talkingface.tgdm", "version": "1"}): "no 'config'",
        write("v9.safetensors", weights, {**metadata, "version": "9"}): "version '9'",
        write("future.safetensors", weights, {**metadata, "config": json.dumps({**json.loads(metadata["config"]), "wings": 2})}): r"does not know: \['wings'\]",
        write("missing.safetensors", {k: v for k, v in weights.items() if not k.startswith("output.")}, metadata): r"missing 2 weights.*output\.",
        write("extra.safetensors", {**weights, "spare.weight": torch.zeros(1)}, metadata): "spare.weight",
        write("shape.safetensors", {**weights, "output.bias": torch.zeros(7)}, metadata): r"'output.bias' is \(7,\)",
    }
    for path, message in cases.items():
        with pytest.raises(errors.ModelFileError, match=message):
            checkpoint.load_tgdm(path)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{nope")
    with pytest.raises(errors.ModelFileError, match="could not be read as safetensors"):
        checkpoint.load_tgdm(corrupt)
    with pytest.raises(errors.ModelFileError, match="not found"):
        checkpoint.load_tgdm(tmp_path / "absent.safetensors")


def test_the_warped_source_is_required_and_old_configs_load_without_it():
    model = tiny()
    kwargs, (source, source_surface) = inputs(model)
    features = model.encode_source(source, source_surface)
    kwargs.pop("warped_source")
    with pytest.raises(errors.TalkingFaceError, match="connect Render Textured Target's warped_source"):
        model(source=features, **kwargs)
    legacy = json.loads(model.config.to_json())
    del legacy["warp_condition"]
    old = config_module.TGDMConfig.from_json(json.dumps(legacy))
    assert not old.warp_condition and old.condition_channels == 3
    old_model = tgdm.TGDMDenoiser(old).eval()
    assert old_model.input.in_channels == 6 and model.input.in_channels == 10
    with torch.no_grad():
        assert old_model(source=old_model.encode_source(source, source_surface), **kwargs).shape == kwargs["noisy"].shape
