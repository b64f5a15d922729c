"""Synthetic talking-face training data made by the project: random demo-face identities rendered
by our renderer, each with a "photo" look the 3DMM cannot express.

A photo is the lit 3DMM face multiplied by a per-identity high-frequency pattern defined on the
face's surface coordinates (so it moves with the face), in front of a per-identity background
that stays put like a studio wall. I_3d is the plain 3DMM render of the same coefficients. A
generator can only reproduce the photo by copying the pattern and the background from another
photo of the same identity, which is the job of TGDM's texture attention.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..generator.sampler import flat_coefficients
from ..morphable.coefficients import FaceCoefficients
from ..morphable.demo_model import SEMANTIC_EXPRESSIONS
from ..morphable.model import MorphableModel
from ..render.camera import PerspectiveCamera
from ..render.renderer import FaceRenderer, RenderMaps
from ..video import frame_chunks


@dataclass(frozen=True)
class SyntheticFaceSettings:
    image_size: int = 64
    views_per_identity: int = 6
    max_yaw: float = 0.35  # radians
    max_pitch: float = 0.15
    max_roll: float = 0.1
    max_expression: float = 1.0  # weight of each of two random semantic expressions
    lighting_spread: float = 0.18  # standard deviation of the non-ambient SH coefficients
    pattern_waves: int = 6
    pattern_frequency: tuple[float, float] = (4.0, 14.0)  # cycles across the face's surface coordinates
    pattern_strength: float = 0.45


@dataclass
class FaceViews:
    """Renders of several identities, channel-last in 0..1, one row per view."""

    photos: torch.Tensor  # [N, H, W, 3] what a camera sees: detailed face and background
    renders: torch.Tensor  # [N, H, W, 3] the coarse 3DMM render I_3d
    surfaces: torch.Tensor  # [N, H, W, 3] surface coordinates of the visible point, 0 off the face
    coefficients: torch.Tensor  # [N, 259] flat 257 coefficients + gaze
    identities: torch.Tensor  # [N] identity number of every view

    def __len__(self) -> int:
        return self.photos.shape[0]

    def pairs(self, count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``count`` random (source, target) view indices: two different views of one identity."""
        targets = torch.randint(len(self), (count,), generator=generator)
        same = self.identities.unsqueeze(0) == self.identities[targets].unsqueeze(1)  # [count, N]
        same[torch.arange(count), targets] = False
        weights = same.float() + 1e-12 * (~same.any(1, keepdim=True)).float()  # a lone view pairs with itself
        sources = torch.multinomial(weights, 1, generator=generator).squeeze(1)
        return sources, targets


def random_view_coefficients(
    model: MorphableModel, identity: torch.Tensor, texture: torch.Tensor, views: int,
    settings: SyntheticFaceSettings, generator: torch.Generator,
) -> FaceCoefficients:
    """``views`` frames of one identity with random expression, head pose, gaze and white lighting."""
    coeffs = FaceCoefficients.neutral(views, model.dims)
    coeffs.identity[:] = identity
    coeffs.texture[:] = texture
    coeffs.expression[:] = 0.15 * torch.randn(views, model.dims.expression, generator=generator)
    names = [name for name in SEMANTIC_EXPRESSIONS if name in model.expression_names]
    for view in range(views):
        for pick in torch.randperm(len(names), generator=generator)[:2].tolist():
            weight = settings.max_expression * torch.rand((), generator=generator)
            coeffs.expression[view, model.expression_index(names[pick])] = weight
    limits = torch.tensor([settings.max_pitch, settings.max_yaw, settings.max_roll])
    coeffs.rotation[:] = (2 * torch.rand(views, 3, generator=generator) - 1) * limits
    coeffs.gaze[:] = 0.2 * (2 * torch.rand(views, 2, generator=generator) - 1)
    light = settings.lighting_spread * torch.randn(views, 1, 9, generator=generator)
    light[:, :, 0] = 0.1 * light[:, :, 0]  # keep the ambient term near the model's default exposure
    coeffs.lighting[:] = light.expand(views, 3, 9).reshape(views, 27)
    return coeffs


def surface_pattern(surface: torch.Tensor, mask: torch.Tensor, waves: torch.Tensor) -> torch.Tensor:
    """Per-pixel RGB pattern ``[B, H, W, 3]`` in about -1..1: a sum of plane waves on the surface
    coordinates. ``waves`` is ``[K, 8]``: direction·frequency (3), phase (1), RGB amplitude (3), unused (1)."""
    angles = surface @ waves[:, :3].T + waves[:, 3]  # [B, H, W, K]
    return (torch.sin(angles) @ waves[:, 4:7]) * mask.unsqueeze(-1) / math.sqrt(waves.shape[0] / 2)


