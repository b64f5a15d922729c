"""Face swap benchmark.

    python -m bench.face_swap [--steps 2] [--threads 1]

(a) ``weightfree_fps``: frames/s of the weight-free swap (source photo warped onto the swapped
    geometry, colour-matched paste-back) at 256² crops in 384² frames, chunks of 16.
(b) ``tgdm_fps`` and ``swap_over_sampler``: frames/s of the TGDM swap (conditioning, denoising with
    the identity token, paste-back) with a 64² generator (base 32, levels 1,2,2, ArcFace-wide token),
    ``--steps`` steps, and its time ÷ the sampler alone on the same number of frames and steps (the
    reference in the same run): what conditioning and paste-back add; target ≤ 1.2.
(c) ``peak_mb_{16,64}`` and ``peak_growth``: working memory of a TGDM swap of 16 and 64 frames, each in a
    fresh process: the peak resident size above what was held before the swap, less the output frames
    and masks themselves (they are the IMAGE/MASK handed back and grow with the video by nature);
    target: 64 frames ≤ 1.2 × 16 frames.
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

from bench.sampler import _status_kb, inputs_for
from pipelines.face.faces import faces_from_landmarks
from pipelines.generator.config import TGDMConfig
from pipelines.generator.face_swap import SwapSettings, swap_faces, swap_source
from pipelines.generator.inputs import generator_rows_to_coefficients
from pipelines.generator.sampler import SamplerSettings, TGDMSampler
from pipelines.generator.tgdm import TGDMDenoiser
from pipelines.morphable.camera import PerspectiveCamera
from pipelines.morphable.demo_model import demo_face_model
from pipelines.render.renderer import FaceRenderer
from pipelines.training.synthetic_faces import DESCRIPTOR_DIM, SyntheticFaceSettings, render_synthetic_views

UNIQUE_VIEWS = 8


def swap_setup(frames: int, crop: int) -> tuple:
    """A source photo and a ``frames``-frame target video (synthetic people, crops of ``crop`` px set
    into frames 1.5× as wide), analysed from their landmarks; coefficients are the true ones."""
    model = demo_face_model()
    views = render_synthetic_views(model, 2, SyntheticFaceSettings(image_size=crop, views_per_identity=UNIQUE_VIEWS), seed=1)
    frame_size = crop * 3 // 2
    offset = (frame_size - crop) // 2
    canvas = torch.full((len(views), frame_size, frame_size, 3), 0.25)
    canvas[:, offset : offset + crop, offset : offset + crop] = views.photos
    coefficients = generator_rows_to_coefficients(views.coefficients, model.dims)
    landmarks = FaceRenderer(model, PerspectiveCamera.deep3d(crop)).render(coefficients).landmarks + offset
    rows = torch.arange(UNIQUE_VIEWS, UNIQUE_VIEWS + frames) % UNIQUE_VIEWS + UNIQUE_VIEWS  # the second person's views
    target = faces_from_landmarks(canvas[rows], landmarks[rows], crop)
    source_faces = faces_from_landmarks(canvas[:1], landmarks[:1], crop)
    source_faces.embeddings = views.descriptors[:1]
    return model, source_faces, coefficients[0:1], target, coefficients[rows]


def generator_for(size: int) -> TGDMDenoiser:
    torch.manual_seed(0)
    config = TGDMConfig(image_size=size, base_channels=32, channel_multipliers=(1, 2, 2), attention_resolutions=(32, 16),
                        source_base_channels=32, identity_dim=DESCRIPTOR_DIM)
    return TGDMDenoiser(config).eval()


def swap_seconds(frames: int, crop: int, steps: int | None) -> float:
    face_model, source_faces, source_coeffs, target_faces, target_coeffs = swap_setup(frames, crop)
    sampler = None
    if steps is not None:
        sampler = TGDMSampler(generator_for(crop), SamplerSettings(steps=steps, batch_size=8, chunk_size=16))
    source = swap_source(source_faces, source_coeffs, crop)
    started = time.perf_counter()
    swap_faces(face_model, source, target_faces, target_coeffs, SwapSettings(resolution=crop, chunk_size=16), sampler)
    return time.perf_counter() - started


def sampler_seconds(frames: int, size: int, steps: int) -> float:
    model = generator_for(size)
    inputs = inputs_for(frames, size)
    inputs.identity = torch.nn.functional.normalize(torch.randn(1, DESCRIPTOR_DIM), dim=1)
    sampler = TGDMSampler(model, SamplerSettings(steps=steps, batch_size=8, chunk_size=16))
    started = time.perf_counter()
    with torch.inference_mode():
        sampler.sample(inputs)
    return time.perf_counter() - started


def memory_child(frames: int, steps: int) -> None:
    crop = 64
    face_model, source_faces, source_coeffs, target_faces, target_coeffs = swap_setup(frames, crop)
    sampler = TGDMSampler(generator_for(crop), SamplerSettings(steps=steps, batch_size=8, chunk_size=16))
    source = swap_source(source_faces, source_coeffs, crop)
    Path("/proc/self/clear_refs").write_text("5")  # resets the peak resident size (VmHWM)
    start = _status_kb("VmRSS") * 1024
    result = swap_faces(face_model, source, target_faces, target_coeffs, SwapSettings(resolution=crop, chunk_size=16), sampler)
    peak = _status_kb("VmHWM") * 1024
    handed_back = result.images.numel() * 4 + result.masks.numel() * 4
    print(json.dumps({"peak_mb": (peak - start - handed_back) / 2**20}))


def peak_memory_mb(frames: int, steps: int, threads: int) -> float:
    command = [sys.executable, "-m", "bench.face_swap", "--memory-child", str(frames), "--steps", str(steps),
               "--threads", str(threads)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_mb"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch (0: torch's default)")
    parser.add_argument("--memory-child", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args.memory_child, args.steps)
        return
    frames = 16
    results: dict[str, object] = {"threads": args.threads, "steps": args.steps, "frames": frames}
    with torch.inference_mode():
        # Warm-ups: first calls pay one-off costs (imports of diffusers' schedulers, allocator growth).
        swap_seconds(2, 256, None)
        swap_seconds(2, 64, 1)
        results["weightfree_fps"] = round(frames / swap_seconds(frames, 256, None), 3)
        tgdm = swap_seconds(frames, 64, args.steps)
        reference = sampler_seconds(frames, 64, args.steps)
    results["tgdm_fps"] = round(frames / tgdm, 3)
    results["sampler_fps"] = round(frames / reference, 3)
    results["swap_over_sampler"] = round(tgdm / reference, 3)
    for count in (16, 64):
        results[f"peak_mb_{count}"] = round(peak_memory_mb(count, 1, args.threads), 1)
    results["peak_growth"] = round(results["peak_mb_64"] / max(results["peak_mb_16"], 1e-6), 3)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
