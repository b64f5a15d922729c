"""Textured reenactment on a real photograph: scikit-image's astronaut (public domain) → dlib's 68
points → 3DMM fit → Render Textured Target under new expressions and head poses → Paste Back.

Run from the repository root: ``python -m bench.textured_photo`` (needs dlib and its model files, as
``bench.real_faces``; without them it prints why and a JSON line with ``skipped``). Writes a panel PNG:
the photo's face, then each edit pasted back into the photo (top row: the 224-px crops; bottom row:
the photos). The reference in the same run is the warp onto the photo's own coefficients, which must
give the photo back: ``psnr_self_face`` is that reconstruction's PSNR over the face (a noisy or
misregistered warp scores low). Per edit it reports the share of the face the photo saw
(``visible``) and whether a mouth interior was drawn; ``ms_per_frame`` is the textured render at
224², one thread. The last line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.real_faces import dlib_analyzer_or_skip, save_png
from pipelines.face.alignment import FIT_CROP_SIZE, face_mask, paste_back
from pipelines.face.faces import analyze_frames
from pipelines.face.fit import fit_faces
from pipelines.morphable.camera import PerspectiveCamera
from pipelines.morphable.demo_model import demo_face_model
from pipelines.render.mouth import lips_apart
from pipelines.render.renderer import FaceRenderer
from pipelines.render.texture_transfer import TextureTransfer
from pipelines.render.textured_target import render_textured_target
from pipelines.training.tgdm_evaluation import psnr

DEFAULT_PANEL = Path("out") / "textured_astronaut.png"
# name → (expression weights by the demo face's semantic names, added head rotation pitch/yaw/roll)
EDITS = {
    "jaw open": ({"jaw_open": 0.8}, (0.0, 0.0, 0.0)),
    "smile": ({"smile": 1.0}, (0.0, 0.0, 0.0)),
    "pucker": ({"lip_pucker": 1.0}, (0.0, 0.0, 0.0)),
    "turned": ({"jaw_open": 0.3}, (0.0, 0.35, 0.0)),
    "nod": ({"brow_raise": 0.8}, (0.2, -0.15, 0.05)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--panel", type=Path, default=DEFAULT_PANEL, help="where to write the panel PNG")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    analyzer = dlib_analyzer_or_skip("hog")
    if analyzer is None:
        return
    from skimage.data import astronaut

    model = demo_face_model()
    photo = torch.from_numpy(astronaut()).float().div(255.0).unsqueeze(0)
    faces = analyze_frames(analyzer, photo, missing="error")
    fit = fit_faces(model, faces, appearance=True, gaze=True)
    crop = faces.fit_crops(slice(0, 1))
    source_coeffs = fit.coefficients[0:1]

    edits = [source_coeffs]
    for weights, rotation in EDITS.values():
        edited = source_coeffs.replace(expression=source_coeffs.expression.clone(),
                                       rotation=source_coeffs.rotation + torch.tensor([rotation]))
        for name, weight in weights.items():
            edited.expression[0, model.expression_index(name)] += weight
        edits.append(edited)
    targets = type(source_coeffs).concat(edits)

    transfer = TextureTransfer(FaceRenderer(model, PerspectiveCamera.deep3d(FIT_CROP_SIZE)))
    source = transfer.prepare_source(source_coeffs, crop)
    started = time.perf_counter()
    result = render_textured_target(transfer, source, targets)
    ms_per_frame = 1000 * (time.perf_counter() - started) / targets.frames

    face = result.mask[0:1] > 0.5
    self_psnr = float(psnr(result.image[0:1], crop, face)[0])
    frames = photo.expand(targets.frames, -1, -1, -1)
    transforms = faces.fit_transforms[0:1].expand(targets.frames, -1, -1)
    pasted, _ = paste_back(frames, result.image, transforms, face_mask(result.mask, 3, 6))
    names = ["own coefficients", *EDITS]
    opened = lips_apart(transfer.renderer.render(targets).landmarks)
    for index, name in enumerate(names):
        print(f"{name:>16}: the photo saw {float(result.visible_fraction[index]):.0%} of the face; "
              f"mouth interior drawn: {bool(opened[index])}")
    print(f"the warp onto the photo's own coefficients gives the face back at {self_psnr:.1f} dB PSNR; "
          f"{ms_per_frame:.0f} ms per 224² frame")

    width = FIT_CROP_SIZE * targets.frames
    top = torch.cat(list(result.image), dim=1)
    bottom = torch.cat(list(pasted), dim=1)
    bottom = F.interpolate(bottom.permute(2, 0, 1)[None], size=(round(bottom.shape[0] * width / bottom.shape[1]), width),
                           mode="bilinear", antialias=True)[0].permute(1, 2, 0)
    save_png(torch.cat([top, bottom], dim=0).clamp(0, 1), args.panel)
    print(f"panel: {args.panel}")
    print(json.dumps({
        "psnr_self_face": round(self_psnr, 2), "fit_rms_px": round(float(fit.landmark_error[0]), 3),
        "visible": {name: round(float(v), 3) for name, v in zip(names, result.visible_fraction, strict=True)},
        "mouth_drawn": {name: bool(o) for name, o in zip(names, opened, strict=True)},
        "ms_per_frame": round(ms_per_frame, 1), "threads": args.threads, "load": round(os.getloadavg()[0], 2),
        "panel": str(args.panel), "face_model": model.name,
    }))


if __name__ == "__main__":
    main()
