"""The GPU speed cases of issue 14 in one prepared run (about 5-8 minutes on an H100 or H200).

    python -m bench.gpu

(a) ``sampler_overhead_b1``: a whole 25-step sampler run at batch 1 (default 256² pixel model, fp32,
    unguided) ÷ (denoiser passes × one bare pass on the same inputs); target ≤ 1.1.
(b) renderer, ms/frame: full pass at 512² and 256², rasterizer alone at 512², batch 8 (BFM-size
    mesh, as ``bench.render``); target ≤ 1 ms/frame at 512².
(c) frames/s at 25 guided steps (three variants per pass), bf16, batch 32, VAE decode included:
    the ~100M-parameter 256² pixel config (:func:`paper_sized_config`) and the 512² latent config
    (64² latents, SD1.5 VAE architecture built from its shipped config with random weights: speed
    does not depend on the weights); target ≥ 10.
(e) ``fps_pixel256_100m_b32_student4``: the same paper-sized model run as a 4-step distilled student
    (one plain pass per step; speed does not depend on what the weights learnt) against its 25 guided
    steps in the same case (``student_speedup_100m``), bf16, batch 32.
(d) training steps/s at 256², bf16, batch 32, default config, random views, the source warped onto
    each target by the face model (the data pipeline): once with the warp on the CPU (as
    ``scripts/train_tgdm.py`` runs it), once with the face model on the GPU.

Each case runs on its own: one that fails records its error and the others still run. Without
CUDA it prints a skip line and the JSON with nulls; ``--smoke`` then runs every case on the CPU at
toy sizes (2 steps, batch 2, 64² to 128²) to check the script itself. The last line is one JSON
object; the keys name the full-size cases whatever the scale.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch

from bench.render import benchmark_model, random_coefficients
from bench.sampler import bare_forward_seconds, inputs_for, latent_case, sampler_seconds, student_case
from pipelines.generator.config import TGDMConfig
from pipelines.generator.inputs import flat_coefficients
from pipelines.generator.sampler import SamplerSettings
from pipelines.generator.tgdm import TGDMDenoiser
from pipelines.morphable.camera import PerspectiveCamera
from pipelines.morphable.demo_model import demo_face_model
from pipelines.render.rasterizer import rasterize
from pipelines.render.renderer import FaceRenderer
from pipelines.training.synthetic_faces import FaceViews
from pipelines.training.tgdm import TGDMTrainer, TrainingSettings


@dataclass(frozen=True)
class Scale:
    steps: int = 25
    batch: int = 32
    pixel_size: int = 256
    latent_pixel_size: int = 512
    render_sizes: tuple[int, int] = (512, 256)
    train_batch: int = 32
    train_steps: int = 12


FULL = Scale()
SMOKE = Scale(steps=2, batch=2, pixel_size=64, latent_pixel_size=128, render_sizes=(128, 64), train_batch=2, train_steps=1)
KEYS = (
    "sampler_overhead_b1", "render_full_ms_512_b8", "render_full_ms_256_b8", "render_raster_ms_512_b8",
    "fps_pixel256_100m_b32", "parameters_m_pixel256_100m", "fps_latent512_b32", "latent512_vae_decode_share",
    "train_steps_per_s_256_b32_cpu_warp", "train_steps_per_s_256_b32_gpu_warp", "parameters_m_train",
    "fps_pixel256_100m_b32_student4", "student_speedup_100m",
)  # fmt: skip


def paper_sized_config(image_size: int = 256) -> TGDMConfig:
    """A paper-sized pixel TGDM (about 92M parameters at 256²): twice the default widths and two
    blocks per level."""
    return TGDMConfig(image_size=image_size, base_channels=128, blocks_per_level=2, source_base_channels=64)


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def sampler_overhead(device: torch.device, scale: Scale) -> dict[str, float]:
    torch.manual_seed(0)
    model = TGDMDenoiser(TGDMConfig(image_size=scale.pixel_size)).to(device).eval()
    inputs = inputs_for(1, scale.pixel_size)
    with torch.inference_mode():
        seconds, calls = sampler_seconds(model, inputs, SamplerSettings(steps=scale.steps, batch_size=1, chunk_size=1))
        bare = bare_forward_seconds(model, inputs, repeats=10)
    return {"sampler_overhead_b1": round(seconds / (calls * bare), 3)}


def median_ms_per_frame(run: Callable[[], object], frames: int, repeats: int) -> float:
    for _ in range(2):
        run()
    times = []
    for _ in range(repeats):
        synchronize()
        started = time.perf_counter()
        run()
        synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000.0 / frames


def renderer_speed(device: torch.device, scale: Scale) -> dict[str, float]:
    model = benchmark_model()[0].to(device)
    repeats = 20 if device.type == "cuda" else 1
    results = {}
    with torch.inference_mode():
        for size, name in zip(scale.render_sizes, (512, 256), strict=True):
            renderer = FaceRenderer(model, PerspectiveCamera.deep3d(size))
            coeffs = random_coefficients(8, device)
            results[f"render_full_ms_{name}_b8"] = round(median_ms_per_frame(partial(renderer.render, coeffs), 8, repeats), 4)
            if name == 512:
                screen = renderer.camera.to_screen(model.posed_vertices(coeffs))
                raster = partial(rasterize, screen, model.triangles, size, size)
                results["render_raster_ms_512_b8"] = round(median_ms_per_frame(raster, 8, repeats), 4)
    return results


def guided_fps(device: torch.device, scale: Scale) -> dict[str, float]:
    torch.manual_seed(0)
    model = TGDMDenoiser(paper_sized_config(scale.pixel_size)).to(device, torch.bfloat16).eval()
    settings = SamplerSettings(steps=scale.steps, batch_size=scale.batch, chunk_size=scale.batch, texture_guidance=2.0,
                               geometry_guidance=1.5)
    with torch.inference_mode():
        seconds, _ = sampler_seconds(model, inputs_for(scale.batch, scale.pixel_size), settings)
    parameters = sum(p.numel() for p in model.parameters()) / 1e6
    del model
    empty_cache()
    latent = latent_case(scale.latent_pixel_size, scale.batch, scale.steps, device, torch.bfloat16, guided=True)
    return {
        "fps_pixel256_100m_b32": round(scale.batch / seconds, 3), "parameters_m_pixel256_100m": round(parameters, 1),
        "fps_latent512_b32": latent["fps"], "latent512_vae_decode_share": latent["vae_decode_share"],
    }


def student_fps(device: torch.device, scale: Scale) -> dict[str, float]:
    torch.manual_seed(0)
    model = TGDMDenoiser(paper_sized_config(scale.pixel_size)).to(device, torch.bfloat16).eval()
    figures = student_case(model, scale.batch, scale.steps)
    del model
    empty_cache()
    return {"fps_pixel256_100m_b32_student4": figures["student_fps"], "student_speedup_100m": figures["student_speedup"]}


def random_views(count: int, size: int, identities: int) -> FaceViews:
    """Random images and small random coefficients: the trainer's cost does not depend on content."""
    generator = torch.Generator().manual_seed(0)
    coefficients = random_coefficients(count, "cpu")
    return FaceViews(
        photos=torch.rand(count, size, size, 3, generator=generator),
        renders=torch.rand(count, size, size, 3, generator=generator),
        surfaces=torch.rand(count, size, size, 3, generator=generator),
        coefficients=flat_coefficients(coefficients),
        identities=torch.arange(count) % identities,
    )


