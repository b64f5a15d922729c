"""The "D" network: Deep3DFaceRecon's R-Net, a ResNet-50 regressing the 257 coefficients of a face crop.

Users who have its weights (``epoch_20.pth``, shipped by Deep3DFaceRecon_pytorch and SadTalker; SadTalker's
``SadTalker_V0.0.2_256.safetensors`` holds the same tensors under ``face_3drecon.``) get coefficients in
one forward pass; the landmark fitter then refines them. The module tree reproduces the state-dict names
of the released file: ``backbone.`` is a ResNet-50 without its classifier (torchvision's naming) and
``final_layers.0``–``6`` are 1×1 convolutions for identity 80, expression 64, texture 80, angles 3,
lighting 27, translation xy 2 and z 1 — the order of the 257-d vector.

The network sees the crop Deep3DFaceRecon's ``align_img`` makes: RGB in 0..1, 224 px, no rotation,
scaled and shifted so that a 5-point 3D template (eye centres, nose tip, mouth corners of
``similarity_Lm3D_all.mat``) fitted to the image's five points by an affine camera measures 102 px per
model unit. :func:`deep3d_crop_transforms` rebuilds that crop exactly (their integer rounding included),
and :func:`reframe_pose` moves the predicted pose from that crop into the pack's similarity-aligned
fitting crop, where the fitter and the renderer work.
"""
from __future__ import annotations

import pickle
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..checkpoints import WeightMismatch
from ..errors import ModelFileError, TalkingFaceError
from ..morphable.camera import PerspectiveCamera
from ..morphable.coefficients import BFM_DIMS, FaceCoefficients
from ..morphable.model import MorphableModel
from ..video import frame_chunks
from .alignment import FIT_CROP_SIZE, invert_transforms, warp_images
from .faces import AnalyzedFaces

HEADS = (80, 64, 80, 3, 27, 2, 1)  # identity, expression, texture, angles, lighting, translation xy, z
RESNET50_STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))  # (width, blocks, stride)
EXPANSION = 4
FEATURES = 512 * EXPANSION
CHECKPOINT_KEY = "net_recon"
SADTALKER_PREFIX = "face_3drecon."
# align_img's scale: the 3D template measures this many px per model unit in the 224-px crop.
RESCALE_FACTOR = 102.0
TEMPLATE_FILE = "similarity_Lm3D_all.mat"
# Deep3DFaceRecon's five points from the 68 (0-based): eye centres from the corners, nose tip, mouth corners.
FIVE_FROM_68 = ((36, 39), (42, 45), (30,), (48,), (54,))
REFINE_GROUPS = {
    "pose_and_expression": ("rotation", "translation", "expression"),
    "pose": ("rotation", "translation"),
    "all": ("rotation", "translation", "identity", "expression"),
}


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3 (carrying the stride), 1×1 expand, plus a projected shortcut when the shape changes."""

    def __init__(self, in_channels: int, width: int, stride: int) -> None:
        super().__init__()
        out_channels = width * EXPANSION
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + shortcut)


class ResNet50Features(nn.Module):
    """ResNet-50 up to global average pooling: ``[B, 3, H, W]`` → ``[B, 2048, 1, 1]``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        channels = 64
        for index, (width, blocks, stride) in enumerate(RESNET50_STAGES, start=1):
            stage = [Bottleneck(channels, width, stride)]
            stage += [Bottleneck(width * EXPANSION, width, 1) for _ in range(blocks - 1)]
            setattr(self, f"layer{index}", nn.Sequential(*stage))
            channels = width * EXPANSION
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.avgpool(x)


