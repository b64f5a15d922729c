"""Audio → landmarks → expression: seconds of audio per second of compute, and peak memory vs audio length.

    python -m bench.audio [--device cpu|cuda] [--seconds 60 600]

Each length runs in a fresh process: build the demo face and a default-size landmark model
(randomly initialised: speed does not depend on the weights), make speech-like audio, warm up on
5 s, then time mel + landmarks + expression over the whole clip while a sampler thread records the
process's resident memory. Peak memory is reported above the memory held before the run (models
and the input waveform, which the caller owns), so it shows what processing adds: flat in the
audio length when the pipeline streams. The realtime factor comes from the first (1 min) run; the
reference in the same run is a plain librosa mel spectrogram of the same audio (the first stage
alone), reported as ``mel_vs_librosa``.
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


def worker(seconds: float, device_name: str) -> dict:
    import numpy as np
    import torch

    from pipelines.audio.expression import landmarks_to_expression
    from pipelines.audio.io import SAMPLE_RATE, Audio
    from pipelines.audio.landmark_model import LandmarkCompletionTransformer, LandmarkModelConfig
    from pipelines.audio.landmarks import audio_to_landmarks
    from pipelines.audio.motion import head_motion
    from pipelines.morphable.coefficients import FaceCoefficients
    from pipelines.morphable.demo_model import demo_face_model
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

    def run(audio: Audio) -> tuple[float, float, float]:
        frames = int(audio.duration * fps)
        started = time.perf_counter()
        base = head_motion(face, portrait, frames, fps, "idle", seed=0)
        landmarks = audio_to_landmarks(model, face, audio, fps, base, portrait)
        if device.type == "cuda":
            torch.cuda.synchronize()
        middle = time.perf_counter()
        coefficients, _ = landmarks_to_expression(face, landmarks)
        if device.type == "cuda":
            torch.cuda.synchronize()
        assert coefficients.frames == frames
        return time.perf_counter() - started, middle - started, time.perf_counter() - middle

    with torch.inference_mode():
        run(Audio(samples[: 5 * SAMPLE_RATE].clone(), SAMPLE_RATE))
        audio = Audio(samples, SAMPLE_RATE)
        before = _resident_mb()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        with PeakSampler() as sampler:
            total, landmark_seconds, expression_seconds = run(audio)
    result = {
        "seconds": seconds,
        "elapsed": total,
        "landmark_seconds": landmark_seconds,
        "expression_seconds": expression_seconds,
        "peak_mb": sampler.peak - before,
    }
    if device.type == "cuda":
        result["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    if seconds <= 60:
        import librosa

        wave = samples.numpy()
        started = time.perf_counter()
        librosa.feature.melspectrogram(y=wave, sr=SAMPLE_RATE, n_fft=800, hop_length=200, n_mels=80, fmin=55,
                                       fmax=7600, power=1.0, pad_mode="reflect")
        librosa_seconds = time.perf_counter() - started
        from pipelines.audio.features import LogMel

        log_mel = LogMel()
        started = time.perf_counter()
        log_mel(samples)
        result["mel_vs_librosa"] = librosa_seconds / (time.perf_counter() - started)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seconds", type=float, nargs=2, default=(60.0, 600.0), metavar=("SHORT", "LONG"))
    parser.add_argument("--worker", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        print(json.dumps(worker(args.worker, args.device)))
        return
    runs = []
    for seconds in args.seconds:
        output = subprocess.run(
            [sys.executable, "-m", "bench.audio", "--worker", str(seconds), "--device", args.device],
            check=True, capture_output=True, text=True,
        ).stdout
        runs.append(json.loads(output.strip().splitlines()[-1]))
        print(f"{seconds:.0f} s of audio: {runs[-1]}")
    short, long = runs
    import torch

    print(json.dumps({
        "realtime_factor": round(short["seconds"] / short["elapsed"], 1),
        "realtime_factor_long": round(long["seconds"] / long["elapsed"], 1),
        "landmarks_realtime_factor": round(short["seconds"] / short["landmark_seconds"], 1),
        "expression_realtime_factor": round(short["seconds"] / short["expression_seconds"], 1),
        "mel_vs_librosa": round(short["mel_vs_librosa"], 2),
        "peak_mb_1min": round(short["peak_mb"], 1),
        "peak_mb_10min": round(long["peak_mb"], 1),
        "device": args.device,
        "cpu_threads": torch.get_num_threads(),
        "load_average": round(os.getloadavg()[0], 2),
    }))


if __name__ == "__main__":
    main()
