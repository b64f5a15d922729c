"""TGDM sampler benchmark.

    python -m bench.sampler [--steps 2] [--size 256] [--threads 0]

(a) overhead: seconds of a whole sampler run ÷ (denoiser passes it made × seconds of one bare
    denoiser pass on the same batch); target ≤ 1.1.
(b) frames/s at batch 1, 8 and 32 for the default 256² model config. On a CPU the run uses few
    steps (``--steps``, reported as ``steps``) to stay within minutes; frames/s at S steps is
    about fps × steps / S, as the sampler's cost is linear in steps (see (a)).
(c) peak working memory (above the memory held before sampling: model, inputs) while streaming
    16 and 64 frames in chunks, each in a fresh process; target: 64 frames ≤ 1.2 × 16 frames.
(d) on a GPU only: frames/s at batch 32, 25 steps, two-condition guidance, bf16, for the 256²
    pixel model (target ≥ 10) and the 512² latent model (64² latents, SD1.5 VAE architecture with
    random weights: speed does not depend on the weights), VAE decode included. Without CUDA the
    JSON says so in ``gpu_cases``.
(f) ``warp_condition_cost``: one denoiser pass with the warped-source input ÷ one without it, same
    widths (the old design); target ≤ 1.1.
(g) ``student_*``: a few-step student (``distilled`` scheduler, 4 steps, one pass each) against its
    teacher (DDIM, 25 steps, two-condition guidance: three variants per pass), same model widths,
    same batch (``--student-batch``), same run: on the CPU the bundled 64² demo generator; on a GPU
    also the 256² default config in bf16 at batch 32 (``gpu_fps_pixel256_b32_student4``). ``--only-student``
    runs (g) alone.
(e) latent mode on the CPU at a small size (``--latent-size``, default 128² = 16² latents, the SD1.5
    VAE architecture): frames/s at batch 2, the share of the time spent decoding with the VAE, and
    peak memory streaming 16 vs 64 frames (VAE decode per chunk included).
Uses CUDA (fp32 there too, for comparability) for (a)-(c) when available. ``--only-latent`` runs
(d)-(e) alone. The last line is one JSON object.
"""
from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from pipelines.generator.checkpoint import load_tgdm
from pipelines.generator.config import DEFAULT_COEFFICIENT_DIM, TGDMConfig
from pipelines.generator.distilled import DISTILLED_SCHEDULER, Distillation
from pipelines.generator.inputs import GeneratorInputs, to_channels_first, to_model_images, warp_condition
from pipelines.generator.sampler import SamplerSettings, TGDMSampler
from pipelines.generator.tgdm import TGDMDenoiser
from pipelines.generator.vae import DiffusersVAECodec, build_autoencoder, vae_config

GPU_BATCH = 32
GPU_STEPS = 25
STUDENT_STEPS = 4
DEMO_GENERATOR = Path(__file__).resolve().parents[1] / "assets" / "tgdm_demo_64px.safetensors"


def inputs_for(frames: int, size: int) -> GeneratorInputs:
    generator = torch.Generator().manual_seed(0)
    return GeneratorInputs(
        source=torch.rand(1, size, size, 3, generator=generator),
        renders=torch.rand(frames, size, size, 3, generator=generator),
        coefficients=torch.randn(frames, DEFAULT_COEFFICIENT_DIM, generator=generator),
        target_surfaces=torch.rand(frames, size, size, 3, generator=generator),
        source_surface=torch.rand(1, size, size, 3, generator=generator),
        warped_sources=torch.rand(frames, size, size, 3, generator=generator),
        warp_masks=(torch.rand(frames, size, size, generator=generator) > 0.2).float(),
    )


def model_for(size: int, device: torch.device, warp_condition: bool = True) -> TGDMDenoiser:
    torch.manual_seed(0)
    return TGDMDenoiser(TGDMConfig(image_size=size, warp_condition=warp_condition)).to(device).eval()


