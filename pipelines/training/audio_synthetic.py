"""Synthetic talking clips: audio whose envelope and spectrum drive a known mouth motion of the demo face.

Each clip is a random sequence of syllables. A syllable opens the jaw and shapes the lips
(``jaw_open``, ``lip_pucker``, ``smile`` weights of the demo face, rising and falling with a
raised-cosine envelope); the audio is a voiced source (harmonics of a wandering pitch) shaped by
two formant resonances that follow the same weights the way vowels do — the first formant rises
as the jaw opens, the second rises with spread lips and falls with rounded ones — with loudness
following the opening, plus background noise. The landmarks are the demo face's 68 landmark
vertices for those weights, a random speaker identity and gentle head motion, projected by the
Deep3DFaceRecon camera. A model can only predict the mouth from the audio, since nothing else in
its input knows about it: the learning check measures exactly that.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..audio.io import SAMPLE_RATE
from ..audio.landmarks import project_landmarks
from ..audio.motion import head_motion
from ..morphable.camera import PerspectiveCamera
from ..morphable.coefficients import FaceCoefficients
from ..morphable.model import MorphableModel

MOUTH_DIRECTIONS = ("jaw_open", "lip_pucker", "smile")


@dataclass
class TalkingClip:
    """One clip: ``audio`` ``[N]`` at 16 kHz and ``landmarks`` ``[F, 68, 2]`` (pixels) at ``fps``;
    synthetic clips also keep the ``coefficients`` that made the landmarks (the ground truth)."""

    audio: torch.Tensor
    landmarks: torch.Tensor
    fps: float
    coefficients: FaceCoefficients | None = None

    @property
    def frames(self) -> int:
        return self.landmarks.shape[0]


def syllable_track(rng: np.random.Generator, seconds: float, rate: float) -> np.ndarray:
    """``[round(seconds·rate), 3]`` mouth weights (jaw_open, lip_pucker, smile) sampled at ``rate``."""
    samples = int(round(seconds * rate))
    track = np.zeros((samples, 3))
    time = rng.uniform(0.0, 0.3)
    while time < seconds:
        length = rng.uniform(0.12, 0.32)
        vowel = np.array([rng.uniform(0.15, 1.0), rng.uniform(0.0, 1.0) ** 2, rng.uniform(0.0, 1.0) ** 2])
        if vowel[1] > 0.3:  # rounded vowels are not spread
            vowel[2] *= 0.2
        first, last = int(time * rate), min(int((time + length) * rate), samples)
        if last > first:
            phase = (np.arange(first, last) - first) / max(last - first, 1)
            envelope = np.sin(np.pi * phase) ** 1.5
            track[first:last] = np.maximum(track[first:last], envelope[:, None] * vowel)
        time += length + (rng.uniform(0.3, 0.8) if rng.random() < 0.15 else rng.uniform(0.0, 0.08))
    return track


def formant_audio(rng: np.random.Generator, weights: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Speech-like audio for per-sample mouth weights ``[N, 3]``: harmonics of a wandering pitch,
    weighted by two formant resonances that follow the weights, loudness following the opening."""
    count = weights.shape[0]
    time = np.arange(count) / sample_rate
    jaw, pucker, smile = weights.T
    pitch = rng.uniform(95, 220) * (1 + 0.06 * np.sin(2 * math.pi * rng.uniform(0.2, 0.7) * time + rng.uniform(0, 6.3)))
    phase = 2 * math.pi * np.cumsum(pitch) / sample_rate
    formant_1 = 280 + 600 * jaw
    formant_2 = 1300 + 900 * smile - 650 * pucker
    signal = np.zeros(count)
    for harmonic in range(1, 40):
        frequency = harmonic * pitch
        gain = (np.exp(-(((frequency - formant_1) / 120) ** 2)) + 0.6 * np.exp(-(((frequency - formant_2) / 180) ** 2))
                + 0.02)
        signal += np.where(frequency < 0.45 * sample_rate, gain * np.sin(harmonic * phase), 0.0) / harmonic**0.5
    loudness = np.clip(jaw * 1.2 + 0.25 * (pucker + smile), 0.0, 1.0) ** 0.8
    voiced = loudness * signal
    voiced *= 0.3 / max(np.abs(voiced).max(), 1e-6)
    noise = rng.normal(0, rng.uniform(0.002, 0.02), count)
    return (voiced + noise).astype(np.float32)


def synthetic_clip(
    model: MorphableModel,
    seconds: float,
    seed: int,
    fps: float = 25.0,
    camera: PerspectiveCamera | None = None,
) -> TalkingClip:
    """One clip of a random speaker saying random syllables; the same seed gives the same clip."""
    rng = np.random.default_rng(seed)
    camera = camera or PerspectiveCamera.deep3d()
    fine = syllable_track(rng, seconds, SAMPLE_RATE)
    audio = formant_audio(rng, fine)
    frames = max(1, int(seconds * fps))
    frame_samples = np.minimum((np.arange(frames) / fps * SAMPLE_RATE).astype(int), fine.shape[0] - 1)
    speaker = FaceCoefficients.neutral(1, model.dims)
    generator = torch.Generator().manual_seed(seed)
    speaker.identity[0] = 0.8 * torch.randn(model.dims.identity, generator=generator)
    speaker.rotation[0] = torch.tensor([rng.uniform(-0.1, 0.1), rng.uniform(-0.25, 0.25), rng.uniform(-0.05, 0.05)])
    coeffs = head_motion(model, speaker, frames, fps, "idle", seed=seed, strength=rng.uniform(0.5, 2.0))
    indices = [model.expression_index(name) for name in MOUTH_DIRECTIONS]
    coeffs.expression[:, indices] = torch.from_numpy(fine[frame_samples]).float()
    landmarks = project_landmarks(model, coeffs, camera)
    return TalkingClip(audio=torch.from_numpy(audio), landmarks=landmarks.float(), fps=fps, coefficients=coeffs)