class FaceCoefficientRegressor(nn.Module):
    """Deep3DFaceRecon's R-Net: crops ``[B, 3, 224, 224]`` (RGB 0..1) → flat coefficients ``[B, 257]``."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = ResNet50Features()
        self.final_layers = nn.ModuleList(nn.Conv2d(FEATURES, size, 1, bias=True) for size in HEADS)
        for head in self.final_layers:  # as Deep3DFaceRecon starts training: the mean face, frontal
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.backbone(images)
        return torch.cat([head(features) for head in self.final_layers], dim=1).flatten(1)


# loading ------------------------------------------------------------------------------------------
_OTHER_MODELS = (
    # (a key prefix or name, what the file is) for files people mistake for the R-Net.
    ("generator.", "a SadTalker/face-vid2vid generator checkpoint"),
    ("kp_detector.", "a SadTalker keypoint-detector checkpoint"),
    ("kp_extractor.", "SadTalker's main checkpoint without its face_3drecon part"),
    ("mapping.", "a SadTalker mapping network (mapping_*.pth.tar)"),
    ("audio2exp", "a SadTalker audio-to-expression checkpoint"),
    ("audio2pose", "a SadTalker audio-to-pose checkpoint"),
    ("output_layer.", "an ArcFace/insightface recognition backbone"),
    ("features.", "an ArcFace/insightface recognition backbone"),
)


def _read_tensors(path: Path) -> dict:
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as error:  # safetensors raises its own error types for corrupt headers
            raise ModelFileError(f"{path.name} is not a readable .safetensors file ({error}); download it again") from error
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ModelFileError(
            f"{path.name} holds more than plain tensors (Python objects that could run code), so it is not loaded; "
            f"use the original epoch_20.pth or a .safetensors with the same keys ({error})"
        ) from error
    except (RuntimeError, EOFError, zipfile.BadZipFile) as error:
        raise ModelFileError(f"{path.name} is not a readable PyTorch file ({error}); it may be truncated, download it again") from error


def _network_state(raw: object, name: str) -> dict[str, torch.Tensor]:
    """The R-Net's tensors out of the layouts it ships in: ``{"net_recon": ...}`` (Deep3DFaceRecon's
    training checkpoint), SadTalker's bundle (``face_3drecon.`` prefix) or a bare state dict."""
    if not isinstance(raw, dict):
        raise ModelFileError(f"{name} holds a {type(raw).__name__}, not a state dict of the face regressor")
    if CHECKPOINT_KEY in raw and isinstance(raw[CHECKPOINT_KEY], dict):
        raw = raw[CHECKPOINT_KEY]
    if any(isinstance(k, str) and k.startswith(SADTALKER_PREFIX) for k in raw):
        raw = {k[len(SADTALKER_PREFIX):]: v for k, v in raw.items() if k.startswith(SADTALKER_PREFIX)}
    if raw and all(isinstance(k, str) and k.startswith("module.") for k in raw):  # saved from DataParallel
        raw = {k[len("module."):]: v for k, v in raw.items()}
    return {k: v for k, v in raw.items() if isinstance(v, torch.Tensor)}


def _recognise(keys: set[str]) -> str | None:
    for prefix, what in _OTHER_MODELS:
        if any(k.startswith(prefix) for k in keys):
            return what
    if "fc.weight" in keys and "layer4.0.conv1.weight" in keys:
        return "a plain ResNet classifier (torchvision ImageNet weights), not Deep3DFaceRecon's R-Net"
    if "backbone.fc.weight" in keys:
        return "a Deep3DFaceRecon variant trained with a single fc head (use_last_fc), not the released epoch_20.pth"
    if any(k.startswith("backbone.layer") for k in keys) and not any(k.startswith("backbone.layer3.5.") for k in keys):
        return "a Deep3DFaceRecon R-Net with a smaller ResNet (resnet18/34), not the released ResNet-50"
    return None


def check_state_dict(state: dict[str, torch.Tensor], expected: dict[str, torch.Size], name: str) -> None:
    """Raise one error naming what is missing, unexpected or of the wrong shape (and what the file looks like)."""
    mismatch = WeightMismatch.between(expected, state)
    if not mismatch:
        return

    def listing(items: list[str]) -> str:
        return ", ".join(items[:6]) + (f" … ({len(items)} in all)" if len(items) > 6 else "")

    guess = _recognise(set(state))
    looks = f"; this looks like {guess}" if guess else ""
    raise ModelFileError(
        f"{name} is not Deep3DFaceRecon's R-Net (epoch_20.pth, a ResNet-50 with 7 coefficient heads): "
        + "; ".join(mismatch.labelled(listing)) + looks
    )


def load_regressor_network(path: str | Path) -> FaceCoefficientRegressor:
    """Read ``epoch_20.pth`` (``torch.load(weights_only=True)``) or a ``.safetensors`` with the same keys."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"face regressor weights '{path.name}' not found")
    state = _network_state(_read_tensors(path), path.name)
    with torch.device("meta"):  # every tensor comes from the file: skip initialising 24M weights first
        network = FaceCoefficientRegressor()
    expected = {k: v.shape for k, v in network.state_dict().items()}
    check_state_dict(state, expected, path.name)
    network.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()},
                            strict=True, assign=True)
    return network.eval()


def five_point_template(landmarks3d: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Deep3DFaceRecon's five 3D points ``[5, 3]`` from 68 3D landmarks (``similarity_Lm3D_all.mat``'s ``lm``)."""
    points = torch.as_tensor(np.asarray(landmarks3d, dtype=np.float32))
    if points.shape != (68, 3):
        raise ModelFileError(f"the 3D landmark template must be 68×3, got {tuple(points.shape)}: use SadTalker's {TEMPLATE_FILE} in ComfyUI/models/3dmm/")
    return torch.stack([points[list(group)].mean(0) for group in FIVE_FROM_68])


