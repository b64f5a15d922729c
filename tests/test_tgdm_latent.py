"""Latent mode: the SD VAE loaded offline in both key layouts, the latent denoiser, sampler, training and nodes."""
import json
import subprocess
import sys

import pytest
import torch
from packloader import PACK_ROOT, pack_import
from safetensors.torch import load_file, save_file

vae_module = pack_import("pipelines.generator.vae")
config_module = pack_import("pipelines.generator.config")
tgdm = pack_import("pipelines.generator.tgdm")
sampling = pack_import("pipelines.generator.sampler")
generator_inputs = pack_import("pipelines.generator.inputs")
checkpoint = pack_import("pipelines.generator.checkpoint")
training = pack_import("pipelines.training.tgdm")
evaluation = pack_import("pipelines.training.tgdm_evaluation")
synthetic = pack_import("pipelines.training.synthetic_faces")
demo_model = pack_import("pipelines.morphable.demo_model")
coefficients = pack_import("pipelines.morphable.coefficients")
errors = pack_import("pipelines.errors")
generator_nodes = pack_import("nodes.generator")
host = pack_import("nodes.host")
nodes_base = pack_import("nodes.base")

TINY_VAE = {"block_out_channels": [8, 8, 8, 8], "norm_num_groups": 4, "layers_per_block": 1, "sample_size": 64}
LATENT = dict(space="latent", image_size=8, base_channels=8, channel_multipliers=(1, 2), attention_resolutions=(8,),
              attention_head_channels=4, source_base_channels=8, norm_groups=4, surface_frequencies=2,
              render_stem_channels=8)
PIXELS = 64


def tiny_vae_config():
    return {**vae_module.vae_config("sd15"), **TINY_VAE}


@pytest.fixture(scope="module")
def autoencoder():
    torch.manual_seed(0)
    model = vae_module.build_autoencoder(tiny_vae_config()).eval()
    with torch.no_grad():  # a less trivial decoder than the default init, so weight mix-ups show
        for parameter in model.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    return model


@pytest.fixture(scope="module")
def codec(autoencoder):
    return vae_module.DiffusersVAECodec(autoencoder, batch_size=2)


def latent_model(**changes):
    torch.manual_seed(0)
    model = tgdm.TGDMDenoiser(config_module.TGDMConfig(**{**LATENT, **changes}))
    torch.nn.init.normal_(model.output.weight, std=0.05)
    return model.eval()


