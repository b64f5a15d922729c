"""Log-mel against librosa, chunked frames equal the whole spectrogram, per-frame windows at any fps."""
import librosa
import numpy as np
import pytest
import torch
from packloader import pack_import

features = pack_import("pipelines.audio.features")
CONFIG = features.MelConfig()


def speech_like(samples=12000, seed=0):
    rng = np.random.default_rng(seed)
    time = np.arange(samples) / 16000
    return 0.3 * np.sin(2 * np.pi * 180 * time) * (1 + np.sin(2 * np.pi * 3 * time)) + 0.05 * rng.standard_normal(samples)


def librosa_mel(y):
    return librosa.feature.melspectrogram(
        y=y, sr=16000, n_fft=800, hop_length=200, n_mels=80, fmin=55, fmax=7600, power=1.0, center=True,
        pad_mode="reflect", htk=False, norm="slaney", dtype=y.dtype,
    )


def test_filterbank_is_librosas():
    expected = librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600, dtype=np.float64)
    ours = features.slaney_mel_filterbank(CONFIG).numpy()
    assert np.abs(ours - expected).max() <= 1e-5 * np.abs(expected).max()


def test_mel_magnitudes_match_librosa_within_1e5_relative():
    y = speech_like()
    expected = librosa_mel(y)
    ours = features.LogMel().magnitudes(torch.from_numpy(y), 0, expected.shape[1]).numpy()
    assert ours.shape == expected.shape == (80, 61)
    relative = np.abs(ours - expected) / np.maximum(np.abs(expected), 1e-12)
    assert relative.max() < 1e-5
    # float32 (what the pipeline runs in): within 1e-5 of each frame's peak
    ours32 = features.LogMel().magnitudes(torch.from_numpy(y.astype(np.float32)), 0, 61).numpy()
    assert (np.abs(ours32 - expected) / expected.max(0, keepdims=True)).max() < 1e-5


def test_log_mel_is_wav2lip_normalisation_of_the_magnitudes():
    y = speech_like()
    db = 20 * np.log10(np.maximum(librosa_mel(y), 1e-5)) - 20
    expected = np.clip(8 * (db + 100) / 100 - 4, -4, 4)
    ours = features.LogMel()(torch.from_numpy(y)).numpy()
    assert np.abs(ours - expected).max() < 1e-6


def test_frame_ranges_equal_the_whole_spectrogram_and_silence_outside():
    log_mel = features.LogMel()
    y = torch.from_numpy(speech_like(8003)).float()
    whole = log_mel(y)
    total = whole.shape[-1]
    for first, last in ((-5, 7), (10, 20), (total - 4, total + 6)):
        part = log_mel.frames(y, first, last)
        inside = slice(max(first, 0), min(last, total))
        offset = inside.start - first
        assert torch.allclose(part[:, offset: offset + inside.stop - inside.start], whole[:, inside], atol=1e-5)
        outside = torch.cat([part[:, :offset], part[:, offset + inside.stop - inside.start:]], 1)
        assert (outside == CONFIG.silence_value).all()


def test_batched_waveforms_give_the_rows_of_single_ones():
    log_mel = features.LogMel()
    batch = torch.stack([torch.from_numpy(speech_like(seed=s)).float() for s in range(3)])
    together = log_mel(batch)
    assert together.shape == (3, 80, 61)
    assert torch.allclose(together[1], log_mel(batch[1]), atol=1e-5)


@pytest.mark.parametrize("fps", [25.0, 30.0, 24.0, 59.94])
def test_windows_are_centred_on_each_frame_at_any_fps(fps):
    mel = torch.arange(200.0).view(1, 1, 200).expand(1, 80, 200)  # value = mel frame index
    frames = torch.arange(0, 40)
    first = -8
    windows = features.mel_windows(mel, first, frames[8:], fps, CONFIG)  # block starts at mel frame first
    assert windows.shape == (1, 32, 80, 16)
    centre_time = windows[0, :, 0, 8] + first  # the 9th of 16 columns sits at the frame's time
    expected = torch.round(frames[8:].double() * 80 / fps)
    assert torch.equal(centre_time.double(), expected)


def test_too_short_audio_is_refused():
    with pytest.raises(pack_import("pipelines.errors").TalkingFaceError, match="too short"):
        features.LogMel()(torch.zeros(100))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_matches_cpu():
    y = torch.from_numpy(speech_like()).float()
    assert torch.allclose(features.LogMel().cuda()(y.cuda()).cpu(), features.LogMel()(y), atol=1e-4)
