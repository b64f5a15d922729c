"""Audio in: decoding every format and bit depth, mono mix-down, resampling, trimming, length policies, bad input."""
import math
from collections.abc import Mapping

import numpy as np
import pytest
import soundfile
import torch
from packloader import pack_import

audio_io = pack_import("pipelines.audio.io")
errors = pack_import("pipelines.errors")


def tone(seconds=0.5, rate=16000, frequency=440.0, channels=1):
    time = np.arange(int(seconds * rate)) / rate
    wave = 0.5 * np.sin(2 * math.pi * frequency * time)
    return np.stack([wave] * channels, 1).astype(np.float32)


@pytest.mark.parametrize(
    "suffix, subtype, rate, channels",
    [
        (".wav", "PCM_16", 16000, 1),
        (".wav", "PCM_U8", 16000, 1),
        (".wav", "PCM_24", 44100, 2),
        (".wav", "FLOAT", 96000, 6),
        (".flac", "PCM_16", 48000, 2),
        (".ogg", "VORBIS", 22050, 1),
        (".mp3", "MPEG_LAYER_III", 44100, 1),
    ],
)
def test_files_decode_to_mono_16k(tmp_path, suffix, subtype, rate, channels):
    path = tmp_path / f"speech{suffix}"
    soundfile.write(str(path), tone(0.5, rate, channels=channels), rate, subtype=subtype)
    audio = audio_io.read_audio_file(path)
    assert audio["waveform"].shape[:2] == (1, channels) and audio["sample_rate"] == rate
    speech = audio_io.prepare_speech(audio)
    assert speech.sample_rate == 16000 and speech.samples.ndim == 1
    assert abs(speech.duration - 0.5) < 0.06  # mp3 adds encoder delay
    # the 440 Hz tone survives decoding and resampling at its amplitude (8-bit and lossy codecs: coarser)
    middle = speech.samples[2000:6000].numpy()
    assert abs(np.abs(middle).max() - 0.5) < 0.05
    spectrum = np.abs(np.fft.rfft(middle))
    assert abs(np.argmax(spectrum) * 16000 / middle.size - 440) < 8


def test_channels_are_averaged_and_batch_layouts_accepted():
    left, right = torch.ones(1000) * 0.2, torch.ones(1000) * 0.6
    audio = {"waveform": torch.stack([left, right]).unsqueeze(0), "sample_rate": 16000}
    assert torch.allclose(audio_io.mono_from_comfy(audio).samples, torch.full((1000,), 0.4))
    assert audio_io.mono_from_comfy({"waveform": torch.stack([left, right]), "sample_rate": 16000}).samples.shape == (1000,)
    assert audio_io.mono_from_comfy({"waveform": left, "sample_rate": 8000}).sample_rate == 8000
    class LazyAudio(Mapping):  # VideoHelperSuite's AUDIO decodes on first access
        def __init__(self):
            self.values = {"waveform": audio["waveform"], "sample_rate": 16000}

        def __getitem__(self, key):
            return self.values[key]

        def __iter__(self):
            return iter(self.values)

        def __len__(self):
            return 2

    assert torch.allclose(audio_io.prepare_speech(LazyAudio()).samples, torch.full((1000,), 0.4))
    with pytest.raises(errors.TalkingFaceError, match="no track 3"):
        audio_io.mono_from_comfy(audio, batch_index=3)


@pytest.mark.parametrize(
    "waveform, message",
    [
        (torch.zeros(1, 1, 0), "empty"),
        (torch.zeros(1, 0, 100), "empty"),
        (torch.tensor([[[0.1, float("nan"), 0.2] * 400]]), "NaN or infinite"),
        (torch.tensor([[[0.1, float("inf"), 0.2] * 400]]), "NaN or infinite"),
    ],
)
def test_bad_audio_is_refused_with_a_clear_message(waveform, message):
    with pytest.raises(errors.TalkingFaceError, match=message):
        audio_io.prepare_speech({"waveform": waveform, "sample_rate": 16000})


