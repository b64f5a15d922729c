"""Write the inputs the example workflows load into ``tests/assets/`` (run from the pack's root).

    python -m scripts.example_assets [DIR]

The files are committed; a test checks they are what this script writes, so they never drift.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from pipelines.morphable.coefficients import FaceCoefficients
from pipelines.morphable.demo_model import demo_face_model

DEMO_COEFFICIENTS_FILE = "talkingface_demo_coefficients.safetensors"


def demo_coefficient_sequence() -> FaceCoefficients:
    """Eight frames of the demo face: neutral, then expressions, head poses, gaze, identities and light."""
    model = demo_face_model()
    generator = torch.Generator().manual_seed(7)
    coeffs = FaceCoefficients.neutral(8, model.dims)

    def express(frame: int, **weights: float) -> None:
        for name, weight in weights.items():
            coeffs.expression[frame, model.expression_index(name)] = weight

    express(1, jaw_open=0.8)
    express(2, smile=1.0)
    coeffs.rotation[2] = torch.tensor([0.0, 0.35, 0.0])
    express(3, blink_left=1.0, blink_right=1.0, brow_raise=0.8)
    coeffs.rotation[3] = torch.tensor([0.2, -0.25, 0.1])
    express(4, lip_pucker=1.0)
    coeffs.gaze[4] = torch.tensor([0.15, 0.3])
    for frame in (5, 6, 7):
        coeffs.identity[frame] = torch.randn(model.dims.identity, generator=generator)
        coeffs.texture[frame] = torch.randn(model.dims.texture, generator=generator)
        # white light from a random direction: the same 9 SH coefficients for r, g and b
        coeffs.lighting[frame] = (0.25 * torch.randn(1, 9, generator=generator)).expand(3, 9).reshape(27)
    express(6, smile=0.6, jaw_open=0.3)
    coeffs.rotation[7] = torch.tensor([-0.15, 0.5, -0.05])
    coeffs.translation[7] = torch.tensor([0.1, -0.05, 0.0])
    return coeffs


def write_example_assets(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / DEMO_COEFFICIENTS_FILE
    demo_coefficient_sequence().save(path)
    return [path]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, nargs="?", default=Path("tests/assets"))
    for path in write_example_assets(parser.parse_args().directory):
        print(path)


if __name__ == "__main__":
    main()
