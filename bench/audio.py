"""Audio → landmarks → expression: seconds of audio per second of compute, and peak memory vs audio length.

    python -m bench.audio [--device cpu|cuda] [--seconds 60 600] [--threads N]

Each length runs in a fresh process: build the demo face and a default-size landmark model
(randomly initialised: speed does not depend on the weights), make speech-like audio, warm up on
5 s, then time mel + landmarks + expression over the whole clip while a sampler thread records the
process's resident memory. Peak memory is reported above the memory held before the run (models
and the input waveform, which the caller owns), so it shows what processing adds: flat in the
audio length when the pipeline streams. The realtime factor comes from the first (1 min) run,
best of three passes (the machine is shared; the load average is reported). The same run also
times each stage on its own — the log-mel of the whole clip, the landmark model, the expression
fit — and two references: a plain librosa mel spectrogram of the same audio (``mel_vs_librosa``)
and the Foundation's Levenberg–Marquardt fitter with the settings the audio path used before its
fast solver (``fit_vs_lm``, on the same 1 min of landmarks).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20


def _resident_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * PAGE_MB


class PeakSampler:
    def __init__(self) -> None:
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _resident_mb())
            time.sleep(0.002)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _resident_mb())


def worker(seconds: float, device_name: str, threads: int) -> dict:
    import numpy as np
    import torch

    if threads:
        torch.set_num_threads(threads)
    from pipelines.audio.expression import landmarks_to_expression, mouth_weights
    from pipelines.audio.io import SAMPLE_RATE, Audio
    from pipelines.audio.landmark_model import LandmarkCompletionTransformer, LandmarkModelConfig
    from pipelines.audio.landmarks import audio_to_landmarks
    from pipelines.audio.motion import head_motion
    from pipelines.morphable.coefficients import FaceCoefficients
    from pipelines.morphable.demo_model import demo_face_model
    from pipelines.morphable.fitting import FitConfig, LandmarkFitter
    from pipelines.training.audio_synthetic import formant_audio, syllable_track

    device = torch.device(device_name)
    face = demo_face_model().to(device)
    model = LandmarkCompletionTransformer(LandmarkModelConfig()).eval().to(device)
    rng = np.random.default_rng(0)
    # 10 s of speech-like audio, repeated: synthesis of 10 min would dominate the set-up
    piece = formant_audio(rng, syllable_track(rng, 10.0, SAMPLE_RATE))
    samples = torch.from_numpy(np.tile(piece, int(np.ceil(seconds / 10.0)))[: int(seconds * SAMPLE_RATE)])
    portrait = FaceCoefficients.neutral(1, face.dims)
    fps = 25.0

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def run(audio: Audio):
        frames = int(audio.duration * fps)
        started = time.perf_counter()
        base = head_motion(face, portrait, frames, fps, "idle", seed=0)
        landmarks = audio_to_landmarks(model, face, audio, fps, base, portrait)
        synchronize()
        middle = time.perf_counter()
        coefficients, _ = landmarks_to_expression(face, landmarks)
        synchronize()
        assert coefficients.frames == frames
        return time.perf_counter() - started, middle - started, time.perf_counter() - middle, landmarks

    with torch.inference_mode():
        run(Audio(samples[: 5 * SAMPLE_RATE].clone(), SAMPLE_RATE))
        audio = Audio(samples, SAMPLE_RATE)
        before = _resident_mb()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        with PeakSampler() as sampler:
            total, landmark_seconds, expression_seconds, landmarks = run(audio)
        result = {
            "seconds": seconds,
            "elapsed": total,
            "landmark_seconds": landmark_seconds,
            "expression_seconds": expression_seconds,
            "peak_mb": sampler.peak - before,
            "threads": torch.get_num_threads(),
        }
        if device.type == "cuda":
            result["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        if seconds <= 60:
            result.update(stage_timings(run, audio, landmarks, face, samples, device, synchronize))
            lm_config = FitConfig(contour=False, pose_iterations=0, rounds=1, iterations=2, expression_prior=1.0)
            fitter = LandmarkFitter(face, landmarks.camera, lm_config)
            started = time.perf_counter()
            fitter.fit(landmarks.points.to(device), mouth_weights(device), optimize={"expression"},
                       init=landmarks.base.to(device))
            synchronize()
            result["lm_fit_seconds"] = time.perf_counter() - started
    if seconds <= 60:
        import librosa

        def librosa_mel(wave: np.ndarray) -> None:
            librosa.feature.melspectrogram(y=wave, sr=SAMPLE_RATE, n_fft=800, hop_length=200, n_mels=80, fmin=55,
                                           fmax=7600, power=1.0, pad_mode="reflect")

        wave = samples.numpy()
        librosa_mel(wave[: 5 * SAMPLE_RATE])  # its first call compiles (numba), which is not what we compare
        started = time.perf_counter()
        librosa_mel(wave)
        result["librosa_mel_seconds"] = time.perf_counter() - started
    return result


def stage_timings(run, audio, landmarks, face, samples, device, synchronize) -> dict:
    """Best of three for the whole chain and for each stage alone."""
    from pipelines.audio.expression import landmarks_to_expression
    from pipelines.audio.features import LogMel

    log_mel = LogMel().to(device)
    samples = samples.to(device)

    def best(action) -> float:
        times = []
        for _ in range(3):
            started = time.perf_counter()
            action()
            synchronize()
            times.append(time.perf_counter() - started)
        return min(times)

    chain = [run(audio)[:3] for _ in range(3)]
    return {
        "best_elapsed": min(c[0] for c in chain),
        "best_landmark_seconds": min(c[1] for c in chain),
        "best_expression_seconds": min(c[2] for c in chain),
        "mel_seconds": best(lambda: log_mel(samples)),
        "fit_seconds": best(lambda: landmarks_to_expression(face, landmarks)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seconds", type=float, nargs=2, default=(60.0, 600.0), metavar=("SHORT", "LONG"))
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--worker", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        print(json.dumps(worker(args.worker, args.device, args.threads)))
        return
    runs = []
    load_before = os.getloadavg()[0]
    for seconds in args.seconds:
        output = subprocess.run(
            [sys.executable, "-m", "bench.audio", "--worker", str(seconds), "--device", args.device,
             "--threads", str(args.threads)],
            check=True, capture_output=True, text=True,
        ).stdout
        runs.append(json.loads(output.strip().splitlines()[-1]))
        print(f"{seconds:.0f} s of audio: {runs[-1]}")
    short, long = runs
    model_seconds = short["best_landmark_seconds"] - short["mel_seconds"]
    print(json.dumps({
        "realtime_factor": round(short["seconds"] / short["best_elapsed"], 1),
        "realtime_factor_first_pass": round(short["seconds"] / short["elapsed"], 1),
        "realtime_factor_long": round(long["seconds"] / long["elapsed"], 1),
        "landmarks_realtime_factor": round(short["seconds"] / short["best_landmark_seconds"], 1),
        "expression_realtime_factor": round(short["seconds"] / short["best_expression_seconds"], 1),
        "stage_seconds_per_minute": {
            "mel": round(short["mel_seconds"] * 60 / short["seconds"], 4),
            "landmark_model": round(model_seconds * 60 / short["seconds"], 4),
            "expression_fit": round(short["fit_seconds"] * 60 / short["seconds"], 4),
        },
        "fit_vs_lm": round(short["lm_fit_seconds"] / short["fit_seconds"], 1),
        "mel_vs_librosa": round(short["librosa_mel_seconds"] / short["mel_seconds"], 2),
        "peak_mb_1min": round(short["peak_mb"], 1),
        "peak_mb_10min": round(long["peak_mb"], 1),
        "device": args.device,
        "cpu_threads": short["threads"],
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }))


if __name__ == "__main__":
    main()
