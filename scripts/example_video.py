"""Write the example target video the face-swap template loads: the driving clip's frames with the
example speech as its sound track, as an H.264/AAC mp4 (run from the pack's root).

    python -m scripts.example_video [DIR]

It is made from the committed ``tests/assets`` inputs, so it needs nothing else; mp4 files are not
byte-reproducible across encoder versions, so its test checks what it decodes to, not its bytes.
"""
from __future__ import annotations

import argparse
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image, ImageSequence

from pipelines.audio.io import read_audio_file

ASSETS = Path(__file__).resolve().parent.parent / "tests" / "assets"
VIDEO_FILE = "talkingface_face_driving.mp4"
FRAMES_FILE = "talkingface_face_driving.png"
SPEECH_FILE = "talkingface_audio_speech.wav"
FPS = 25
# The clip's frames shown back and forth until the video lasts this long.
FRAMES = 24


def example_frames() -> list[np.ndarray]:
    with Image.open(ASSETS / FRAMES_FILE) as image:
        clip = [np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(image)]
    back_and_forth = clip + clip[-2:0:-1]
    return [back_and_forth[i % len(back_and_forth)] for i in range(FRAMES)]


def write_example_video(directory: Path) -> Path:
    import av

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / VIDEO_FILE
    frames = example_frames()
    audio = read_audio_file(ASSETS / SPEECH_FILE)
    rate = audio["sample_rate"]
    samples = audio["waveform"][0, 0, : round(len(frames) / FPS * rate)].numpy().astype(np.float32)
    with av.open(str(path), "w", format="mp4") as container:
        video = container.add_stream("libx264", rate=FPS)
        video.width, video.height = frames[0].shape[1], frames[0].shape[0]
        video.pix_fmt = "yuv420p"
        video.options = {"crf": "12", "threads": "1"}
        sound = container.add_stream("aac", rate=rate)
        sound.layout = "mono"
        for index, frame in enumerate(frames):
            picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
            picture.pts = index
            picture.time_base = Fraction(1, FPS)
            for packet in video.encode(picture):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        chunk = 1024
        for start in range(0, len(samples), chunk):
            block = av.AudioFrame.from_ndarray(samples[None, start : start + chunk], format="flt", layout="mono")
            block.sample_rate = rate
            block.pts = start
            for packet in sound.encode(block):
                container.mux(packet)
        for packet in sound.encode():
            container.mux(packet)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, nargs="?", default=ASSETS)
    print(write_example_video(parser.parse_args().directory))


if __name__ == "__main__":
    main()
