"""Audio in: decode files, accept ComfyUI's AUDIO dict, mix to mono, resample to 16 kHz, trim, and
fit the length to a number of video frames.

Everything downstream (log-mel, the landmark model) works on one mono float32 track at
:data:`SAMPLE_RATE`. Samples are decoded as float in -1..1 whatever the file's bit depth (8, 16,
24, 32 bit integer or float), so 8- and 24-bit files need no special path.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import TalkingFaceError

SAMPLE_RATE = 16000
LENGTH_POLICIES = ("pad", "loop", "trim")
# File types offered by the Load Audio node; soundfile (libsndfile) decodes them all, mp3 since 1.1.
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif")
# Quieter than this peak (about -100 dBFS) counts as silence: the mouth rests.
SILENCE_PEAK = 1e-5


@dataclass
class Audio:
    """One mono track: ``samples`` ``[N]`` float32 in -1..1 at ``sample_rate``."""

    samples: torch.Tensor
    sample_rate: int

    @property
    def duration(self) -> float:
        return self.samples.shape[0] / self.sample_rate

    def to_comfy(self) -> dict:
        """ComfyUI's AUDIO: ``{"waveform": [1, 1, N], "sample_rate": int}``."""
        return {"waveform": self.samples.reshape(1, 1, -1).contiguous(), "sample_rate": int(self.sample_rate)}


def read_audio_file(path: str | Path) -> dict:
    """Decode a file into ComfyUI's AUDIO dict (all channels, native rate, float32)."""
    import soundfile

    path = Path(path)
    if not path.is_file():
        raise TalkingFaceError(f"audio file '{path.name}' not found")
    try:
        data, sample_rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except soundfile.LibsndfileError as error:
        hint = ""
        if path.suffix.lower() == ".mp3" and "MP3" not in soundfile.available_formats():
            hint = f" (the installed libsndfile {soundfile.__libsndfile_version__} cannot read mp3: convert it to wav or flac, or update the soundfile package)"
        # The library's message names the file by its full server path: keep only its reason.
        raise TalkingFaceError(
            f"'{path.name}' could not be decoded as audio{hint} ({error.error_string.strip()}): "
            "use a wav, flac, ogg or mp3 file"
        ) from error
    waveform = torch.from_numpy(np.ascontiguousarray(data.T)).unsqueeze(0)  # [1, C, N]
    return {"waveform": waveform, "sample_rate": int(sample_rate)}


def trim_comfy(audio: Mapping, start_seconds: float = 0.0, duration_seconds: float = 0.0) -> dict:
    """An AUDIO dict cut to ``start_seconds`` + ``duration_seconds`` (0: to the end), channels kept."""
    if start_seconds < 0 or duration_seconds < 0:
        raise TalkingFaceError("start_seconds and duration_seconds must not be negative")
    waveform, sample_rate = audio["waveform"], int(audio["sample_rate"])
    first = int(round(start_seconds * sample_rate))
    last = waveform.shape[-1] if duration_seconds == 0 else first + int(round(duration_seconds * sample_rate))
    if first >= waveform.shape[-1]:
        raise TalkingFaceError(
            f"no audio left after trimming: the audio lasts {waveform.shape[-1] / sample_rate:.2f} s but starts at "
            f"{start_seconds:.2f} s; lower start_seconds"
        )
    if last <= first:
        raise TalkingFaceError(f"duration_seconds {duration_seconds} is shorter than one sample: raise it, or set 0 to keep the rest")
    return {"waveform": waveform[..., first:last].contiguous(), "sample_rate": sample_rate}


def track_from_comfy(audio: Mapping, batch_index: int = 0) -> tuple[torch.Tensor, int]:
    """One track ``[C, N]`` float32 (all channels) and its sample rate from an AUDIO dict of any node:
    ``waveform`` ``[B, C, N]`` (also ``[C, N]`` or ``[N]``). Rejects empty audio and NaN/inf samples."""
    # VideoHelperSuite passes a lazily decoded Mapping rather than a dict
    if not isinstance(audio, Mapping) or "waveform" not in audio or "sample_rate" not in audio:
        raise TalkingFaceError("audio must be an AUDIO value with 'waveform' and 'sample_rate' (connect Load Audio)")
    waveform = torch.as_tensor(audio["waveform"])
    sample_rate = int(audio["sample_rate"])
    if sample_rate <= 0:
        raise TalkingFaceError(f"the audio has an invalid sample rate {sample_rate}")
    if waveform.ndim == 1:
        waveform = waveform.reshape(1, 1, -1)
    elif waveform.ndim == 2:
        waveform = waveform.unsqueeze(0)
    if waveform.ndim != 3:
        raise TalkingFaceError(f"audio waveform must be [batch, channels, samples], got {tuple(waveform.shape)}")
    if waveform.shape[0] == 0 or waveform.shape[1] == 0 or waveform.shape[2] == 0:
        raise TalkingFaceError(
            "the audio is empty (no samples): check the file, or the start and duration that cut it"
        )
    if not 0 <= batch_index < waveform.shape[0]:
        raise TalkingFaceError(f"the audio batch has {waveform.shape[0]} tracks, there is no track {batch_index}")
    track = waveform[batch_index].to(torch.float32)
    if not torch.isfinite(track).all():
        bad = int((~torch.isfinite(track)).sum())
        raise TalkingFaceError(f"the audio contains {bad} NaN or infinite samples; re-export it from an audio editor")
    return track, sample_rate