def read_template_file(path: str | Path) -> torch.Tensor:
    from scipy.io import loadmat

    try:
        arrays = loadmat(str(path))
    except Exception as error:  # scipy raises several types for files that are not MATLAB files
        raise ModelFileError(f"{Path(path).name} is not a readable .mat file ({error})") from error
    if "lm" not in arrays:
        raise ModelFileError(f"{Path(path).name} has no 'lm' array (Deep3DFaceRecon's 68 3D landmarks)")
    return five_point_template(arrays["lm"])


@dataclass
class FaceRegressor:
    """``TALK_REGRESSOR``: the network, the five-point template its crops were aligned with (from
    ``similarity_Lm3D_all.mat``; ``None`` takes it from the 3DMM being fitted), and which coefficient
    groups the landmark fitter refines afterwards (:data:`REFINE_GROUPS`)."""

    network: FaceCoefficientRegressor
    template: torch.Tensor | None
    refine: str = "pose_and_expression"
    name: str = "face regressor"

    def __post_init__(self) -> None:
        if self.refine not in REFINE_GROUPS:
            raise TalkingFaceError(f"refine must be one of {sorted(REFINE_GROUPS)}, got '{self.refine}'")

    @property
    def refine_groups(self) -> tuple[str, ...]:
        return REFINE_GROUPS[self.refine]


def load_face_regressor(path: str | Path, template_path: str | Path | None = None,
                        refine: str = "pose_and_expression") -> FaceRegressor:
    template = read_template_file(template_path) if template_path is not None else None
    return FaceRegressor(load_regressor_network(path), template, refine, Path(path).name)


# the crop ---------------------------------------------------------------------------------------
def deep3d_five_points(faces: AnalyzedFaces) -> torch.Tensor:
    """The five points align_img uses ``[T, 5, 2]``: from the 68 landmarks when there are some
    (as Deep3DFaceRecon and SadTalker do), else the detector's keypoints."""
    if faces.landmarks68 is None:
        return faces.keypoints.float()
    return torch.stack([faces.landmarks68[:, list(group)].mean(1) for group in FIVE_FROM_68], dim=1).float()


def model_template(model: MorphableModel) -> torch.Tensor:
    """Five 3D points from a 3DMM's mean-shape landmarks: the template when no similarity_Lm3D_all.mat is
    given (Deep3DFaceRecon's file holds BFM landmarks; other models get their own)."""
    return five_point_template(model.mean_shape[model.landmark_ids].detach().cpu())


def deep3d_crop_transforms(points: torch.Tensor, height: int, width: int, template: torch.Tensor) -> torch.Tensor:
    """Frame → crop transforms ``[T, 2, 3]`` of Deep3DFaceRecon's ``align_img`` for five points
    ``[T, 5, 2]`` (pack pixel convention, centres at +0.5) in ``height × width`` frames.

    As there: an affine camera fitted by least squares maps the template onto the points (y up, pixel
    indices); the image is resized by ``102 / scale`` to whole pixels and cut at whole pixels so the
    template's origin lands at the centre. Resizing maps pixel edges to edges, so in +0.5 coordinates the
    crop is ``x · w/w0 − left``, with no rotation."""
    points = points.double().cpu().numpy()
    template = template.double().cpu().numpy()
    design = np.zeros((10, 8))
    design[0::2, 0:3], design[0::2, 3] = template, 1.0
    design[1::2, 4:7], design[1::2, 7] = template, 1.0
    transforms = []
    for frame_points in points:
        x = frame_points[:, 0] - 0.5
        y = height - 1 - (frame_points[:, 1] - 0.5)  # pixel index, y up
        solution = np.linalg.lstsq(design, np.stack([x, y], 1).reshape(-1), rcond=None)[0]
        scale = (np.linalg.norm(solution[0:3]) + np.linalg.norm(solution[4:7])) / 2.0
        if not np.isfinite(scale) or scale <= 0:
            raise TalkingFaceError("the five face points are degenerate; the face regressor cannot align this face")
        tx, ty = solution[3], solution[7]
        resize = RESCALE_FACTOR / scale
        resized_w, resized_h = int(width * resize), int(height * resize)
        left = int(resized_w / 2 - FIT_CROP_SIZE / 2 + (tx - width / 2) * resize)
        up = int(resized_h / 2 - FIT_CROP_SIZE / 2 + (height / 2 - ty) * resize)
        transforms.append([[resized_w / width, 0.0, -left], [0.0, resized_h / height, -up]])
    return torch.tensor(transforms, dtype=torch.float32)