def background_image(size: int, colours: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A smooth two-colour gradient with soft blobs, ``[size, size, 3]``: a wall behind the head."""
    axis = torch.linspace(0, 1, size)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    direction = torch.rand(2, generator=generator) * 2 - 1
    blend = ((x - 0.5) * direction[0] + (y - 0.5) * direction[1] + 0.5).clamp(0, 1).unsqueeze(-1)
    image = colours[0] * (1 - blend) + colours[1] * blend
    for _ in range(3):
        centre, radius = torch.rand(2, generator=generator), 0.1 + 0.2 * torch.rand((), generator=generator)
        blob = torch.exp(-((x - centre[0]) ** 2 + (y - centre[1]) ** 2) / (2 * radius**2)).unsqueeze(-1)
        image = image + 0.25 * (torch.rand(3, generator=generator) - 0.5) * blob
    return image.clamp(0, 1)


@dataclass
class SyntheticIdentity:
    """One person of the synthetic world: 3DMM identity and albedo, skin pattern and background."""

    identity: torch.Tensor  # [identity dims]
    texture: torch.Tensor  # [texture dims]
    waves: torch.Tensor  # [K, 8] see surface_pattern
    background: torch.Tensor  # [H, W, 3]


def random_identity(model: MorphableModel, settings: SyntheticFaceSettings, generator: torch.Generator) -> SyntheticIdentity:
    identity = torch.randn(model.dims.identity, generator=generator)
    texture = torch.randn(model.dims.texture, generator=generator)
    return SyntheticIdentity(identity, texture, *_identity_looks(settings, generator))


def _identity_looks(settings: SyntheticFaceSettings, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    low, high = settings.pattern_frequency
    frequency = low + (high - low) * torch.rand(settings.pattern_waves, 1, generator=generator)
    direction = torch.nn.functional.normalize(torch.randn(settings.pattern_waves, 3, generator=generator), dim=1)
    waves = torch.cat([
        2 * math.pi * frequency * direction,
        2 * math.pi * torch.rand(settings.pattern_waves, 1, generator=generator),
        torch.rand(settings.pattern_waves, 3, generator=generator) * 2 - 1,
        torch.zeros(settings.pattern_waves, 1),
    ], dim=1)
    background = background_image(settings.image_size, torch.rand(2, 3, generator=generator), generator)
    return waves, background


def photograph(
    renderer: FaceRenderer, coeffs: FaceCoefficients, people: list[SyntheticIdentity], strength: float
) -> tuple[torch.Tensor, RenderMaps]:
    """The "photos" ``[B, H, W, 3]`` of frames whose k-th row shows ``people[k]``, and the render maps."""
    maps = renderer.render(coeffs)
    detail = torch.cat([
        surface_pattern(maps.surface[i : i + 1], maps.mask[i : i + 1], person.waves) for i, person in enumerate(people)
    ])
    face = (maps.image * (1 + strength * detail)).clamp(0, 1)
    background = torch.stack([person.background for person in people])
    coverage = maps.mask.unsqueeze(-1)
    return face * coverage + background * (1 - coverage), maps


def render_synthetic_views(
    model: MorphableModel, identities: int, settings: SyntheticFaceSettings = SyntheticFaceSettings(),
    seed: int = 0, batch_size: int = 32,
) -> FaceViews:
    """``identities`` × ``settings.views_per_identity`` views; the same seed always gives the same data."""
    generator = torch.Generator().manual_seed(seed)
    renderer = FaceRenderer(model, PerspectiveCamera.deep3d(settings.image_size))
    views = settings.views_per_identity
    people, all_coeffs = [], []
    for _ in range(identities):
        identity = torch.randn(model.dims.identity, generator=generator)
        texture = torch.randn(model.dims.texture, generator=generator)
        all_coeffs.append(random_view_coefficients(model, identity, texture, views, settings, generator))
        people.append(SyntheticIdentity(identity, texture, *_identity_looks(settings, generator)))
    coeffs = FaceCoefficients.concat(all_coeffs)
    owner = torch.arange(identities).repeat_interleave(views)
    photos, renders, surfaces = [], [], []
    for chunk in frame_chunks(coeffs.frames, batch_size):
        photo, maps = photograph(renderer, coeffs[chunk], [people[i] for i in owner[chunk].tolist()], settings.pattern_strength)
        photos.append(photo)
        renders.append(maps.image)
        surfaces.append(maps.surface)
    return FaceViews(
        photos=torch.cat(photos), renders=torch.cat(renders), surfaces=torch.cat(surfaces),
        coefficients=flat_coefficients(coeffs), identities=owner,
    )