def video(frames=5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return generator_inputs.GeneratorInputs(
        source=torch.rand(1, PIXELS, PIXELS, 3, generator=generator),
        renders=torch.rand(frames, PIXELS, PIXELS, 3, generator=generator),
        coefficients=torch.randn(frames, config_module.DEFAULT_COEFFICIENT_DIM, generator=generator),
        target_surfaces=torch.rand(frames, PIXELS, PIXELS, 3, generator=generator),
        source_surface=torch.rand(1, PIXELS, PIXELS, 3, generator=generator),
        warped_sources=torch.rand(frames, PIXELS, PIXELS, 3, generator=generator),
        warp_masks=(torch.rand(frames, PIXELS, PIXELS, generator=generator) > 0.3).float(),
    )


# the VAE ----------------------------------------------------------------------------------------
def test_shipped_sd15_config_is_the_sd15_vae_with_its_original_key_names():
    config = vae_module.vae_config("sd15")
    assert (config["latent_channels"], config["block_out_channels"], config["scaling_factor"]) == (4, [128, 256, 512, 512], 0.18215)
    model = vae_module.build_autoencoder(config, "meta")
    weights = model.state_dict()
    assert len(weights) == 248 and round(sum(v.numel() for v in weights.values()) / 1e6, 2) == 83.65
    ldm = vae_module.ldm_vae_weights(weights, config)
    for name in ("encoder.down.0.block.0.conv1.weight", "encoder.down.1.block.0.nin_shortcut.weight",
                 "encoder.down.2.downsample.conv.weight", "encoder.mid.attn_1.q.weight", "encoder.norm_out.weight",
                 "decoder.up.3.block.2.conv2.weight", "decoder.up.1.upsample.conv.weight", "decoder.mid.block_2.norm1.bias",
                 "decoder.mid.attn_1.proj_out.weight", "quant_conv.weight", "post_quant_conv.bias"):
        assert name in ldm, name
    assert ldm["decoder.mid.attn_1.q.weight"].shape == (512, 512, 1, 1)
    back = vae_module.diffusers_vae_weights(ldm, config)
    assert {k: tuple(v.shape) for k, v in back.items()} == {k: tuple(v.shape) for k, v in weights.items()}
    with pytest.raises(errors.ModelFileError, match="unknown VAE 'sdxl'"):
        vae_module.vae_config("sdxl")


def _save(path, weights, config=None):
    save_file({k: v.contiguous() for k, v in weights.items()}, str(path),
              metadata={"config": json.dumps(config)} if config else None)
    return path


def test_vae_files_load_in_every_key_layout(autoencoder, tmp_path):
    config = tiny_vae_config()
    weights = autoencoder.state_dict()
    ldm = vae_module.ldm_vae_weights(weights, config)
    old_names = {k.replace(".to_q.", ".query.").replace(".to_out.0.", ".proj_attn."): v for k, v in weights.items()}
    files = {
        "diffusers": _save(tmp_path / "diffusers.safetensors", weights, config),
        "ldm": _save(tmp_path / "ldm.safetensors", ldm, config),
        "ldm_prefixed": _save(tmp_path / "full.safetensors", {f"first_stage_model.{k}": v for k, v in ldm.items()}, config),
        "old_diffusers": _save(tmp_path / "old.safetensors", old_names, config),
    }
    pixels = torch.rand(2, 3, PIXELS, PIXELS) * 2 - 1
    with torch.no_grad():
        expected = autoencoder.decode(autoencoder.encode(pixels).latent_dist.mode()).sample
        for layout, path in files.items():
            loaded = vae_module.load_vae(path)
            assert torch.allclose(loaded.decode(loaded.encode(pixels).latent_dist.mode()).sample, expected, atol=1e-5), layout
    assert next(vae_module.load_vae(files["ldm"], dtype=torch.bfloat16).parameters()).dtype == torch.bfloat16


def test_bad_vae_files_say_what_is_wrong(autoencoder, tmp_path):
    config = tiny_vae_config()
    ldm = vae_module.ldm_vae_weights(autoencoder.state_dict(), config)
    without_config = _save(tmp_path / "no_config.safetensors", ldm)
    with pytest.raises(errors.ModelFileError, match=r"not a sd15 VAE: .*the sd15 VAE needs \(512, 4, 3, 3\)"):
        vae_module.load_vae(without_config)  # no config in the file: the shipped SD1.5 one is used
    partial = _save(tmp_path / "partial.safetensors", {k: v for k, v in ldm.items() if k != "quant_conv.bias"}, config)
    with pytest.raises(errors.ModelFileError, match=r"missing 1 weights, e.g. \['quant_conv.bias'\]"):
        vae_module.load_vae(partial)
    other = _save(tmp_path / "lora.safetensors", {"lora_unet.down.weight": torch.zeros(2)})
    with pytest.raises(errors.ModelFileError, match="not a Stable Diffusion VAE.*ComfyUI/models/vae/"):
        vae_module.load_vae(other)
    with pytest.raises(errors.ModelFileError, match="VAE file '.*' not found.*ComfyUI/models/vae/"):
        vae_module.load_vae(tmp_path / "absent.safetensors")


def test_codec_batches_and_scales_like_comfyui(codec, autoencoder):
    images = torch.rand(5, PIXELS, PIXELS, 3)
    latents = codec.encode(images)
    assert latents.shape == (5, 4, 8, 8) and latents.device.type == "cpu"
    with torch.no_grad():
        raw = autoencoder.encode(images.permute(0, 3, 1, 2) * 2 - 1).latent_dist.mode()
    assert torch.allclose(latents, raw * 0.18215, atol=1e-5)
    decoded = codec.decode(latents)
    assert decoded.shape == images.shape and 0 <= decoded.min() and decoded.max() <= 1
    config = config_module.TGDMConfig(**LATENT)
    codec.check_matches(config)
    with pytest.raises(errors.TalkingFaceError, match="8-channel latents.*given has 4 channels.*ComfyUI/models/vae/"):
        codec.check_matches(config_module.TGDMConfig(**{**LATENT, "latent_channels": 8}))


# the denoiser -----------------------------------------------------------------------------------
def test_latent_denoiser_takes_latents_and_full_size_conditions():
    model = latent_model()
    config = model.config
    assert (config.pixel_size, config.denoised_channels) == (64, 4)
    generator = torch.Generator().manual_seed(0)
    noisy = torch.randn(2, 4, 8, 8, generator=generator)
    render = torch.rand(2, 3, 64, 64, generator=generator)
    surface = torch.rand(2, 3, 64, 64, generator=generator)
    warped = torch.cat([torch.rand(2, 3, 64, 64, generator=generator), torch.ones(2, 1, 64, 64)], dim=1)
    kwargs = dict(timesteps=torch.tensor([10, 900]), coefficients=torch.randn(2, config.coefficient_dim), target_surface=surface,
                  warped_source=warped)
    with torch.no_grad():
        source = model.encode_source(torch.randn(1, 4, 8, 8, generator=generator), surface[:1])
        out = model(noisy, render=render, source=source, **kwargs)
        assert out.shape == noisy.shape
        detail = render.clone()
        detail[:, :, 3::8, 5::8] += 0.5  # one pixel in every 8x8 cell: below the latent grid
        assert not torch.allclose(model(noisy, render=detail, source=source, **kwargs), out), "the stem sees sub-latent detail"
        with pytest.raises(errors.TalkingFaceError, match=r"8x8 VAE latents with 4 channels; the noisy input is \(2, 3, 8, 8\)"):
            model(noisy[:, :3], render=render, source=source, **kwargs)
        with pytest.raises(errors.TalkingFaceError, match=r"64x64 images with 3 channels; the render input"):
            model(noisy, render=render[:, :, :32, :32], source=source, **kwargs)
    pixel = tgdm.TGDMDenoiser(config_module.TGDMConfig(**{**LATENT, "space": "pixel", "image_size": 16}))
    assert not any(name.startswith("render_stem") for name in pixel.state_dict())
    with pytest.raises(errors.ModelFileError, match="space must be one of"):
        config_module.TGDMConfig(**{**LATENT, "space": "video"})


def test_configs_without_the_latent_fields_are_pixel_mode_and_the_demo_still_loads(tmp_path):
    old = {k: v for k, v in json.loads(config_module.TGDMConfig().to_json()).items()
           if k not in ("space", "vae", "latent_channels", "vae_scale_factor", "vae_scaling_factor", "render_stem_channels")}
    config = config_module.TGDMConfig.from_json(json.dumps(old))
    assert config.space == "pixel" and config.pixel_size == config.image_size == 256
    demo = checkpoint.load_tgdm(PACK_ROOT / "assets" / "tgdm_demo_64px.safetensors")
    assert not demo.config.latent and demo.config.pixel_size == 64
    model = latent_model()
    path = tmp_path / "latent.safetensors"
    checkpoint.save_tgdm(model, path)
    assert checkpoint.load_tgdm(path).config == model.config


# the sampler ------------------------------------------------------------------------------------
class CountingCodec:
    """Wraps a codec and records the batch sizes it is asked to encode and decode."""

    def __init__(self, inner):
        self.inner = inner
        self.calls = []
        for name in ("latent_channels", "scale_factor", "scaling_factor", "batch_size", "check_matches"):
            setattr(self, name, getattr(inner, name))

    def encode(self, images):
        self.calls.append(("encode", images.shape[0]))
        return self.inner.encode(images)

    def decode(self, latents):
        self.calls.append(("decode", latents.shape[0]))
        return self.inner.decode(latents)


def test_latent_sampler_decodes_each_chunk_and_does_not_depend_on_chunking(codec):
    model = latent_model()
    counting = CountingCodec(codec)
    settings = sampling.SamplerSettings(steps=2, batch_size=2, chunk_size=2, same_noise=False)
    chunked = sampling.TGDMSampler(model, settings, counting).sample(video())
    assert chunked.shape == (5, PIXELS, PIXELS, 3) and 0 <= chunked.min() and chunked.max() <= 1
    assert counting.calls == [("encode", 1), ("decode", 2), ("decode", 2), ("decode", 1)], "one source encode, a decode per chunk"
    whole = sampling.TGDMSampler(model, settings.__class__(steps=2, batch_size=5, chunk_size=5, same_noise=False), codec).sample(video())
    assert torch.allclose(chunked, whole, atol=1e-4)
    guided = sampling.TGDMSampler(model, sampling.SamplerSettings(steps=2, texture_guidance=2.0, scheduler="dpmpp_2m"), codec)
    assert guided.sample(video(frames=2)).shape == (2, PIXELS, PIXELS, 3)
    with pytest.raises(errors.TalkingFaceError, match="needs it to encode the source.*ComfyUI/models/vae/"):
        sampling.TGDMSampler(model, settings)
    with pytest.raises(errors.TalkingFaceError, match=r"the source image must be \[1 or 5, 64, 64, 3\]"):
        bad = video()
        bad.source = torch.rand(1, 8, 8, 3)
        sampling.TGDMSampler(model, settings, codec).sample(bad)


# training ---------------------------------------------------------------------------------------
def test_latent_training_caches_the_photo_latents(codec, tmp_path):
    views = synthetic.render_synthetic_views(demo_model.demo_face_model(12), 2, synthetic.SyntheticFaceSettings(
        image_size=PIXELS, views_per_identity=3), seed=1)
    counting = CountingCodec(codec)
    counting.name = "tiny.safetensors"
    config = config_module.TGDMConfig(**LATENT)
    settings = training.TrainingSettings(steps=3, batch_size=4, learning_rate=1e-3, checkpoint_every=100)
    face_model = demo_model.demo_face_model(12)
    trainer = training.TGDMTrainer(config, settings, tmp_path, counting, face_model)
    path = trainer.train(views, log=lambda line: None)
    encoded = sum(n for kind, n in counting.calls if kind == "encode")
    assert 0 < encoded <= len(views), "every photo is encoded at most once"
    everything = trainer.latents(views, torch.arange(len(views)))
    assert torch.allclose(everything, codec.encode(views.photos), atol=1e-2)
    calls = len(counting.calls)
    trainer.training_step(views)
    assert len(counting.calls) == calls, "cached latents are not encoded again"
    results = evaluation.evaluate_generator(checkpoint.load_tgdm(path), views, sampling.SamplerSettings(steps=2), codec,
                                            face_model=face_model)
    assert {"psnr_tgdm", "ssim_tgdm"} <= set(results)
    assert checkpoint.read_tgdm_metadata(path)["trained_with_vae"] == "tiny.safetensors"
    assert checkpoint.load_tgdm(path).config == config
    with pytest.raises(errors.TalkingFaceError, match="latent-mode generator .*ComfyUI/models/vae/"):
        training.TGDMTrainer(config, settings, tmp_path / "other", face_model=face_model)
    small = synthetic.render_synthetic_views(demo_model.demo_face_model(12), 1, synthetic.SyntheticFaceSettings(
        image_size=32, views_per_identity=2), seed=1)
    with pytest.raises(errors.TalkingFaceError, match="training photos are .*64x64"):
        trainer.train(small)


# nodes ------------------------------------------------------------------------------------------
class ComfyStyleVAE:
    """What ComfyUI's VAE object (comfy/sd.py) does for an SD VAE: IMAGE in, unscaled posterior mode out,
    and back to IMAGE; it owns its device."""

    latent_channels = 4
    downscale_ratio = 8

    def __init__(self, autoencoder):
        self.autoencoder = autoencoder

    @torch.no_grad()
    def encode(self, pixels):
        return self.autoencoder.encode(pixels.movedim(-1, 1) * 2 - 1).latent_dist.mode()

    @torch.no_grad()
    def decode(self, latents):
        return ((self.autoencoder.decode(latents).sample + 1) / 2).clamp(0, 1).movedim(1, -1)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    subprocess.run([sys.executable, "-m", "scripts.tiny_generator", str(root)], cwd=PACK_ROOT, check=True, capture_output=True)
    return root


@pytest.fixture
def models(tiny_models, monkeypatch):
    monkeypatch.setenv("TALKINGFACE_MODELS_DIR", str(tiny_models))
    return tiny_models


LATENT_FILE = "tgdm_latent.safetensors"
VAE_FILE = "vae-ft-mse-840000-ema-pruned.safetensors"


def sample_node(generator, frames=3):
    return generator_nodes.TGDMSampler().execute(
        generator=generator, source_image=torch.rand(1, 80, 80, 3, generator=torch.Generator().manual_seed(1)),
        render=torch.rand(frames, 64, 64, 3, generator=torch.Generator().manual_seed(2)),
        coefficients=coefficients.FaceCoefficients.neutral(frames), sampler="ddim", steps=2, seed=3,
        texture_guidance=1.0, geometry_guidance=1.0, batch_size=2, chunk_size=2, same_noise=True,
        warped_source=torch.rand(frames, 64, 64, 3, generator=torch.Generator().manual_seed(4)),
        warp_mask=torch.ones(frames, 64, 64),
    )[0]


def test_load_generator_takes_a_vae_file_or_comfyuis_vae(models):
    spec = generator_nodes.LoadGenerator.INPUT_TYPES()
    assert spec["optional"]["vae"][0] == "VAE" and VAE_FILE in spec["optional"]["vae_name"][0]
    load = generator_nodes.LoadGenerator()
    with pytest.raises(nodes_base.NodeInputError, match=r"^Load Generator: .*latent-mode generator \(64x64\).*ComfyUI/models/vae/"):
        load.execute(checkpoint=LATENT_FILE, precision="auto")
    from_file = load.execute(checkpoint=LATENT_FILE, precision="auto", vae_name=VAE_FILE)[0]
    images = sample_node(from_file)
    assert images.shape == (3, 64, 64, 3)
    comfy_vae = ComfyStyleVAE(vae_module.load_vae(models / "vae" / VAE_FILE))
    from_socket = load.execute(checkpoint=LATENT_FILE, precision="auto", vae=comfy_vae)[0]
    assert torch.allclose(sample_node(from_socket), images, atol=1e-4), "ComfyUI's VAE gives the same frames"
    pixel = load.execute(checkpoint="tgdm_tiny_32px.safetensors", precision="auto", vae_name=VAE_FILE)[0]
    assert pixel.vae is None, "pixel-mode generators ignore the VAE"
    video_vae = ComfyStyleVAE(comfy_vae.autoencoder)
    video_vae.latent_channels = 16
    with pytest.raises(nodes_base.NodeInputError, match="^Load Generator: .*given has 16 channels"):
        load.execute(checkpoint=LATENT_FILE, precision="auto", vae=video_vae)
    state = load_file(str(models / "vae" / VAE_FILE))
    assert "encoder.down.0.block.0.conv1.weight" in state, "the tiny VAE uses the original SD key names"
