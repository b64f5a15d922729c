"""The whole TGDM chain on inputs the project makes itself: no downloads, a few minutes on 2 CPU cores.

    python -m scripts.demo --out DIR

A synthetic person (the procedural demo face with a random identity, a skin pattern and a
background) is photographed once: that photo is the source. A driving sequence of expressions,
blinks and head motion is rendered by our 3DMM renderer (I_3d), and the small TGDM checkpoint
trained by ``scripts/train_tgdm.py`` on synthetic faces paints the source's texture onto every
render, conditioned on the source photo warped onto each frame's geometry. Writes DIR/demo.mp4
(source | I_3d | Render Textured Target's no-weights reenactment | generated) and
DIR/demo_panel.png (rows of frames: source, I_3d, the no-weights reenactment, generated, and what a camera
would have seen). Real faces need a generator trained on real videos: see the README.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from pipelines.generator.checkpoint import load_tgdm
from pipelines.generator.inputs import GeneratorInputs, flat_coefficients
from pipelines.generator.sampler import SCHEDULERS, SamplerSettings, TGDMSampler
from pipelines.images import resize_images
from pipelines.morphable.camera import PerspectiveCamera
from pipelines.morphable.coefficients import FaceCoefficients
from pipelines.morphable.demo_model import demo_face_model
from pipelines.morphable.model import MorphableModel
from pipelines.render.renderer import FaceRenderer
from pipelines.render.texture_transfer import TextureTransfer
from pipelines.render.textured_target import render_textured_target
from pipelines.training.synthetic_faces import SyntheticFaceSettings, SyntheticIdentity, photograph, random_identity
from pipelines.training.tgdm_evaluation import psnr

PACK_ROOT = Path(__file__).resolve().parents[1]
DEMO_CHECKPOINT = PACK_ROOT / "assets" / "tgdm_demo_64px.safetensors"
PERSON_SEED = 20_251  # not among the training identities (those come from seed 0's stream)


def driving_sequence(model: MorphableModel, person: SyntheticIdentity, frames: int, fps: float) -> FaceCoefficients:
    """Talking-like motion: syllable-rate jaw, a smile that comes and goes, two blinks, head sway."""
    coeffs = FaceCoefficients.neutral(frames, model.dims)
    coeffs.identity[:] = person.identity
    coeffs.texture[:] = person.texture
    coeffs.lighting[:] = torch.tensor([0.0, 0.12, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]).repeat(3)
    t = torch.arange(frames) / fps

    def express(name: str, weights: torch.Tensor) -> None:
        coeffs.expression[:, model.expression_index(name)] = weights

    express("jaw_open", 0.45 * (0.5 - 0.5 * torch.cos(2 * math.pi * 3.1 * t)) * (0.6 + 0.4 * torch.sin(2 * math.pi * 0.7 * t)))
    express("smile", 0.7 * torch.sin(math.pi * t / t[-1].clamp_min(1e-6)) ** 2)
    blink = torch.zeros(frames)
    for at in (0.4, 1.5):
        blink = torch.maximum(blink, torch.exp(-((t - at) / 0.06) ** 2))
    express("blink_left", blink)
    express("blink_right", blink)
    coeffs.rotation[:, 1] = 0.25 * torch.sin(2 * math.pi * 0.5 * t)
    coeffs.rotation[:, 0] = 0.06 * torch.sin(2 * math.pi * 0.9 * t)
    return coeffs


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    return (images * 255).round().to(torch.uint8)


class VideoWriter:
    """H.264 (or MPEG-4 where x264 is missing) through PyAV, frame by frame."""

    def __init__(self, path: Path, fps: float, width: int, height: int) -> None:
        import av

        self.container = av.open(str(path), mode="w")
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        self.stream = self.container.add_stream(codec, rate=round(fps))
        self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, "yuv420p"
        self.frame_type = av.VideoFrame

    def write(self, frames: torch.Tensor) -> None:
        for frame in to_uint8(frames).numpy():
            for packet in self.stream.encode(self.frame_type.from_ndarray(frame, format="rgb24")):
                self.container.mux(packet)

    def close(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for demo.mp4 and demo_panel.png")
    parser.add_argument("--checkpoint", type=Path, default=DEMO_CHECKPOINT, help="a TGDM .safetensors checkpoint")
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--sampler", choices=SCHEDULERS, default="ddim")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--display-size", type=int, default=192, help="pixels per tile in the video and panel")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    return parser.parse_args()


def main() -> None:
    args = parse_arguments()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.checkpoint.is_file():
        raise SystemExit(
            f"generator checkpoint {args.checkpoint} not found: train one with "
            "`python -m scripts.train_tgdm --out runs/tgdm_demo` and pass --checkpoint runs/tgdm_demo/tgdm_ema.safetensors"
        )
    started = time.monotonic()
    generator = load_tgdm(args.checkpoint)
    size = generator.config.image_size
    face_model = demo_face_model()
    renderer = FaceRenderer(face_model, PerspectiveCamera.deep3d(size))
    settings = SyntheticFaceSettings(image_size=size)
    person = random_identity(face_model, settings, torch.Generator().manual_seed(PERSON_SEED))

    driving = driving_sequence(face_model, person, args.frames, args.fps)
    source_coeffs = driving[0]
    source_coeffs.rotation[:] = torch.tensor([[0.05, -0.2, 0.0]])
    source_photo, source_maps = photograph(renderer, source_coeffs, [person])
    camera_truth, target_maps = photograph(renderer, driving, [person] * args.frames)

    transfer = TextureTransfer(renderer)
    textured = render_textured_target(transfer, transfer.prepare_source(source_coeffs, source_photo), driving)
    warped = generator.config.warp_condition
    inputs = GeneratorInputs(
        source=source_photo, renders=target_maps.image, coefficients=flat_coefficients(driving),
        target_surfaces=target_maps.surface, source_surface=source_maps.surface,
        warped_sources=textured.warped if warped else None, warp_masks=textured.valid if warped else None,
    )
    sampler = TGDMSampler(generator, SamplerSettings(
        scheduler=args.sampler, steps=args.steps, seed=args.seed, batch_size=16, chunk_size=16, same_noise=True,
    ))
    args.out.mkdir(parents=True, exist_ok=True)
    tile = args.display_size
    writer = VideoWriter(args.out / "demo.mp4", args.fps, 4 * tile, tile)
    source_tile = resize_images(source_photo, tile)
    generated = torch.empty(args.frames, size, size, 3)
    with torch.inference_mode():
        for chunk, images in sampler.sample_chunks(inputs, on_chunk=lambda done, total: print(f"frames {done}/{total}", flush=True)):
            generated[chunk] = images
            count = images.shape[0]
            writer.write(torch.cat([source_tile.expand(count, -1, -1, -1), resize_images(target_maps.image[chunk], tile),
                                    resize_images(textured.image[chunk], tile), resize_images(images, tile)], dim=2))
    writer.close()

    picks = torch.linspace(0, args.frames - 1, min(4, args.frames)).round().long()
    columns = [resize_images(images[picks], tile) for images in (target_maps.image, textured.image, generated, camera_truth)]
    rows = [torch.cat([source_tile[0], *(column[i] for column in columns)], dim=1) for i in range(picks.numel())]
    from torchvision.io import write_png

    write_png(to_uint8(torch.cat(rows, dim=0)).permute(2, 0, 1).contiguous(), str(args.out / "demo_panel.png"))
    print(json.dumps({
        "video": str(args.out / "demo.mp4"), "panel": str(args.out / "demo_panel.png"), "frames": args.frames,
        "seconds": round(time.monotonic() - started, 1),
        "psnr_generated_vs_camera": round(psnr(generated, camera_truth).mean().item(), 2),
        "psnr_render_vs_camera": round(psnr(target_maps.image, camera_truth).mean().item(), 2),
        "psnr_textured_vs_camera": round(psnr(textured.image, camera_truth).mean().item(), 2),
        "psnr_source_vs_camera": round(psnr(source_photo.expand_as(camera_truth), camera_truth).mean().item(), 2),
    }))


if __name__ == "__main__":
    main()
