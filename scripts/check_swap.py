"""Learning check of face swapping on held-out synthetic people (issue: face swap with the TGDM generator).

    python -m scripts.check_swap --generator runs/tgdm_swap/tgdm_ema.safetensors --out runs/swap_check --threads 1

Swaps every held-out person into another's views and scores the swap and its baselines (the target
unchanged, the source photo warped onto the swapped geometry, the Replace Coefficients render) on the
face against the exact truth, on identity retrieval (textures fitted back against a gallery of every
person's own photographs) and on motion fitted back (a landmark detector trained on other synthetic
people, then pose and expression fitted to its landmarks), with the same generator's same-person
reenactments as the motion bound. Writes a panel PNG (source | target | warped source | swap | truth)
and prints one JSON object last.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipelines.generator.checkpoint import load_tgdm
from pipelines.generator.inputs import flat_coefficients
from pipelines.generator.sampler import SamplerSettings
from pipelines.generator.tgdm import TGDMDenoiser
from pipelines.morphable.demo_model import demo_face_model
from pipelines.morphable.model import MorphableModel
from pipelines.training.swap_evaluation import evaluate_swap, sample_views, swap_case, swap_pairs
from pipelines.training.synthetic_faces import FaceViews, SyntheticFaceSettings, render_synthetic_views
from pipelines.training.synthetic_landmarks import (
    load_landmark_detector,
    save_landmark_detector,
    train_landmark_detector,
)

HELD_OUT_SEED = 10_000
DETECTOR_FILE = "synthetic_landmark_detector.safetensors"


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generator", type=Path, required=True, help="the swap generator (TGDM .safetensors)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the detector, the panel and the figures")
    parser.add_argument("--people", type=int, default=8, help="held-out people (6 views each)")
    parser.add_argument("--sample-steps", type=int, default=20)
    parser.add_argument("--detector-people", type=int, default=200)
    parser.add_argument("--detector-steps", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args()


def main() -> None:
    args = parse_arguments()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    face_model = demo_face_model()
    model = load_tgdm(args.generator)
    size = model.config.pixel_size
    started = time.monotonic()
    detector_path = args.out / DETECTOR_FILE
    if detector_path.is_file():
        detector = load_landmark_detector(detector_path)
    else:
        detector = train_landmark_detector(face_model, args.detector_people, args.detector_steps, image_size=size)
        save_landmark_detector(detector, detector_path)
        print(f"landmark detector trained in {time.monotonic() - started:.0f}s", flush=True)
    views = render_synthetic_views(face_model, args.people, SyntheticFaceSettings(image_size=size), seed=HELD_OUT_SEED)
    settings = SamplerSettings(steps=args.sample_steps, batch_size=32, chunk_size=32, same_noise=False)
    with torch.inference_mode():
        results = evaluate_swap(model, views, face_model, settings, detector=detector)
        write_panel(model, views, face_model, settings, args.out / "swap_panel.png")
    results["pairs"] = len(views)
    results["seconds"] = round(time.monotonic() - started)
    print(json.dumps(results))


def write_panel(
    model: TGDMDenoiser, views: FaceViews, face_model: MorphableModel, settings: SamplerSettings, path: Path, rows: int = 6,
) -> None:
    """source | target | warped source | swap | truth for the first view of each of ``rows`` people."""
    sources, targets = swap_pairs(views)
    per_person = len(views) // (int(views.identities.max()) + 1)
    picked = torch.arange(0, len(views), per_person)[:rows]
    sources, targets = sources[picked], targets[picked]
    case = swap_case(views, face_model, sources, targets)
    swap = sample_views(model, settings, views, sources, flat_coefficients(case.coefficients), case.maps.image,
                        case.maps.surface, case.textured)
    columns = [views.photos[sources], views.photos[targets], case.textured.image, swap, case.truth]
    grid = torch.cat([torch.cat(list(column), dim=0) for column in columns], dim=1)
    Image.fromarray((grid.clamp(0, 1) * 255).round().byte().numpy().astype(np.uint8)).resize(
        (grid.shape[1] * 3, grid.shape[0] * 3), Image.NEAREST).save(path)


if __name__ == "__main__":
    main()
