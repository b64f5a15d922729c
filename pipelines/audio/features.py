"""Log-mel spectrogram in torch (Wav2Lip / IP_LAP settings) and per-video-frame mel windows.

The mel filterbank is librosa's Slaney-normalised one on the Slaney mel scale, computed here in
float64 so that librosa is needed only by the test that checks the match. The STFT is centred with
reflect padding (librosa's ``center=True, pad_mode="reflect"``), magnitude (power 1), then
``20·log10(max(mel, 1e-5)) - 20`` dB mapped from [-100, 0] dB to [-4, 4], as in Wav2Lip's hparams.

Any mel frame range can be computed on its own (:meth:`LogMel.frames`) with exactly the values the
whole-signal spectrogram would have, so long audio is processed window by window in bounded memory.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import TalkingFaceError
from .io import SAMPLE_RATE


@dataclass(frozen=True)
class MelConfig:
    sample_rate: int = SAMPLE_RATE
    n_fft: int = 800
    hop_length: int = 200
    mel_bins: int = 80
    fmin: float = 55.0
    fmax: float = 7600.0
    # Video frames see this many mel frames around their time (0.2 s at hop 200 / 16 kHz).
    window_frames: int = 16
    min_level_db: float = -100.0
    ref_level_db: float = 20.0
    max_abs_value: float = 4.0

    @property
    def mel_rate(self) -> float:
        """Mel frames per second."""
        return self.sample_rate / self.hop_length

    @property
    def silence_value(self) -> float:
        """The normalised log-mel of silence: windows reaching past the audio are padded with it."""
        return -self.max_abs_value


def _hz_to_mel_slaney(hz: torch.Tensor) -> torch.Tensor:
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0
    linear = hz / f_sp
    return torch.where(hz >= min_log_hz, min_log_mel + torch.log(hz.clamp_min(1e-10) / min_log_hz) / logstep, linear)


def _mel_to_hz_slaney(mel: torch.Tensor) -> torch.Tensor:
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0
    return torch.where(mel >= min_log_mel, min_log_hz * torch.exp(logstep * (mel - min_log_mel)), f_sp * mel)


def slaney_mel_filterbank(config: MelConfig) -> torch.Tensor:
    """``[mel_bins, n_fft // 2 + 1]`` triangular filters with Slaney area normalisation (librosa's default)."""
    fft_freqs = torch.linspace(0, config.sample_rate / 2, config.n_fft // 2 + 1, dtype=torch.float64)
    mel_edges = torch.linspace(
        _hz_to_mel_slaney(torch.tensor(config.fmin, dtype=torch.float64)).item(),
        _hz_to_mel_slaney(torch.tensor(config.fmax, dtype=torch.float64)).item(),
        config.mel_bins + 2,
        dtype=torch.float64,
    )
    hz_edges = _mel_to_hz_slaney(mel_edges)
    widths = hz_edges.diff()
    ramps = hz_edges.unsqueeze(1) - fft_freqs.unsqueeze(0)
    lower = -ramps[:-2] / widths[:-1].unsqueeze(1)
    upper = ramps[2:] / widths[1:].unsqueeze(1)
    weights = torch.clamp(torch.minimum(lower, upper), min=0.0)
    return weights * (2.0 / (hz_edges[2:] - hz_edges[:-2])).unsqueeze(1)


class LogMel(nn.Module):
    """Batched log-mel on any device; computes in the waveform's floating dtype."""

    def __init__(self, config: MelConfig | None = None) -> None:
        super().__init__()
        self.config = config or MelConfig()
        self.register_buffer("filterbank", slaney_mel_filterbank(self.config), persistent=False)
        self.register_buffer("window", torch.hann_window(self.config.n_fft, periodic=True, dtype=torch.float64),
                             persistent=False)

    def num_frames(self, samples: int) -> int:
        """Mel frames of the whole centred spectrogram of ``samples`` samples."""
        return 1 + samples // self.config.hop_length

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """``[B, N]`` or ``[N]`` → normalised log-mel ``[B, mel_bins, frames]`` (or ``[mel_bins, frames]``)."""
        return self.frames(waveform, 0, self.num_frames(waveform.shape[-1]))

    def frames(self, waveform: torch.Tensor, first: int, last: int) -> torch.Tensor:
        """Normalised log-mel frames ``first .. last - 1`` of the whole signal's spectrogram, computed
        from only the samples they need. Frames outside the signal are silence."""
        return self.normalise(self.magnitudes(waveform, first, last))

    def normalise(self, mel: torch.Tensor) -> torch.Tensor:
        """Mel magnitudes → dB relative to ``ref_level_db``, mapped from [min_level_db, 0] to ±max_abs_value."""
        config = self.config
        db = 20.0 * torch.log10(mel.clamp_min(1e-5)) - config.ref_level_db
        scaled = (2 * config.max_abs_value) * (db - config.min_level_db) / -config.min_level_db - config.max_abs_value
        return scaled.clamp(-config.max_abs_value, config.max_abs_value)

    def magnitudes(self, waveform: torch.Tensor, first: int, last: int) -> torch.Tensor:
        """Mel magnitudes (librosa's ``melspectrogram(power=1)``) of frames ``first .. last - 1``, zero
        outside the signal; ``[B, mel_bins, last - first]`` (or without B for a 1D waveform)."""
        squeeze = waveform.ndim == 1
        if squeeze:
            waveform = waveform.unsqueeze(0)
        if waveform.ndim != 2 or not waveform.is_floating_point():
            raise ValueError(f"log-mel needs float waveforms [batch, samples], got {tuple(waveform.shape)}")
        config = self.config
        samples = waveform.shape[-1]
        if samples < config.n_fft // 2 + 1:
            raise TalkingFaceError(
                f"the audio is too short for a spectrogram: {samples} samples, at least {config.n_fft // 2 + 1} needed"
            )
        total = self.num_frames(samples)
        inside_first, inside_last = max(first, 0), min(last, total)
        dtype = waveform.dtype
        result = waveform.new_zeros((waveform.shape[0], config.mel_bins, max(last - first, 0)))
        if inside_last > inside_first:
            half = config.n_fft // 2
            index = torch.arange(
                inside_first * config.hop_length - half, (inside_last - 1) * config.hop_length + half + 1,
                device=waveform.device,
            )
            # reflect padding at the true ends of the signal, as a centred STFT of the whole signal has
            index = index.abs()
            index = torch.where(index >= samples, 2 * (samples - 1) - index, index)
            spectrum = torch.view_as_real(torch.stft(
                waveform[:, index], config.n_fft, config.hop_length, window=self.window.to(dtype), center=False,
                return_complex=True,
            ))
            spectrum = torch.hypot(spectrum[..., 0], spectrum[..., 1])  # |X|: faster on CPU than complex abs
            result[..., inside_first - first: inside_last - first] = torch.matmul(self.filterbank.to(dtype), spectrum)
        return result.squeeze(0) if squeeze else result


def frame_mel_starts(frame_indices: torch.Tensor, fps: float, config: MelConfig) -> torch.Tensor:
    """First mel frame of each video frame's window: the window is centred on the frame's time."""
    centre = torch.round(frame_indices.to(torch.float64) * (config.mel_rate / fps)).long()
    return centre - config.window_frames // 2


def mel_windows(mel: torch.Tensor, first_mel: int, frame_indices: torch.Tensor, fps: float, config: MelConfig) -> torch.Tensor:
    """Windows ``[B, F, mel_bins, window_frames]`` for video frames ``frame_indices`` at ``fps`` from a mel
    block ``[B, mel_bins, M]`` that starts at mel frame ``first_mel`` and covers every window."""
    if not fps > 0:
        raise TalkingFaceError(f"fps must be positive, got {fps}")
    starts = frame_mel_starts(frame_indices, fps, config) - first_mel
    if int(starts.min()) < 0 or int(starts.max()) + config.window_frames > mel.shape[-1]:
        raise TalkingFaceError("internal: the mel block does not cover the requested frames")
    # Every window start as a view [B, M', bins, W], then one gather of the wanted starts: the
    # result comes out contiguous in the layout the audio encoder reads.
    every_start = mel.unfold(-1, config.window_frames, 1).permute(0, 2, 1, 3)
    return every_start.index_select(1, starts.to(mel.device))


def mel_range_for_frames(first_frame: int, last_frame: int, fps: float, config: MelConfig) -> tuple[int, int]:
    """Mel frames ``[first, last)`` that the windows of video frames ``first_frame .. last_frame - 1`` read."""
    starts = frame_mel_starts(torch.tensor([first_frame, last_frame - 1]), fps, config)
    return int(starts[0]), int(starts[1]) + config.window_frames


@torch.no_grad()
def padded_log_mel(log_mel: LogMel, audio: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The log-mel ``[bins, M + 2·pad]`` of a whole clip's samples ``[N]`` with a mel window's worth of
    frames beyond each end, and its first mel frame (``-pad``): every video frame's window fits in
    it, so training datasets can slice windows from it."""
    pad = log_mel.config.window_frames
    return log_mel.frames(audio.float(), -pad, log_mel.num_frames(audio.shape[0]) + pad), -pad
