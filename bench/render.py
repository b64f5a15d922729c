"""Render benchmark: BFM-size mesh, rasterizer alone and the full coefficients → maps pass.

Run from the repository root: ``python -m bench.render``. Prints readable lines, then one JSON
object as the last line. Times are milliseconds per frame, the median of several repeats after
warm-up, at torch's default thread count. The reference in the same run is the unbatched pass:
``batching_speedup_256`` is full_ms_256_b1 / full_ms_256_b8, and ``warp_to_render_256`` the texture
warp (one source onto 8 targets) against the full render pass at 256². CPU figures are only meaningful on
an otherwise idle machine (torch's worker threads stall when the cores are shared), so the run
records the load average next to them.

``--reference REV`` (default :data:`REFERENCE_REVISION`, the renderer before issue 14's speed work;
``none`` skips it) also times the full pass and the rasterizer of that git revision on the same
mesh and coefficients (and the full pass on one person's frames, identity and albedo shared): its ``pipelines/`` is exported from git into a temporary package. The two
alternate, repeat after repeat, and each keeps its fastest run, so load from other jobs hits both
alike; ``speedup_*`` is reference ÷ current (wall clock), ``cpu_ms_*`` the process CPU time per
frame (all threads), which load inflates less than the wall clock.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from pipelines.morphable.camera import PerspectiveCamera
from pipelines.morphable.coefficients import BFM_DIMS, FaceCoefficients
from pipelines.morphable.model import MorphableModel
from pipelines.render.rasterizer import rasterize
from pipelines.render.renderer import FaceRenderer
from pipelines.render.texture_transfer import TextureTransfer
from pipelines.render.textured_target import render_textured_target

# A grid of 189 × 189 vertices: 35,721 vertices and 70,688 triangles, BFM_model_front.mat's size
# (35,709 and 70,789), as an open front-facing surface like BFM's face mask.
GRID_SIDE = 189
SEED = 0
# The last commit before issue 14's renderer speed work.
REFERENCE_REVISION = "b7d5362"
REFERENCE_REPEATS = 7


def synthetic_face_model() -> MorphableModel:
    """An ellipsoidal cap with a nose, face-sized (about 1.5 × 1.7 model units, as BFM), with
    smooth random bases."""
    generator = torch.Generator().manual_seed(SEED)
    t, s = torch.meshgrid(torch.linspace(-1, 1, GRID_SIDE), torch.linspace(-1, 1, GRID_SIDE), indexing="ij")
    longitude, latitude = s * 1.2, t * 1.0
    x = 0.8 * latitude.cos() * longitude.sin()
    y = 1.0 * latitude.sin()
    z = 0.6 * latitude.cos() * longitude.cos() + 0.25 * torch.exp(-(x**2 + (y + 0.1) ** 2) / 0.02)
    mean_shape = torch.stack([x, y, z], -1).view(-1, 3)
    mean_shape -= mean_shape.mean(0)
    index = torch.arange(GRID_SIDE * GRID_SIDE).view(GRID_SIDE, GRID_SIDE)
    a, b, c, d = index[:-1, :-1], index[:-1, 1:], index[1:, 1:], index[1:, :-1]
    # rows go up in y, columns right in x: (a, b, c) is counter-clockwise seen from the front
    triangles = torch.cat([torch.stack([a, b, c], -1).view(-1, 3), torch.stack([a, c, d], -1).view(-1, 3)])

    def smooth_basis(size: int, scale: float) -> torch.Tensor:
        frequencies = torch.randn(3, size * 3, generator=generator) * 2.0
        phases = torch.rand(size * 3, generator=generator) * 2 * math.pi
        return (scale * torch.sin(mean_shape @ frequencies + phases)).view(-1, size, 3).transpose(0, 1)

    count = mean_shape.shape[0]
    skin = torch.tensor([0.78, 0.57, 0.47])
    return MorphableModel(
        mean_shape=mean_shape,
        identity_basis=smooth_basis(BFM_DIMS.identity, 0.01),
        expression_basis=smooth_basis(BFM_DIMS.expression, 0.005),
        mean_albedo=skin + 0.05 * torch.sin(mean_shape * 7.0),
        albedo_basis=smooth_basis(BFM_DIMS.texture, 0.02),
        triangles=triangles,
        landmark_ids=torch.randperm(count, generator=generator)[:68],
        name="synthetic BFM-size face",
    )


def benchmark_model() -> tuple[MorphableModel, str]:
    """The demo face model at BFM size when the pack has one, else the synthetic face."""
    try:
        demo_model = importlib.import_module("pipelines.morphable.demo_model")
    except ModuleNotFoundError:
        return synthetic_face_model(), "synthetic"
    builder = getattr(demo_model, "demo_face_model", None)
    resolution = getattr(demo_model, "BFM_SIZE_RESOLUTION", None)
    if builder is not None and resolution is not None:
        return builder(resolution=resolution), "demo_model"
    return synthetic_face_model(), "synthetic"


def random_coefficients(frames: int, device: torch.device | str) -> FaceCoefficients:
    generator = torch.Generator().manual_seed(SEED + frames)
    coeffs = FaceCoefficients.from_flat(torch.randn(frames, BFM_DIMS.flat_size, generator=generator) * 0.5)
    return coeffs.replace(
        rotation=coeffs.rotation * 0.2,
        lighting=coeffs.lighting * 0.2,
        translation=coeffs.translation * 0.1,
    ).to(device)


def one_person(coeffs: FaceCoefficients) -> FaceCoefficients:
    """The frames of one person's video: every frame has the first frame's identity and albedo."""
    frames = coeffs.frames
    return coeffs.replace(
        identity=coeffs.identity[:1].expand(frames, -1).clone(), texture=coeffs.texture[:1].expand(frames, -1).clone()
    )


def median_ms_per_frame(run: Callable[[], object], frames: int, device: torch.device, repeats: int) -> float:
    def timed() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    for _ in range(2):
        timed()
    return statistics.median(timed() for _ in range(repeats)) * 1000.0 / frames


def measure(model: MorphableModel, device: torch.device, repeats: int) -> dict[str, float]:
    model = model.to(device)
    results: dict[str, float] = {}
    for size, frames, kinds in ((256, 1, ("raster", "full")), (256, 8, ("raster", "full", "warp", "textured")), (512, 8, ("full",))):
        renderer = FaceRenderer(model, PerspectiveCamera.deep3d(size))
        coeffs = random_coefficients(frames, device)
        screen = renderer.camera.to_screen(model.posed_vertices(coeffs))
        # One portrait warped onto every frame, as in a talking-portrait job: its view is prepared once.
        transfer = TextureTransfer(renderer)
        source = transfer.prepare_source(random_coefficients(1, device), torch.rand(1, size, size, 3, device=device))
        runs = {
            "raster": lambda screen=screen, size=size: rasterize(screen, model.triangles, size, size),
            "full": lambda renderer=renderer, coeffs=coeffs: renderer.render(coeffs),
            "warp": lambda transfer=transfer, source=source, coeffs=coeffs: transfer.warp(source, coeffs),
            "textured": lambda transfer=transfer, source=source, coeffs=coeffs: render_textured_target(transfer, source, coeffs),
        }
        for kind in kinds:
            results[f"{kind}_ms_{size}_b{frames}"] = median_ms_per_frame(runs[kind], frames, device, repeats)
    return results


def reference_pipelines(revision: str, directory: str) -> object:
    """``pipelines/`` of a git revision, importable as the package ``reference_pipelines``."""
    root = Path(__file__).resolve().parent.parent
    archive = subprocess.run(["git", "-C", str(root), "archive", revision, "pipelines"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", directory], input=archive.stdout, check=True)
    (Path(directory) / "pipelines").rename(Path(directory) / "reference_pipelines")
    sys.path.insert(0, directory)
    return importlib.import_module("reference_pipelines")


def reference_renderer(model: MorphableModel, size: int) -> tuple[Callable, Callable]:
    """The reference revision's (render, rasterize) on the same buffers as ``model``."""
    renderer_module = importlib.import_module("reference_pipelines.render.renderer")
    # The camera moved from render/ to morphable/ after b7d5362; either revision can be the reference.
    camera_path = next(name for name in ("reference_pipelines.morphable.camera", "reference_pipelines.render.camera")
                       if importlib.util.find_spec(name) is not None)
    camera_module = importlib.import_module(camera_path)
    model_module = importlib.import_module("reference_pipelines.morphable.model")
    coefficients_module = importlib.import_module("reference_pipelines.morphable.coefficients")
    rasterizer_module = importlib.import_module("reference_pipelines.render.rasterizer")

    def basis(flat: torch.Tensor) -> torch.Tensor:
        return flat.view(flat.shape[0], -1, 3)

    reference_model = model_module.MorphableModel(
        mean_shape=model.mean_shape, identity_basis=basis(model.identity_basis),
        expression_basis=basis(model.expression_basis), mean_albedo=model.mean_albedo,
        albedo_basis=basis(model.albedo_basis), triangles=model.triangles, landmark_ids=model.landmark_ids,
        surface_coords=model.surface_coords, expression_names=model.expression_names,
        eyeball_ids=(model.eyeball_left, model.eyeball_right), name=model.name,
    )  # fmt: skip
    renderer = renderer_module.FaceRenderer(reference_model, camera_module.PerspectiveCamera.deep3d(size))

    def render(coeffs: FaceCoefficients) -> object:
        flat = coefficients_module.FaceCoefficients.from_flat(coeffs.to_flat(), coeffs.gaze, coefficients_module.BFM_DIMS)
        return renderer.render(flat)

    def rasterize_reference(screen: torch.Tensor) -> object:
        return rasterizer_module.rasterize(screen, reference_model.triangles, size, size)

    return render, rasterize_reference