def test_not_an_audio_value_or_file(tmp_path):
    with pytest.raises(errors.TalkingFaceError, match="AUDIO value"):
        audio_io.mono_from_comfy(torch.zeros(10))
    fake = tmp_path / "speech.wav"
    fake.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    with pytest.raises(errors.TalkingFaceError, match="could not be decoded as audio"):
        audio_io.read_audio_file(fake)
    with pytest.raises(errors.TalkingFaceError, match="not found"):
        audio_io.read_audio_file(tmp_path / "missing.wav")


def test_trimming_keeps_channels_and_refuses_nothing_left():
    audio = {"waveform": torch.arange(32000.0).reshape(1, 2, 16000), "sample_rate": 16000}
    part = audio_io.trim_comfy(audio, 0.25, 0.5)
    assert part["waveform"].shape == (1, 2, 8000) and part["waveform"][0, 0, 0] == 4000
    assert audio_io.trim_comfy(audio, 0.5)["waveform"].shape[-1] == 8000
    with pytest.raises(errors.TalkingFaceError, match="no audio left after trimming"):
        audio_io.trim_comfy(audio, 1.5)
    with pytest.raises(errors.TalkingFaceError, match="shorter than one sample"):
        audio_io.trim_comfy(audio, 0.0, 1e-6)


def test_length_policies():
    speech = audio_io.Audio(torch.arange(1, 16001, dtype=torch.float32), 16000)  # 1 s
    cut, frames = audio_io.fit_to_frames(speech, 10, 25.0, "pad")
    assert frames == 10 and cut.samples.shape[0] == 6400
    padded, frames = audio_io.fit_to_frames(speech, 50, 25.0, "pad")
    assert frames == 50 and padded.samples.shape[0] == 32000 and padded.samples[16000:].abs().max() == 0
    looped, _ = audio_io.fit_to_frames(speech, 50, 25.0, "loop")
    assert torch.equal(looped.samples[16000:], speech.samples)
    kept, frames = audio_io.fit_to_frames(speech, 50, 25.0, "trim")
    assert frames == 25 and kept.samples.shape[0] == 16000
    assert audio_io.fit_to_frames(speech, 0, 30.0, "pad")[1] == 30
    with pytest.raises(errors.TalkingFaceError, match="length_policy"):
        audio_io.fit_to_frames(speech, 5, 25.0, "stretch")


@pytest.mark.parametrize("policy, frames, seconds", [("pad", 50, 2.0), ("loop", 50, 2.0), ("trim", 50, 1.0), ("pad", 10, 0.4), ("pad", 0, 1.0)])
def test_the_sound_keeps_its_rate_and_channels_and_follows_the_frames_like_the_speech(policy, frames, seconds):
    stereo = torch.stack([torch.linspace(-0.5, 0.5, 48000), torch.linspace(0.5, -0.5, 48000)]).unsqueeze(0)  # 1 s
    audio = {"waveform": stereo, "sample_rate": 48000}
    sound = audio_io.fit_comfy_to_frames(audio, frames, 25.0, policy)
    assert sound["sample_rate"] == 48000 and sound["waveform"].shape == (1, 2, round(seconds * 48000))
    speech, speech_frames = audio_io.fit_to_frames(audio_io.prepare_speech(audio), frames, 25.0, policy)
    assert speech.duration == pytest.approx(seconds, abs=1e-3), "the models' 16 kHz copy covers the same time"
    if policy == "loop":
        assert torch.equal(sound["waveform"][..., 48000:], stereo)
    assert torch.equal(sound["waveform"][..., :min(48000, sound["waveform"].shape[-1])], stereo[..., :sound["waveform"].shape[-1]])


def test_silence_is_recognised_not_refused():
    silence = audio_io.prepare_speech({"waveform": torch.zeros(1, 2, 16000), "sample_rate": 16000})
    assert audio_io.is_silent(silence)
    assert not audio_io.is_silent(audio_io.Audio(torch.full((100,), 0.01), 16000))
