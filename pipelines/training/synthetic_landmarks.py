"""Motion fitted back from generated synthetic faces: a small 68-landmark detector trained on synthetic
photographs of people nobody else sees, and the landmark fitter on its output.

Real detectors (dlib, insightface) are trained on real faces and do not read 64 px synthetic ones, so
an evaluation that asks "does the output have the target's expression and pose?" needs a detector of
the synthetic world. It never sees a generator's output or the people a generator trains or is tested
on (its own seed), so it is an outside judge of the geometry in an image, as a face-recognition
network is of identity."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoints import (
    CheckpointConfig,
    load_weights_strictly,
    read_checkpoint_metadata,
    read_checkpoint_weights,
    save_checkpoint,
)
from ..errors import ModelFileError
from ..generator.inputs import generator_rows_to_coefficients
from ..morphable.camera import PerspectiveCamera
from ..morphable.coefficients import FaceCoefficients
from ..morphable.fitting import LandmarkFitter
from ..morphable.model import MorphableModel
from ..video import frame_chunks
from .synthetic_faces import SyntheticFaceSettings, render_synthetic_views

DETECTOR_SEED = 30_000  # people the generators never train or test on
NUM_LANDMARKS = 68
DETECTOR_FORMAT = "talkingface.synthetic_landmark_detector"


@dataclass(frozen=True)
class LandmarkDetectorConfig(CheckpointConfig):
    DESCRIPTION = "synthetic landmark detector"

    image_size: int = 64
    channels: tuple[int, ...] = (32, 64, 96, 128)
    hidden: int = 256


class SyntheticLandmarkDetector(nn.Module):
    """Image ``[B, H, W, 3]`` in 0..1 → 68 landmarks ``[B, 68, 2]`` in pixels of that image."""

    def __init__(self, config: LandmarkDetectorConfig = LandmarkDetectorConfig()) -> None:
        super().__init__()
        self.config = config
        layers, width = [], 3
        for channels in config.channels:
            layers += [nn.Conv2d(width, channels, 3, stride=2, padding=1), nn.GroupNorm(8, channels), nn.SiLU(),
                       nn.Conv2d(channels, channels, 3, padding=1), nn.SiLU()]
            width = channels
        self.features = nn.Sequential(*layers)
        side = config.image_size // 2 ** len(config.channels)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(width * side * side, config.hidden), nn.SiLU(),
                                  nn.Linear(config.hidden, NUM_LANDMARKS * 2))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        size = self.config.image_size
        unit = self.head(self.features(images.permute(0, 3, 1, 2) * 2 - 1)).view(-1, NUM_LANDMARKS, 2)
        return (unit + 1) * (size / 2)


def train_landmark_detector(
    face_model: MorphableModel, identities: int = 300, steps: int = 3000, batch_size: int = 32,
    image_size: int = 64, seed: int = DETECTOR_SEED, learning_rate: float = 2e-3,
) -> SyntheticLandmarkDetector:
    """Train a detector on ``identities`` × 6 synthetic photographs (the generators' world, other people),
    with small random shifts so it reads the face wherever a generator puts it."""
    views = render_synthetic_views(face_model, identities, SyntheticFaceSettings(image_size=image_size), seed=seed)
    renderer_landmarks = _true_landmarks(face_model, views.coefficients, image_size)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    detector = SyntheticLandmarkDetector(LandmarkDetectorConfig(image_size=image_size))
    optimizer = torch.optim.AdamW(detector.parameters(), lr=learning_rate)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, learning_rate, total_steps=steps)
    for _ in range(steps):
        rows = torch.randint(len(views), (batch_size,), generator=generator)
        images, landmarks = _shifted(views.photos[rows], renderer_landmarks[rows], generator)
        loss = F.smooth_l1_loss(detector(images), landmarks, beta=0.5)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return detector.eval()


def save_landmark_detector(detector: SyntheticLandmarkDetector, path: str | Path) -> None:
    save_checkpoint(detector, path, {"format": DETECTOR_FORMAT, "config": detector.config.to_json()})


def load_landmark_detector(path: str | Path) -> SyntheticLandmarkDetector:
    metadata = read_checkpoint_metadata(path, "landmark detector")
    if metadata.get("format") != DETECTOR_FORMAT:
        raise ModelFileError(f"{Path(path).name} is not a synthetic landmark detector (format '{metadata.get('format')}')")
    detector = SyntheticLandmarkDetector(LandmarkDetectorConfig.from_metadata(metadata, Path(path).name))
    load_weights_strictly(detector, read_checkpoint_weights(path), Path(path).name, "landmark detector")
    return detector.eval()


def _true_landmarks(face_model: MorphableModel, flat: torch.Tensor, image_size: int) -> torch.Tensor:
    coefficients = generator_rows_to_coefficients(flat, face_model.dims)
    camera = PerspectiveCamera.deep3d(image_size)
    vertices = face_model.posed_vertices(coefficients)
    return camera.project(vertices[:, face_model.landmark_ids])


def _shifted(images: torch.Tensor, landmarks: torch.Tensor, generator: torch.Generator, pixels: int = 3):
    dx, dy = (int(v) for v in torch.randint(-pixels, pixels + 1, (2,), generator=generator))
    moved = torch.roll(images, shifts=(dy, dx), dims=(1, 2))
    return moved, landmarks + torch.tensor([dx, dy], dtype=landmarks.dtype)


@dataclass
class MotionError:
    """Per image: landmark error over the inter-ocular distance, head rotation error in degrees, and the
    expression's error as the mean displacement of the face's vertices (model units)."""

    landmark_nme: torch.Tensor
    rotation_degrees: torch.Tensor
    expression: torch.Tensor

    def summary(self, name: str) -> dict[str, float]:
        return {
            f"landmark_nme_{name}": round(float(self.landmark_nme.mean()), 4),
            f"rotation_error_deg_{name}": round(float(self.rotation_degrees.mean()), 3),
            f"expression_error_{name}": round(float(self.expression.mean()), 5),
        }


@torch.no_grad()
def motion_error(
    detector: SyntheticLandmarkDetector, face_model: MorphableModel, images: torch.Tensor, truth: FaceCoefficients,
) -> MotionError:
    """Detect the landmarks of ``images`` and fit pose and expression to them with the identity held at
    ``truth``'s (the person is known; the motion is asked), then compare with ``truth``."""
    size = images.shape[1]
    camera = PerspectiveCamera.deep3d(size)
    true_landmarks = camera.project(face_model.posed_vertices(truth)[:, face_model.landmark_ids])
    detected = torch.cat([detector(images[chunk]) for chunk in frame_chunks(len(images), 64)])
    interocular = (true_landmarks[:, 36:42].mean(1) - true_landmarks[:, 42:48].mean(1)).norm(dim=-1)
    nme = (detected - true_landmarks).norm(dim=-1).mean(1) / interocular
    start = FaceCoefficients(**{**vars(truth), "expression": torch.zeros_like(truth.expression)})
    fitted = LandmarkFitter(face_model, camera).fit(
        detected, optimize=("rotation", "translation", "expression"), init=start
    ).coefficients
    rotation = (fitted.rotation - truth.rotation).abs().mean(1).rad2deg()
    offsets = (fitted.expression - truth.expression) @ face_model.expression_basis
    expression = offsets.view(len(images), -1, 3).norm(dim=-1).mean(1)
    return MotionError(nme, rotation, expression)