def latent_setup(pixel_size: int, device: torch.device, dtype: torch.dtype) -> tuple[TGDMDenoiser, DiffusersVAECodec]:
    """The default denoiser widths in latent mode (texture attention at half the latent size) and an
    SD1.5-architecture VAE, randomly initialised."""
    torch.manual_seed(0)
    latent_size = pixel_size // 8
    config = TGDMConfig(space="latent", image_size=latent_size, attention_resolutions=(latent_size // 2,))
    model = TGDMDenoiser(config).to(device, dtype).eval()
    autoencoder = build_autoencoder(vae_config("sd15"), device).eval()
    if dtype != torch.float32:
        autoencoder.to(dtype)
    return model, DiffusersVAECodec(autoencoder, batch_size=8)


@torch.inference_mode()
def latent_case(pixel_size: int, batch: int, steps: int, device: torch.device, dtype: torch.dtype, guided: bool) -> dict[str, float]:
    """Frames/s of the whole latent pipeline (source encode, denoising, VAE decode) and the decode's share."""
    model, codec = latent_setup(pixel_size, device, dtype)
    inputs = inputs_for(batch, pixel_size)
    settings = SamplerSettings(steps=steps, batch_size=batch, chunk_size=batch,
                               texture_guidance=2.0 if guided else 1.0, geometry_guidance=1.5 if guided else 1.0)
    seconds, _ = sampler_seconds(model, inputs, settings, codec)
    latents = torch.randn(batch, 4, pixel_size // 8, pixel_size // 8)
    codec.decode(latents)
    synchronize(device)
    started = time.perf_counter()
    codec.decode(latents)
    synchronize(device)
    decode = time.perf_counter() - started
    return {"fps": round(batch / seconds, 3), "vae_decode_share": round(decode / seconds, 3)}


def gpu_cases(device: torch.device) -> dict[str, object]:
    """(d): the bf16, guided, batch-32 figures of DESIGN §6."""
    if device.type != "cuda":
        return {"gpu_cases": "skipped: no CUDA device; run `python -m bench.sampler --only-latent` on a GPU for "
                             "the 256² pixel and 512² latent bf16 figures"}
    torch.manual_seed(0)
    pixel = TGDMDenoiser(TGDMConfig(image_size=256)).to(device, torch.bfloat16).eval()
    settings = SamplerSettings(steps=GPU_STEPS, batch_size=GPU_BATCH, chunk_size=GPU_BATCH, texture_guidance=2.0,
                               geometry_guidance=1.5)
    with torch.inference_mode():
        seconds, _ = sampler_seconds(pixel, inputs_for(GPU_BATCH, 256), settings)
    student = student_case(pixel, GPU_BATCH, GPU_STEPS)
    del pixel
    latent = latent_case(512, GPU_BATCH, GPU_STEPS, device, torch.bfloat16, guided=True)
    return {"gpu_cases": f"{GPU_STEPS} steps, guided, bf16, batch {GPU_BATCH}",
            "gpu_fps_pixel256_b32": round(GPU_BATCH / seconds, 3),
            "gpu_fps_pixel256_b32_student4": student["student_fps"], "gpu_student_speedup": student["student_speedup"],
            "gpu_fps_latent512_b32": latent["fps"], "gpu_latent512_vae_decode_share": latent["vae_decode_share"]}


@torch.inference_mode()
def student_case(teacher: TGDMDenoiser, batch: int, teacher_steps: int) -> dict[str, float]:
    """(g): frames/s of the teacher at ``teacher_steps`` guided DDIM steps and of a student of it (the
    same weights marked as a 4-step student: speed does not depend on what the weights learnt) in 4
    distilled steps, on the same inputs."""
    student = copy.deepcopy(teacher)
    student.distillation = Distillation(STUDENT_STEPS, 1.5, 1.5, 12)
    inputs = inputs_for(batch, teacher.config.pixel_size)
    guided = SamplerSettings(steps=teacher_steps, batch_size=batch, chunk_size=batch, texture_guidance=1.5, geometry_guidance=1.5)
    few = SamplerSettings(scheduler=DISTILLED_SCHEDULER, steps=STUDENT_STEPS, batch_size=batch, chunk_size=batch)
    teacher_seconds, _ = sampler_seconds(teacher, inputs, guided)
    student_seconds, _ = sampler_seconds(student, inputs, few)
    return {"teacher_fps": round(batch / teacher_seconds, 3), "student_fps": round(batch / student_seconds, 3),
            "student_speedup": round(teacher_seconds / student_seconds, 2)}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.inference_mode()
def bare_forward_seconds(model: TGDMDenoiser, inputs: GeneratorInputs, repeats: int = 3) -> float:
    """One denoiser pass on the batch, inputs already on the device (the floor the sampler is measured against)."""
    device = next(model.parameters()).device
    frames = inputs.frames
    noisy = torch.randn(frames, 3, model.config.image_size, model.config.image_size, device=device)
    render = to_model_images(inputs.renders, device, torch.float32)
    coefficients = inputs.coefficients.to(device)
    surface = to_channels_first(inputs.target_surfaces, device, torch.float32)
    warped = warp_condition(inputs.warped_sources, inputs.warp_masks, device, torch.float32) if model.config.warp_condition else None
    source = model.encode_source(to_model_images(inputs.source, device, torch.float32),
                                 to_channels_first(inputs.source_surface, device, torch.float32))
    timesteps = torch.full((frames,), 500, device=device)
    times = []
    for _ in range(repeats + 1):
        synchronize(device)
        started = time.perf_counter()
        model(noisy, timesteps, render, coefficients, source, surface, warped_source=warped)
        synchronize(device)
        times.append(time.perf_counter() - started)
    return sorted(times[1:])[len(times[1:]) // 2]


def sampler_seconds(
    model: TGDMDenoiser, inputs: GeneratorInputs, settings: SamplerSettings, vae: DiffusersVAECodec | None = None
) -> tuple[float, int]:
    sampler = TGDMSampler(model, settings, vae)
    sampler.sample(inputs)  # warm-up (scheduler import, allocator)
    device = next(model.parameters()).device
    synchronize(device)
    started = time.perf_counter()
    sampler.sample(inputs)
    synchronize(device)
    return time.perf_counter() - started, sampler.denoiser_calls


def memory_child(frames: int, size: int, steps: int, device_name: str, latent: bool) -> None:
    """Stream ``frames`` frames through the sampler (the latent pipeline with its VAE decode when
    ``latent``); print the peak memory above the starting point, in MB."""
    device = torch.device(device_name)
    model, vae = latent_setup(size, device, torch.float32) if latent else (model_for(size, device), None)
    inputs = inputs_for(frames, size)
    settings = SamplerSettings(steps=steps, batch_size=8, chunk_size=8)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # resets the peak resident size (VmHWM)
        start = _status_kb("VmRSS") * 1024
    with torch.inference_mode():
        for _chunk, _images in TGDMSampler(model, settings, vae).sample_chunks(inputs):
            pass  # a caller streaming to disk keeps nothing
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else _status_kb("VmHWM") * 1024
    print(json.dumps({"peak_mb": (peak - start) / 2**20}))


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_memory_mb(frames: int, size: int, steps: int, device: torch.device, threads: int, latent: bool = False) -> float:
    command = [sys.executable, "-m", "bench.sampler", "--memory-child", str(frames), "--size", str(size),
               "--steps", str(steps), "--device", str(device), "--threads", str(threads), *(["--latent"] if latent else [])]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_mb"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="default: 25 on a GPU, 2 on a CPU")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--latent-size", type=int, default=128, help="output size of the CPU latent-mode case (e)")
    parser.add_argument("--only-latent", action="store_true", help="run only the latent and GPU cases (d), (e)")
    parser.add_argument("--only-student", action="store_true", help="run only the student case (g)")
    parser.add_argument("--student-batch", type=int, default=8, help="frames per batch of the student case (g)")
    parser.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--latent", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    steps = args.steps or (25 if device.type == "cuda" else 2)
    if args.memory_child is not None:
        memory_child(args.memory_child, args.size, steps, str(device), args.latent)
        return

    results: dict[str, object] = {"device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu x{torch.get_num_threads()}"}
    demo = load_tgdm(DEMO_GENERATOR, device)
    results.update({f"student_demo64_b{args.student_batch}_{name}": value
                    for name, value in student_case(demo, args.student_batch, GPU_STEPS).items()})
    print(f"student (4 distilled steps) vs teacher (25 guided steps): {results}", flush=True)
    if args.only_student:
        print(json.dumps(results))
        return
    results.update({"size": args.size, "steps": steps})
    if not args.only_latent:
        pixel_cases(args, device, steps, results)
    results.update(gpu_cases(device))
    cpu_latent = latent_case(args.latent_size, 2, steps, torch.device("cpu"), torch.float32, guided=False)
    results.update({"latent_cpu_size": args.latent_size, "latent_cpu_fps_b2": cpu_latent["fps"],
                    "latent_cpu_vae_decode_share": cpu_latent["vae_decode_share"]})
    for frames in (16, 64):
        results[f"latent_cpu_peak_mb_{frames}"] = round(
            peak_memory_mb(frames, args.latent_size, 1, torch.device("cpu"), args.threads, latent=True), 1)
    results["latent_cpu_peak_growth"] = round(results["latent_cpu_peak_mb_64"] / max(results["latent_cpu_peak_mb_16"], 1e-6), 3)
    print(json.dumps(results))


def pixel_cases(args: argparse.Namespace, device: torch.device, steps: int, results: dict[str, object]) -> None:
    """(a)-(c) for the default pixel model."""
    model = model_for(args.size, device)
    results["parameters_m"] = round(sum(p.numel() for p in model.parameters()) / 1e6, 2)
    overhead_inputs = inputs_for(2, args.size)
    pipeline, calls = sampler_seconds(model, overhead_inputs, SamplerSettings(steps=steps, batch_size=2, chunk_size=2))
    bare = bare_forward_seconds(model, overhead_inputs)
    results["overhead_ratio"] = round(pipeline / (calls * bare), 3)
    print(f"overhead: {pipeline:.2f}s for {calls} passes of {bare:.2f}s", flush=True)
    without_warp = bare_forward_seconds(model_for(args.size, device, warp_condition=False), overhead_inputs)
    results["warp_condition_cost"] = round(bare / without_warp, 3)
    print(f"the warped-source input costs {bare / without_warp:.3f}x a pass without it (target ≤ 1.1)", flush=True)
    for batch in (1, 8, 32):
        seconds, _ = sampler_seconds(model, inputs_for(batch, args.size),
                                     SamplerSettings(steps=steps, batch_size=batch, chunk_size=batch))
        results[f"fps_b{batch}"] = round(batch / seconds, 3)
        print(f"batch {batch}: {batch / seconds:.3f} frames/s", flush=True)
    for frames in (16, 64):
        results[f"peak_mb_{frames}"] = round(peak_memory_mb(frames, args.size, 1, device, args.threads), 1)
    results["peak_growth"] = round(results["peak_mb_64"] / max(results["peak_mb_16"], 1e-6), 3)


if __name__ == "__main__":
    main()
