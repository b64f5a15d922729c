"""Preprocess talking-face videos (VoxCeleb/HDTF/MEAD-like folders) into TGDM training shards.

    python -m scripts.preprocess_videos VIDEOS --out SHARDS --insightface MODELS/insightface/models/buffalo_l \
        [--face-model demo | PATH/BFM_model_front.mat] [--crop-size 256] ...

VIDEOS is searched recursively for video files (mp4, mov, avi, mkv, webm, ...) and for folders of
frame images (one folder = one video, frames in name order). Every video goes through the pack's face
pipeline (detect and track the main face, aligned crops, 3DMM fit with one identity per video,
texture, lighting and gaze, I_3d renders and surface maps) and is written to SHARDS/shards/*.safetensors,
listed in SHARDS/manifest.json. A video file's sound track is kept beside its frames as mono 16 kHz
16-bit audio aligned with them (see pipelines/training/video_shards.py, FrameAudio), so that
scripts.train_dubbing can train the dubbing model jointly with the audio-to-landmark model. Run the same command again to continue: videos already in the
manifest are skipped. A video without a usable face (or that cannot be decoded) is listed as skipped
with the reason; --retry-skipped tries those again.

The face model must be the one the generator is trained with (TGDM reads its coefficients). The last
line printed is a JSON summary.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from pipelines.face.analysis import FaceAnalyzer
from pipelines.face.fit import VIDEO_MODES
from pipelines.face.selection import ORDERS
from pipelines.morphable.demo_model import demo_face_model
from pipelines.morphable.model import load_face_model
from pipelines.training.video_shards import PreprocessSettings, preprocess_videos

DEMO_FACE_MODEL = "demo"


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("videos", type=Path, help="folder of videos and/or folders of frames (searched recursively)")
    parser.add_argument("--out", type=Path, required=True, help="shard folder (resumed when it holds a manifest)")
    parser.add_argument("--insightface", type=Path, required=True,
                        help="an insightface model pack folder, e.g. ComfyUI/models/insightface/models/buffalo_l")
    parser.add_argument("--face-model", default=DEMO_FACE_MODEL,
                        help="'demo' (the built-in demo face) or a BFM_model_front.mat file / BFM_Fitting folder")
    parser.add_argument("--crop-size", type=int, default=256, help="aligned crop and render size in px")
    parser.add_argument("--segment-frames", type=int, default=128, help="frames decoded and analysed at once")
    parser.add_argument("--shard-frames", type=int, default=1024, help="frames per shard file at most")
    parser.add_argument("--frame-step", type=int, default=1, help="keep every n-th frame")
    parser.add_argument("--max-frames", type=int, default=0, help="frames per video at most (0: all)")
    parser.add_argument("--frames-fps", type=float, default=25.0, help="frame rate of folders of frame images")
    parser.add_argument("--selection", choices=ORDERS, default="largest", help="which face of the first frame to follow")
    parser.add_argument("--fit-mode", choices=VIDEO_MODES, default="fast")
    parser.add_argument("--provider", default="auto", help="ONNX Runtime provider for insightface: auto, CPU, CUDA")
    parser.add_argument("--detection-size", type=int, default=640)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device for the fit and the renders")
    parser.add_argument("--retry-skipped", action="store_true", help="try the videos skipped by an earlier run again")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    return parser.parse_args()


def main() -> None:
    args = parse_arguments()
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = PreprocessSettings(
        crop_size=args.crop_size, segment_frames=args.segment_frames, shard_frames=args.shard_frames,
        frame_step=args.frame_step, max_frames=args.max_frames, frames_fps=args.frames_fps,
        selection=args.selection, fit_mode=args.fit_mode,
    )
    if args.face_model == DEMO_FACE_MODEL:
        model, label = demo_face_model(), "demo face (built-in)"
    else:
        model, label = load_face_model(args.face_model), Path(args.face_model).name
    analyzer = FaceAnalyzer.load(args.insightface, args.provider, args.detection_size)
    started = time.monotonic()
    manifest = preprocess_videos(args.videos, args.out, analyzer, model.to(args.device), label, settings,
                                 log=lambda line: print(line, flush=True), retry_skipped=args.retry_skipped)
    done = [entry for entry in manifest["videos"] if entry["status"] == "done"]
    print(json.dumps({
        "videos": len(done), "skipped": len(manifest["videos"]) - len(done),
        "frames": sum(entry["frames"] for entry in done), "seconds": round(time.monotonic() - started, 1),
        "manifest": str(args.out / "manifest.json"),
    }))


if __name__ == "__main__":
    main()
