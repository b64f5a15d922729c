"""Dub Video benchmark: the whole dubbing pipeline (audio → landmarks, reference encoding, chunked
denoising, mouth paste-back) against bare denoiser forwards, and its memory over video length.

    python -m bench.dubbing [--size 64] [--steps 2] [--threads 1]

(a) ``fps``: output frames per second of :func:`dub_video` at ``--size`` (the dubbing model's default
    widths), ``--steps`` DDIM steps, batch 8, on 256² frames. On a CPU few steps keep the run short;
    the cost is linear in steps. ``overhead_ratio`` = pipeline seconds ÷ (denoiser passes × one bare
    denoiser pass on the same batch) in the same run: what the pipeline adds to the network.
(b) ``peak_mb_16`` / ``peak_mb_128``: peak resident memory above the start (the models and the input
    frames are already loaded) while dubbing 16 and 128 frames of 128² video in chunks of 8, each
    in a fresh process; target 128 frames ≤ 1.2 × 16 frames. The output IMAGE batch itself
    (128 × 128² × 3 float32 = 25 MB) is part of it: ComfyUI needs it whole.
(c) on a GPU only: fps at 256², 20 steps, bf16, batch 16, with and without landmark guidance.
The last line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from pipelines.audio.landmark_model import LandmarkCompletionTransformer, LandmarkModelConfig
from pipelines.face.faces import faces_from_landmarks
from pipelines.generator.dubbing import DubbingConfig, DubbingDenoiser
from pipelines.generator.dubbing_sampler import DubbingSampler, DubbingSettings
from pipelines.generator.dubbing_video import DubbingOptions, dub_video
from pipelines.morphable.demo_model import demo_face_model
from pipelines.training.audio_synthetic import synthetic_clip

FPS = 25.0


def setup(size: int, device: torch.device, dtype: torch.dtype = torch.float32):
    torch.manual_seed(0)
    model = DubbingDenoiser(DubbingConfig(image_size=size, attention_resolutions=(size // 8, size // 16))).to(device, dtype).eval()
    landmarks = LandmarkCompletionTransformer(LandmarkModelConfig()).to(device).eval()
    return model, landmarks


def video(frames: int, frame_size: int):
    """Frames of noise with a talking face's landmarks (speed does not depend on the pixels) and its speech."""
    clip = synthetic_clip(demo_face_model(resolution=16), frames / FPS + 0.2, seed=0)
    images = torch.rand(frames, frame_size, frame_size, 3, generator=torch.Generator().manual_seed(0))
    faces = faces_from_landmarks(images, clip.landmarks[:frames] * (frame_size / 224))
    audio = {"waveform": clip.audio[: int(frames / FPS * 16000)].reshape(1, 1, -1), "sample_rate": 16000}
    return faces, audio


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.inference_mode()
def pipeline_seconds(model, landmarks, faces, audio, settings: DubbingSettings, chunk: int) -> tuple[float, int]:
    sampler = DubbingSampler(model, settings)
    options = DubbingOptions(length_policy="cut_to_shorter", chunk_size=chunk)
    dub_video(sampler, landmarks, faces, audio, FPS, options)  # warm-up
    sampler.denoiser_calls = 0
    device = next(model.parameters()).device
    synchronize(device)
    started = time.perf_counter()
    dub_video(sampler, landmarks, faces, audio, FPS, options)
    synchronize(device)
    return time.perf_counter() - started, sampler.denoiser_calls