def reframe_pose(model: MorphableModel, coeffs: FaceCoefficients, crop_to_crop: torch.Tensor,
                 camera: PerspectiveCamera) -> FaceCoefficients:
    """Move each frame's pose from one crop to another related by a 2-D similarity ``[T, 2, 3]``.

    The in-plane rotation is exact (the scene turns about the camera axis: the z Euler angle, since
    R = Rz·Ry·Rx); scale and shift move the landmark centroid in depth and across so that it projects
    where the similarity sends it (exact for the centroid, first order for the rest — the fitter refines)."""
    linear = crop_to_crop[:, :, :2].to(coeffs.rotation)
    offset = crop_to_crop[:, :, 2].to(coeffs.rotation)
    angle = torch.atan2(linear[:, 1, 0], linear[:, 0, 0])  # in y-down pixels; y-up world turns the other way
    zoom = torch.linalg.det(linear).clamp_min(1e-12).sqrt()
    ids = model.landmark_ids

    def mean_offset(weights: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
        return weights @ basis.view(basis.shape[0], model.num_vertices, 3)[:, ids].mean(1)

    centroid = (model.mean_shape[ids].mean(0) + mean_offset(coeffs.identity, model.identity_basis)
                + mean_offset(coeffs.expression, model.expression_basis))
    rotation = coeffs.rotation.clone()
    rotation[:, 2] = rotation[:, 2] - angle
    before = (model.pose(centroid.unsqueeze(1), coeffs.rotation, coeffs.translation)).squeeze(1)
    turned = model.pose(centroid.unsqueeze(1), rotation, torch.zeros_like(coeffs.translation)).squeeze(1)
    target = (linear @ camera.project(before).unsqueeze(-1)).squeeze(-1) + offset
    depth = camera.depth(before) / zoom
    moved = torch.stack([
        (target[:, 0] - camera.center) * depth / camera.focal,
        (camera.center - target[:, 1]) * depth / camera.focal,
        camera.distance - depth,
    ], dim=-1)
    return coeffs.replace(rotation=rotation, translation=moved - turned)


@torch.no_grad()
def regress_coefficients(
    regressor: FaceRegressor,
    faces: AnalyzedFaces,
    model: MorphableModel,
    batch_size: int = 16,
    on_chunk: Callable[[int], None] | None = None,
) -> FaceCoefficients:
    """The network's coefficients for every analysed frame, in the pack's fitting crop (``faces.fit_transforms``);
    ``on_chunk(frames_done)`` runs after every batch."""
    if model.dims != BFM_DIMS:
        raise TalkingFaceError(
            f"the face regressor predicts BFM09 coefficients ({BFM_DIMS}) but {model.name} has {model.dims}; "
            "fit with BFM_model_front.mat (or the demo face, which shares the layout) or leave the regressor out"
        )
    template = regressor.template if regressor.template is not None else model_template(model)
    height, width = faces.images.shape[1:3]
    deep3d = deep3d_crop_transforms(deep3d_five_points(faces), height, width, template)
    network = regressor.network
    device = next(network.parameters()).device
    parts = []
    for chunk in frame_chunks(faces.frames, batch_size):
        crops = warp_images(faces.images[chunk].to(device), deep3d[chunk].to(device), FIT_CROP_SIZE)
        parts.append(network(crops.permute(0, 3, 1, 2).clamp(0.0, 1.0)).float())
        if on_chunk is not None:
            on_chunk(chunk.stop)
    coeffs = FaceCoefficients.from_flat(torch.cat(parts).to(model.mean_shape.device))
    to_fit_crop = faces.fit_transforms.to(deep3d) @ torch.cat(
        [invert_transforms(deep3d), torch.tensor([0.0, 0.0, 1.0]).expand(faces.frames, 1, 3)], dim=1)
    return reframe_pose(model, coeffs, to_fit_crop.to(model.mean_shape.device), PerspectiveCamera.deep3d(FIT_CROP_SIZE))