def compare_with_reference(model: MorphableModel, revision: str) -> dict[str, object]:
    """Reference and current full pass and rasterizer, alternating, fastest of each; the maps compared."""
    results: dict[str, object] = {"reference_revision": revision}
    with tempfile.TemporaryDirectory() as directory, torch.inference_mode():
        reference_pipelines(revision, directory)
        for size, frames in ((256, 8), (512, 8)):
            render_reference, rasterize_reference = reference_renderer(model, size)
            renderer = FaceRenderer(model, PerspectiveCamera.deep3d(size))
            coeffs = random_coefficients(frames, "cpu")
            screen = renderer.camera.to_screen(model.posed_vertices(coeffs))
            ours, theirs = renderer.render(coeffs), render_reference(coeffs)
            results[f"max_difference_{size}"] = {
                name: (getattr(ours, name).float() - getattr(theirs, name).float()).abs().max().item()
                for name in ("image", "mask", "depth", "normals", "albedo", "surface", "triangle_ids")
            }
            video = one_person(coeffs)
            cases = {
                "full": (partial(render_reference, coeffs), partial(renderer.render, coeffs)),
                "full_one_person": (partial(render_reference, video), partial(renderer.render, video)),
                "raster": (partial(rasterize_reference, screen), partial(rasterize, screen, model.triangles, size, size)),
            }
            for kind, (reference_run, current_run) in cases.items():
                best = {"reference": [math.inf, math.inf], "current": [math.inf, math.inf]}
                for _ in range(REFERENCE_REPEATS):
                    for name, run in (("reference", reference_run), ("current", current_run)):
                        wall, cpu = time.perf_counter(), time.process_time()
                        run()
                        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                        best[name] = [min(best[name][0], wall), min(best[name][1], cpu)]
                key = f"{kind}_{size}_b{frames}"
                for name in best:
                    results[f"{name}_ms_{key}"] = round(best[name][0] * 1000 / frames, 3)
                    results[f"{name}_cpu_ms_{key}"] = round(best[name][1] * 1000 / frames, 3)
                results[f"speedup_{key}"] = round(best["reference"][0] / best["current"][0], 3)
                results[f"cpu_speedup_{key}"] = round(best["reference"][1] / best["current"][1], 3)
        sys.path.remove(directory)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", default=REFERENCE_REVISION, help="git revision to compare with, or 'none'")
    args = parser.parse_args()
    model, source = benchmark_model()
    print(f"mesh: {source}, {model.num_vertices} vertices, {model.num_triangles} triangles")
    threads = torch.get_num_threads()
    with torch.inference_mode():
        coverage = FaceRenderer(model, PerspectiveCamera.deep3d(256)).render(random_coefficients(8, "cpu")).mask.mean()
        print(f"the face covers {coverage.item():.0%} of a 256² frame")
        cpu = measure(model, torch.device("cpu"), repeats=5)
        cuda = measure(model, torch.device("cuda"), repeats=20) if torch.cuda.is_available() else {}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    cores = os.cpu_count() or 1
    if load > cores:
        print(f"warning: load average {load:.1f} on {cores} cores; the CPU figures are inflated")
    print(f"cpu, {threads} threads (ms per frame):")
    for key, value in cpu.items():
        print(f"  {key:>16}: {value:8.3f}")
    speedup = cpu["full_ms_256_b1"] / cpu["full_ms_256_b8"]
    print(f"  batching 8 frames renders {speedup:.2f}x faster per frame than one at a time")
    print(f"  target ≤ 15 ms/frame at 256² batched: {'met' if cpu['full_ms_256_b8'] <= 15 else 'missed'}")
    warp_ratio = cpu["warp_ms_256_b8"] / cpu["full_ms_256_b8"]
    print(f"  the texture warp costs {warp_ratio:.2f}x a render pass at 256², batch 8 (target ≤ 1.5)")
    summary = {key: round(value, 3) for key, value in cpu.items()}
    summary.update(
        device="cpu",
        threads=threads,
        load_average=round(load, 2),
        coverage_256=round(coverage.item(), 3),
        mesh=source,
        vertices=model.num_vertices,
        triangles=model.num_triangles,
        batching_speedup_256=round(speedup, 3),
        warp_to_render_256=round(warp_ratio, 3),
    )
    if args.reference != "none":
        reference = compare_with_reference(model, args.reference)
        print(f"against {args.reference} (fastest of {REFERENCE_REPEATS} alternating runs, ms per frame):")
        for key, value in reference.items():
            if key.startswith(("speedup", "reference_ms", "ms_")) or key.startswith("current_ms"):
                print(f"  {key:>28}: {value}")
        summary.update(reference)
        summary["nproc"] = os.cpu_count()
        summary["load_average_after"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    if cuda:
        name = torch.cuda.get_device_name()
        print(f"cuda, {name} (ms per frame):")
        for key, value in cuda.items():
            print(f"  {key:>16}: {value:8.3f}")
        summary.update({f"cuda_{key}": round(value, 4) for key, value in cuda.items()}, cuda_device=name)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