def mono_from_comfy(audio: Mapping, batch_index: int = 0) -> Audio:
    """One mono track from an AUDIO dict of any node (see :func:`track_from_comfy`), channels averaged."""
    track, sample_rate = track_from_comfy(audio, batch_index)
    return Audio(track.mean(0), sample_rate)


def resample(audio: Audio, sample_rate: int = SAMPLE_RATE) -> Audio:
    """Band-limited resampling with soxr (high quality); a no-op at the target rate."""
    if audio.sample_rate == sample_rate:
        return audio
    import soxr

    samples = soxr.resample(audio.samples.cpu().numpy(), audio.sample_rate, sample_rate, quality="HQ")
    return Audio(torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32)), sample_rate)


def _fit_samples(samples: torch.Tensor, sample_rate: int, frames: int, fps: float, policy: str) -> tuple[torch.Tensor, int]:
    """:func:`fit_to_frames` on samples ``[..., N]`` (any channels in front)."""
    if policy not in LENGTH_POLICIES:
        raise TalkingFaceError(f"unknown length_policy '{policy}'; choose one of {LENGTH_POLICIES}")
    if not fps > 0:
        raise TalkingFaceError(f"fps must be positive, got {fps}")
    if frames < 0:
        raise TalkingFaceError(f"frames must not be negative, got {frames}")
    have = samples.shape[-1]
    covered = max(1, math.ceil(have / sample_rate * fps - 1e-6))
    if frames == 0:
        return samples, covered
    wanted = int(round(frames / fps * sample_rate))
    if have >= wanted:
        return samples[..., :wanted], frames
    if policy == "trim":
        return samples, min(frames, covered)
    if policy == "pad":
        return torch.nn.functional.pad(samples, (0, wanted - have)), frames
    repeats = math.ceil(wanted / have)
    return samples.repeat(*([1] * (samples.ndim - 1)), repeats)[..., :wanted], frames


def fit_to_frames(audio: Audio, frames: int, fps: float, policy: str) -> tuple[Audio, int]:
    """Match the audio to ``frames`` video frames at ``fps``; returns the audio and the frame count.

    Longer audio is cut under every policy. Shorter audio is padded with silence (``pad``), repeated
    (``loop``), or kept, and the frame count shrinks to the audio (``trim``). ``frames`` 0 follows
    the audio's own length.
    """
    samples, frames = _fit_samples(audio.samples, audio.sample_rate, frames, fps, policy)
    return Audio(samples, audio.sample_rate), frames


def fit_comfy_to_frames(audio: Mapping, frames: int, fps: float, policy: str, batch_index: int = 0) -> dict:
    """The AUDIO as the user gave it (every channel, its own sample rate) cut, padded or looped like
    :func:`fit_to_frames` with the same arguments: the sound track of the video. The 16 kHz mono
    copy is for the models only."""
    track, sample_rate = track_from_comfy(audio, batch_index)
    samples, _ = _fit_samples(track, sample_rate, frames, fps, policy)
    return {"waveform": samples.unsqueeze(0).contiguous(), "sample_rate": sample_rate}


def check_speech(audio: Audio, fps: float, what: str) -> None:
    """A model of the audio chain needs 16 kHz audio and a positive frame rate."""
    if audio.sample_rate != SAMPLE_RATE:
        raise TalkingFaceError(f"{what} needs {SAMPLE_RATE} Hz audio, got {audio.sample_rate} Hz")
    if not fps > 0:
        raise TalkingFaceError(f"fps must be positive, got {fps}")


def is_silent(audio: Audio) -> bool:
    """True when the track is all zero (or near): a pause or an idle take, no speech to follow."""
    return float(audio.samples.abs().max()) < SILENCE_PEAK


def prepare_speech(audio: Mapping, batch_index: int = 0) -> Audio:
    """AUDIO → mono 16 kHz track: what the motion models consume."""
    return resample(mono_from_comfy(audio, batch_index), SAMPLE_RATE)
