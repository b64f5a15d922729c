"""Driving-video analysis benchmark: landmarks → aligned fitting crop → 3DMM video fit → smoothed coefficients.

Run from the repository root: ``python -m bench.analysis`` (``--help`` for the options). Prints readable
lines, then one JSON object as the last line: ``fps`` (frames per second of the whole path on a
200-frame clip in Fit 3DMM's default ``fast`` video mode), ``fps_joint`` (the ``joint`` mode: the
reference in the same run), their landmark errors, ``peak_mb_200`` and ``peak_mb_800`` (peak resident
memory of the fast path above the loaded baseline for 200 and 800 frames, each in a fresh process) and
``device``.

The clip: the demo face at BFM size (about 38k vertices), one identity, talking (jaw and smile
oscillating) and turning (yaw ±30°, pitch ±10°) while it drifts across a 512-px frame; its 68 landmark
vertices projected by the pack's camera, plus 1 px of landmark noise, as a detector would give them.
Detection itself (insightface ONNX) is not timed: it needs real weights to mean anything.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import threading
import time

import torch

from pipelines.face.faces import faces_from_landmarks
from pipelines.face.fit import fit_faces
from pipelines.face.motion import smooth_coefficients
from pipelines.morphable.camera import PerspectiveCamera
from pipelines.morphable.coefficients import FaceCoefficients
from pipelines.morphable.demo_model import BFM_SIZE_RESOLUTION, demo_face_model
from pipelines.morphable.model import MorphableModel

FRAME_SIZE = 512
FPS = 25.0


def driving_landmarks(model, frames: int, seed: int = 0) -> torch.Tensor:
    """Landmarks ``[T, 68, 2]`` of a talking, turning demo face in a 512-px frame, with 1 px noise."""
    generator = torch.Generator().manual_seed(seed)
    time_s = torch.arange(frames) / FPS
    coeffs = FaceCoefficients.neutral(frames, model.dims)
    coeffs.identity[:] = torch.randn(model.dims.identity, generator=generator)
    coeffs.expression[:, model.expression_index("jaw_open")] = 0.5 * (1 + torch.sin(2 * math.pi * 3.0 * time_s))
    coeffs.expression[:, model.expression_index("smile")] = 0.5 * (1 + torch.sin(2 * math.pi * 0.3 * time_s))
    coeffs.rotation[:, 1] = math.radians(30) * torch.sin(2 * math.pi * 0.2 * time_s)
    coeffs.rotation[:, 0] = math.radians(10) * torch.sin(2 * math.pi * 0.13 * time_s)
    coeffs.translation[:, 0] = 0.6 * torch.sin(2 * math.pi * 0.05 * time_s)
    coeffs.translation[:, 2] = -4.0
    camera = PerspectiveCamera.deep3d(FRAME_SIZE)
    with torch.no_grad():
        points = camera.project(model.posed_vertices(coeffs)[:, model.landmark_ids])
    return points + torch.randn(points.shape, generator=generator)


def analyse(model: MorphableModel, landmarks: torch.Tensor, mode: str) -> tuple[FaceCoefficients, float]:
    """The pack's path from frame landmarks to smoothed coefficients (Analyze Faces' alignment, Fit 3DMM
    without appearance, Smooth Motion); returns the coefficients and the mean landmark error (px)."""
    frames = torch.zeros(1, 1, 1, 3).expand(landmarks.shape[0], -1, -1, -1)  # no pixels needed without appearance
    faces = faces_from_landmarks(frames, landmarks)
    with torch.no_grad():
        fit = fit_faces(model, faces, appearance=False, gaze=False, video_mode=mode)
    smoothed = smooth_coefficients(fit.coefficients, FPS, 0.5, ("rotation", "translation", "expression"))
    return smoothed, float(fit.landmark_error.mean())


def resident_mb() -> float:
    """Current resident memory of this process (Linux /proc)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakMemory:
    """Highest resident memory seen while the block runs, sampled every 2 ms, minus the memory before it."""

    def __enter__(self) -> PeakMemory:
        self.baseline = self.peak = resident_mb()
        self._running = True
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while self._running:
            self.peak = max(self.peak, resident_mb())
            time.sleep(0.002)

    def __exit__(self, *exc) -> None:
        self._running = False
        self._thread.join()
        self.peak = max(self.peak, resident_mb())

    @property
    def above_baseline(self) -> float:
        return self.peak - self.baseline


def child(frames: int) -> None:
    """Peak memory of the whole path over ``frames`` frames, above the baseline after setup."""
    model = demo_face_model(BFM_SIZE_RESOLUTION)
    landmarks = driving_landmarks(model, frames)
    analyse(model, landmarks[:16], "fast")  # warm up allocators and kernels
    with PeakMemory() as memory:
        coeffs, _ = analyse(model, landmarks, "fast")
    assert coeffs.frames == frames
    print(json.dumps({"peak_mb": memory.above_baseline}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--child-frames", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_frames:
        child(args.child_frames)
        return
    model = demo_face_model(BFM_SIZE_RESOLUTION)
    landmarks = driving_landmarks(model, args.frames)
    analyse(model, landmarks[:16], "fast")
    timings, errors = {}, {}
    for mode in ("fast", "joint"):
        runs = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            _, errors[mode] = analyse(model, landmarks, mode)
            runs.append(time.perf_counter() - start)
        timings[mode] = min(runs)
        print(f"{mode:6s} {args.frames} frames in {timings[mode]:.2f} s: {args.frames / timings[mode]:.1f} frames/s, "
              f"landmark error {errors[mode]:.2f} px")
    peaks = {}
    for frames in (200, 800):
        out = subprocess.run([sys.executable, "-m", "bench.analysis", "--child-frames", str(frames)],
                             check=True, capture_output=True, text=True).stdout
        peaks[frames] = json.loads(out.strip().splitlines()[-1])["peak_mb"]
        print(f"peak memory over {frames} frames: {peaks[frames]:.0f} MB above the loaded baseline")
    result = {
        "fps": args.frames / timings["fast"],
        "fps_joint": args.frames / timings["joint"],
        "fast_over_joint_speed": timings["joint"] / timings["fast"],
        "landmark_error_fast_px": errors["fast"],
        "landmark_error_joint_px": errors["joint"],
        "peak_mb_200": peaks[200],
        "peak_mb_800": peaks[800],
        "frames": args.frames,
        "vertices": model.num_vertices,
        "device": "cpu",
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
