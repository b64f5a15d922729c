"""Synthetic talking-face training data made by the project: random demo-face identities rendered
by our renderer, each with a "photo" look the 3DMM cannot express.

A photo is the lit 3DMM face with what a real camera adds and the coarse render I_3d lacks: a skin
detail pattern defined on the face's surface coordinates (mild for some people, strong for others, so
it moves with the face), a skin tint, specular highlights that follow the light and the head, hair
that stands out past the mesh's silhouette, teeth and a dark mouth cavity when the lips part, in front
of a per-identity wall (dark or bright) that stays put like a studio wall and is uncovered when the
head turns. Lighting ranges from flat to strongly directional. The source photo warped onto the
target geometry (render/texture_transfer.py) explains the skin; what it cannot explain (highlights
that move, hair outside the mesh, the mouth interior, the uncovered wall, the far side of a turned
head) is what a generator has to learn, from texture attention and from the data.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..generator.inputs import flat_coefficients, generator_rows_to_coefficients
from ..images import dilate_masks
from ..morphable.camera import PerspectiveCamera
from ..morphable.coefficients import CoefficientDims, FaceCoefficients
from ..morphable.demo_model import SEMANTIC_EXPRESSIONS
from ..morphable.model import MorphableModel
from ..render.mouth import MouthLook, draw_mouth_interior
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
    lighting_spread: float = 0.18  # largest standard deviation of the non-ambient SH coefficients (0: flat)
    pattern_waves: int = 6
    pattern_frequency: tuple[float, float] = (4.0, 14.0)  # cycles across the face's surface coordinates
    pattern_strength: tuple[float, float] = (0.05, 0.45)  # per identity, from mild skin detail to strong
    wall_brightness: tuple[float, float] = (0.08, 0.9)
    specular: tuple[float, float] = (0.0, 0.35)  # strength of the highlights, per identity
    hair_volume: tuple[float, float] = (0.0, 0.06)  # hair past the silhouette, a fraction of the image side


@dataclass
class FaceViews:
    """Renders of several identities, channel-last in 0..1, one row per view."""

    photos: torch.Tensor  # [N, H, W, 3] what a camera sees: detailed face and background
    renders: torch.Tensor  # [N, H, W, 3] the coarse 3DMM render I_3d
    surfaces: torch.Tensor  # [N, H, W, 3] surface coordinates of the visible point, 0 off the face
    coefficients: torch.Tensor  # [N, 259] flat 257 coefficients + gaze
    identities: torch.Tensor  # [N] identity number of every view
    # [N, E] unit identity descriptor of every view (the identity token of face-swap generators)
    descriptors: torch.Tensor | None = None
    # The people of the synthetic world, by identity number: they photograph any coefficients (swap truths).
    people: list[SyntheticIdentity] | None = None

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


# Width of the synthetic identity descriptor: ArcFace's, so a swap generator trained on synthetic faces
# has the identity token shape that insightface's recognition model gives at inference.
DESCRIPTOR_DIM = 512
DESCRIPTOR_SEED = 20_251_204


def identity_descriptors(coefficients: torch.Tensor, dims: CoefficientDims, width: int = DESCRIPTOR_DIM) -> torch.Tensor:
    """The synthetic world's face recogniser: a fixed random projection of each view's identity (shape)
    and texture (albedo) coefficients, unit length, ``[N, width]``. It plays ArcFace's part for
    synthetic people: one vector per person whatever the pose, expression or light; people with
    different shape or skin get different vectors. Rows are the generator's flat coefficients."""
    rows = generator_rows_to_coefficients(coefficients, dims)
    person = torch.cat([rows.identity, rows.texture], dim=1)
    projection = torch.randn(person.shape[1], width, generator=torch.Generator().manual_seed(DESCRIPTOR_SEED))
    return F.normalize(person @ projection, dim=1)


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
    spread = settings.lighting_spread * torch.rand(views, 1, 1, generator=generator)  # flat to directional
    light = spread * torch.randn(views, 1, 9, generator=generator)
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
    """One person of the synthetic world: 3DMM identity and albedo, and the looks a camera adds."""

    identity: torch.Tensor  # [identity dims]
    texture: torch.Tensor  # [texture dims]
    waves: torch.Tensor  # [K, 8] see surface_pattern
    background: torch.Tensor  # [H, W, 3]
    pattern_strength: float = 0.45
    tint: torch.Tensor = field(default_factory=lambda: torch.ones(3))  # skin colour multiplier
    specular: float = 0.0
    hair_colour: torch.Tensor = field(default_factory=lambda: torch.full((3,), 0.15))
    hair_volume: float = 0.0
    mouth: MouthLook = MouthLook()


def random_identity(model: MorphableModel, settings: SyntheticFaceSettings, generator: torch.Generator) -> SyntheticIdentity:
    identity = torch.randn(model.dims.identity, generator=generator)
    texture = torch.randn(model.dims.texture, generator=generator)
    return _identity_looks(identity, texture, settings, generator)


def _uniform(bounds: tuple[float, float], generator: torch.Generator) -> float:
    low, high = bounds
    return low + (high - low) * float(torch.rand((), generator=generator))


