"""The sampler's step loop never makes the host wait for the device.

On a GPU, reading a device value on the host (``.item()``, ``bool()``, Python branching on a
tensor) or copying host data to the device (``.to(device)``, ``torch.tensor(..., device=...)``)
stalls the CPU until the GPU has caught up, so the next kernels start late. On the CPU there is no
device, so the test emulates one: every tensor computed from the model's weights or from the
latents handed to the scheduler is "on the device" (tracked through every op), and the loop may
neither read such a tensor's value nor create or move tensors to a device.
"""
import os
import sys

import pytest
import torch
from packloader import pack_import
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

config_module = pack_import("pipelines.generator.config")
tgdm = pack_import("pipelines.generator.tgdm")
sampling = pack_import("pipelines.generator.sampler")

SIZE = 16
STEPS = 3
PACK_FOLDER = os.path.dirname(os.path.dirname(os.path.abspath(sampling.__file__))) + os.sep  # the pack's pipelines/


class DeviceValueReads(TorchDispatchMode):
    """Tracks "device" tensors through every op and records host reads of their values."""

    def __init__(self, device_tensors: list[torch.Tensor]) -> None:
        super().__init__()
        self.kept: list[torch.Tensor] = []
        self.ids: set[int] = set()
        self.reads: list[str] = []
        for tensor in device_tensors:
            self.mark(tensor)

    def mark(self, tensor: torch.Tensor) -> None:
        self.kept.append(tensor)  # keeps ids unique while the mode is alive
        self.ids.add(id(tensor))

    def on_device(self, value: object) -> bool:
        return isinstance(value, torch.Tensor) and id(value) in self.ids

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs, _ = tree_flatten((args, kwargs))
        from_device = any(self.on_device(value) for value in inputs)
        if func is torch.ops.aten._local_scalar_dense.default and from_device:
            self.reads.append(str(func))
        result = func(*args, **kwargs)
        if from_device:
            for value in tree_flatten(result)[0]:
                if isinstance(value, torch.Tensor):
                    self.mark(value)
        return result


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = config_module.TGDMConfig(image_size=SIZE, base_channels=8, channel_multipliers=(1, 2),
                                      attention_resolutions=(8,), attention_head_channels=4, source_base_channels=8,
                                      norm_groups=4, surface_frequencies=2)
    return tgdm.TGDMDenoiser(config).eval()


def video(frames: int):
    generator = torch.Generator().manual_seed(0)
    return sampling.GeneratorInputs(
        source=torch.rand(1, SIZE, SIZE, 3, generator=generator),
        renders=torch.rand(frames, SIZE, SIZE, 3, generator=generator),
        coefficients=torch.randn(frames, config_module.DEFAULT_COEFFICIENT_DIM, generator=generator),
        target_surfaces=torch.rand(frames, SIZE, SIZE, 3, generator=generator),
        source_surface=torch.rand(1, SIZE, SIZE, 3, generator=generator),
        warped_sources=torch.rand(frames, SIZE, SIZE, 3, generator=generator),
        warp_masks=(torch.rand(frames, SIZE, SIZE, generator=generator) > 0.3).float(),
    )


@pytest.mark.parametrize("scheduler", sampling.SCHEDULERS)
@pytest.mark.parametrize("guided", [False, True])
def test_the_step_loop_reads_no_device_value_and_copies_nothing_to_the_device(model, monkeypatch, scheduler, guided):
    weights = [*model.parameters(), *model.buffers()]
    loop = {"mode": None, "step_timesteps": [], "copies": []}
    make_scheduler = sampling.make_scheduler

    def watched_scheduler(name, config):
        instance = make_scheduler(name, config)
        scale, step = instance.scale_model_input, instance.step

        def scale_model_input(sample, timestep):
            if loop["mode"] is None:  # the first call of the step loop: the device emulation starts
                loop["mode"] = DeviceValueReads([*weights, sample])
                loop["mode"].__enter__()
            loop["mode"].mark(sample)
            return scale(sample, timestep)

        def watched_step(model_output, timestep, sample, **kwargs):
            loop["step_timesteps"].append(timestep)
            return step(model_output, timestep, sample, **kwargs)

        instance.scale_model_input, instance.step = scale_model_input, watched_step
        return instance

    def on_step(step, steps):
        if step == steps and loop["mode"] is not None:
            loop["mode"].__exit__(None, None, None)
            loop["reads"], loop["mode"] = loop["mode"].reads, None

    original_to, original_tensor = torch.Tensor.to, torch.tensor

    def called_from_the_pack() -> bool:
        # The scheduler's own moves target its schedule's device, the CPU (asserted below).
        return PACK_FOLDER in sys._getframe(2).f_code.co_filename

    def counting_to(self, *args, **kwargs):
        moves = "device" in kwargs or any(isinstance(arg, (torch.device, str, torch.Tensor)) for arg in args)
        if loop["mode"] is not None and moves and called_from_the_pack():
            loop["copies"].append(f".to{args}")
        return original_to(self, *args, **kwargs)

    def counting_tensor(*args, **kwargs):
        if loop["mode"] is not None and called_from_the_pack():
            loop["copies"].append("torch.tensor")
        return original_tensor(*args, **kwargs)

    monkeypatch.setattr(sampling, "make_scheduler", watched_scheduler)
    monkeypatch.setattr(torch.Tensor, "to", counting_to)
    monkeypatch.setattr(torch, "tensor", counting_tensor)
    guidance = {"texture_guidance": 2.0, "geometry_guidance": 1.5} if guided else {}
    settings = sampling.SamplerSettings(scheduler=scheduler, steps=STEPS, batch_size=2, chunk_size=5, **guidance)
    sampler = sampling.TGDMSampler(model, settings)
    images = sampler.sample(video(5), on_step=on_step)

    assert images.shape == (5, SIZE, SIZE, 3) and torch.isfinite(images).all()
    assert sampler.denoiser_calls == STEPS * 3  # the device emulation ran the whole loop
    assert loop["reads"] == [], "the step loop reads device values on the host"
    assert loop["copies"] == [], "the step loop creates or moves tensors onto the device"
    # The scheduler branches on timesteps: they must be host values.
    assert len(loop["step_timesteps"]) == STEPS
    assert all(t.device.type == "cpu" for t in loop["step_timesteps"])


def test_the_detector_sees_a_read_of_a_device_value(model):
    weights = list(model.parameters())
    with DeviceValueReads(weights) as mode:
        total = weights[0].sum() * 2
        if total > 0:  # Python branching on a device value
            pass
        torch.ones(3).sum().item()  # a host value: not a device read
    assert mode.reads == ["aten._local_scalar_dense.default"]