def training_speed(device: torch.device, scale: Scale) -> dict[str, float]:
    views = random_views(4 * scale.train_batch, scale.pixel_size, 16)
    results = {}
    for place, face_device in (("cpu", torch.device("cpu")), ("gpu", device)):
        face_model = demo_face_model().to(face_device)
        settings = TrainingSettings(steps=scale.train_steps + 3, batch_size=scale.train_batch,
                                    mixed_precision="bf16", checkpoint_every=10**9)
        with tempfile.TemporaryDirectory() as output:
            trainer = TGDMTrainer(TGDMConfig(image_size=scale.pixel_size), settings, output, face_model=face_model)
            for _ in range(2):
                trainer.training_step(views)
            synchronize()
            started = time.perf_counter()
            for _ in range(scale.train_steps):
                trainer.training_step(views)
            synchronize()
            seconds = time.perf_counter() - started
            results[f"train_steps_per_s_256_b32_{place}_warp"] = round(scale.train_steps / seconds, 3)
            results["parameters_m_train"] = round(sum(p.numel() for p in trainer.denoiser.parameters()) / 1e6, 1)
            del trainer
        empty_cache()
    return results


def empty_cache() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="without CUDA: run every case on the CPU at toy sizes")
    args = parser.parse_args()
    results: dict[str, object] = dict.fromkeys(KEYS)
    if torch.cuda.is_available():
        device, scale = torch.device("cuda"), FULL
        results.update(device=torch.cuda.get_device_name(), scale="full")
    elif args.smoke:
        device, scale = torch.device("cpu"), SMOKE
        results.update(device="cpu", scale="smoke (toy sizes: not figures)")
    else:
        print("skipped: no CUDA device; bench.gpu measures the GPU cases of issue 14 (--smoke checks the script on the CPU)")
        results.update(device=None, skipped="no CUDA device")
        print(json.dumps(results))
        return
    results.update(torch=torch.__version__, cpu_count=os.cpu_count())
    started = time.perf_counter()
    for name, case in (("sampler overhead", sampler_overhead), ("renderer", renderer_speed),
                       ("guided bf16 fps", guided_fps), ("few-step student", student_fps),
                       ("training", training_speed)):  # fmt: skip
        case_start = time.perf_counter()
        try:
            figures = case(device, scale)
        except Exception as error:  # one failing case must not lose the others' figures
            traceback.print_exc()
            figures = {}
            results[f"error_{name.replace(' ', '_')}"] = f"{type(error).__name__}: {error}"
        results.update(figures)
        print(f"{name} ({time.perf_counter() - case_start:.0f} s): {figures}", flush=True)
    results["total_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