def _identity_looks(
    identity: torch.Tensor, texture: torch.Tensor, settings: SyntheticFaceSettings, generator: torch.Generator
) -> SyntheticIdentity:
    low, high = settings.pattern_frequency
    frequency = low + (high - low) * torch.rand(settings.pattern_waves, 1, generator=generator)
    direction = torch.nn.functional.normalize(torch.randn(settings.pattern_waves, 3, generator=generator), dim=1)
    waves = torch.cat([
        2 * math.pi * frequency * direction,
        2 * math.pi * torch.rand(settings.pattern_waves, 1, generator=generator),
        torch.rand(settings.pattern_waves, 3, generator=generator) * 2 - 1,
        torch.zeros(settings.pattern_waves, 1),
    ], dim=1)
    wall = torch.rand(2, 3, generator=generator) * _uniform(settings.wall_brightness, generator)
    background = background_image(settings.image_size, wall, generator)
    teeth = 0.75 + 0.2 * torch.rand((), generator=generator)
    cavity = 0.08 + 0.12 * torch.rand(3, generator=generator) * torch.tensor([1.0, 0.4, 0.4])
    return SyntheticIdentity(
        identity=identity, texture=texture, waves=waves, background=background,
        pattern_strength=_uniform(settings.pattern_strength, generator),
        tint=1 + 0.12 * torch.randn(3, generator=generator),
        specular=_uniform(settings.specular, generator),
        hair_colour=torch.rand(3, generator=generator) * _uniform((0.05, 0.6), generator),
        hair_volume=_uniform(settings.hair_volume, generator),
        mouth=MouthLook(cavity=tuple(cavity.tolist()), teeth=(float(teeth), float(teeth) * 0.97, float(teeth) * 0.9)),
    )


def _light_direction(lighting: torch.Tensor) -> torch.Tensor:
    """Unit directions ``[B, 3]`` towards the light from the first SH band (averaged over colours),
    leaning towards the camera so flat light still gives a frontal highlight."""
    band = lighting.view(-1, 3, 9).mean(1)
    towards = torch.stack([-band[:, 3], -band[:, 1], band[:, 2]], dim=-1)
    return torch.nn.functional.normalize(towards + torch.tensor([0.0, 0.0, 0.35]), dim=-1)


def _hair_outside(maps: RenderMaps, volume_px: torch.Tensor) -> torch.Tensor:
    """Hair standing out past the silhouette, ``[B, H, W]``: the upper head's outline dilated by each
    person's volume (in pixels), off the face."""
    crown = (maps.surface[..., 1] > 0.62).float() * maps.mask
    hair = torch.zeros_like(maps.mask)
    for index, radius in enumerate(volume_px.round().long().tolist()):
        if radius > 0:
            grown = dilate_masks(crown[index : index + 1, None], radius)[0, 0]
            hair[index] = grown * (1 - maps.mask[index])
    return hair


def photograph(renderer: FaceRenderer, coeffs: FaceCoefficients, people: list[SyntheticIdentity]) -> tuple[torch.Tensor, RenderMaps]:
    """The "photos" ``[B, H, W, 3]`` of frames whose k-th row shows ``people[k]``, and the render maps."""
    maps = renderer.render(coeffs)
    size = maps.image.shape[1]
    detail = torch.cat([
        surface_pattern(maps.surface[i : i + 1], maps.mask[i : i + 1], person.waves) for i, person in enumerate(people)
    ])
    strength = torch.tensor([person.pattern_strength for person in people]).view(-1, 1, 1, 1)
    tint = torch.stack([person.tint for person in people]).view(-1, 1, 1, 3)
    face = maps.image * (1 + strength * detail) * tint
    halfway = torch.nn.functional.normalize(_light_direction(coeffs.lighting) + torch.tensor([0.0, 0.0, 1.0]), dim=-1)
    shine = (maps.normals * halfway.view(-1, 1, 1, 3)).sum(-1).clamp_min(0) ** 24
    specular = torch.tensor([person.specular for person in people]).view(-1, 1, 1)
    face = (face + (specular * shine * maps.mask).unsqueeze(-1)).clamp(0, 1)
    for index, person in enumerate(people):
        colour, alpha = draw_mouth_interior(maps.landmarks[index : index + 1], size, person.mouth)
        face[index] = face[index] * (1 - alpha[0, ..., None]) + colour[0] * alpha[0, ..., None]
    coverage = maps.mask.unsqueeze(-1)
    background = torch.stack([person.background for person in people])
    photo = face * coverage + background * (1 - coverage)
    hair = _hair_outside(maps, torch.tensor([person.hair_volume * size for person in people])).unsqueeze(-1)
    hair_colour = torch.stack([person.hair_colour for person in people]).view(-1, 1, 1, 3)
    return photo * (1 - hair) + hair_colour * hair, maps


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
        people.append(_identity_looks(identity, texture, settings, generator))
    coeffs = FaceCoefficients.concat(all_coeffs)
    owner = torch.arange(identities).repeat_interleave(views)
    photos, renders, surfaces = [], [], []
    for chunk in frame_chunks(coeffs.frames, batch_size):
        photo, maps = photograph(renderer, coeffs[chunk], [people[i] for i in owner[chunk].tolist()])
        photos.append(photo)
        renders.append(maps.image)
        surfaces.append(maps.surface)
    flat = flat_coefficients(coeffs)
    return FaceViews(
        photos=torch.cat(photos), renders=torch.cat(renders), surfaces=torch.cat(surfaces),
        coefficients=flat, identities=owner, descriptors=identity_descriptors(flat, model.dims), people=people,
    )