@torch.inference_mode()
def bare_forward_seconds(model: DubbingDenoiser, batch: int, repeats: int = 3) -> float:
    config = model.config
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    size, channels = config.image_size, config.denoised_channels
    noisy = torch.randn(batch, channels, size, size, device=device, dtype=dtype)
    mask = torch.ones(batch, 1, size, size, device=device, dtype=dtype)
    landmarks = torch.rand(batch, 37, 2, device=device, dtype=dtype) - 0.5
    references = model.encode_references(torch.randn(1, config.reference_frames, channels, size, size, device=device, dtype=dtype),
                                         torch.rand(1, config.reference_frames, 37, 2, device=device, dtype=dtype) - 0.5)
    timesteps = torch.full((batch,), 500, device=device)
    times = []
    for _ in range(repeats + 1):
        synchronize(device)
        started = time.perf_counter()
        model(noisy, timesteps, noisy, mask, landmarks, references)
        synchronize(device)
        times.append(time.perf_counter() - started)
    return sorted(times[1:])[len(times[1:]) // 2]


def memory_child(frames: int, size: int, steps: int) -> None:
    model, landmarks = setup(size, torch.device("cpu"))
    faces, audio = video(frames, 128)
    Path("/proc/self/clear_refs").write_text("5")  # resets the peak resident size (VmHWM)
    start = _status_kb("VmRSS") * 1024
    with torch.inference_mode():
        dub_video(DubbingSampler(model, DubbingSettings(steps=steps, batch_size=8)), landmarks, faces, audio, FPS,
                  DubbingOptions(length_policy="cut_to_shorter", chunk_size=8))
    print(json.dumps({"peak_mb": (_status_kb("VmHWM") * 1024 - start) / 2**20}))


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_memory_mb(frames: int, size: int, threads: int) -> float:
    command = [sys.executable, "-m", "bench.dubbing", "--memory-child", str(frames), "--size", str(size),
               "--steps", "1", "--threads", str(threads)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_mb"]


def gpu_cases() -> dict[str, object]:
    if not torch.cuda.is_available():
        return {"gpu_cases": "skipped: no CUDA device; run `python -m bench.dubbing` on a GPU for the 256², 20-step, "
                             "bf16, batch-16 figures"}
    device = torch.device("cuda")
    model, landmarks = setup(256, device, torch.bfloat16)
    faces, audio = video(64, 512)
    results: dict[str, object] = {"gpu_cases": "256², 20 steps, bf16, batch 16, 64 frames of 512² video",
                                  "gpu_device": torch.cuda.get_device_name()}
    for guidance in (1.0, 2.0):
        seconds, _ = pipeline_seconds(model, landmarks, faces, audio,
                                      DubbingSettings(steps=20, batch_size=16, landmark_guidance=guidance), chunk=32)
        results[f"gpu_fps_256_guidance{guidance:g}"] = round(64 / seconds, 2)
    torch.cuda.reset_peak_memory_stats()
    pipeline_seconds(model, landmarks, faces, audio, DubbingSettings(steps=2, batch_size=16), chunk=32)
    results["gpu_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="model resolution of the CPU cases")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--frames", type=int, default=16, help="frames of the speed case")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    parser.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child is not None:
        memory_child(args.memory_child, args.size, args.steps)
        return
    cpu = torch.device("cpu")
    model, landmarks = setup(args.size, cpu)
    faces, audio = video(args.frames, 256)
    seconds, calls = pipeline_seconds(model, landmarks, faces, audio, DubbingSettings(steps=args.steps, batch_size=8), chunk=16)
    bare = bare_forward_seconds(model, 8)
    results: dict[str, object] = {
        "device": f"cpu x{torch.get_num_threads()}", "size": args.size, "steps": args.steps,
        "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "fps": round(args.frames / seconds, 3), "overhead_ratio": round(seconds / (calls * bare), 3),
    }
    print(f"{args.frames} frames in {seconds:.2f}s, {calls} denoiser passes of {bare:.3f}s", flush=True)
    for frames in (16, 128):
        results[f"peak_mb_{frames}"] = round(peak_memory_mb(frames, args.size, args.threads), 1)
    results["peak_growth"] = round(results["peak_mb_128"] / max(results["peak_mb_16"], 1e-6), 3)
    results.update(gpu_cases())
    print(json.dumps(results))


if __name__ == "__main__":
    main()
