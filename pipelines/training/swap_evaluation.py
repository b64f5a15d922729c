"""Held-out evaluation of face swapping on synthetic people, where the truth is known exactly: the
source person photographed with the target's expression, pose, gaze and light.

Measured on the target's face (what a swap replaces; hair and wall stay the target's after paste-back):
PSNR and SSIM against that truth, and identity retrieval: the texture (albedo) coefficients fitted
back from each output by the photometric fit the face pipeline uses (not an embedding the generator
saw), compared with every held-out person's true texture; top-1 when the nearest is the source person.
Baselines: the target unchanged, the source photo warped onto the swapped geometry (the weight-free
swap), and the Replace Coefficients render I_3d."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..face.appearance import estimate_appearance
from ..generator.face_swap import swap_coefficients
from ..generator.sampler import (
    GeneratorInputs,
    SamplerSettings,
    TGDMSampler,
    flat_coefficients,
    generator_rows_to_coefficients,
)
from ..generator.tgdm import TGDMDenoiser
from ..morphable.model import MorphableModel
from ..render.camera import PerspectiveCamera
from ..render.renderer import FaceRenderer
from ..video import frame_chunks
from .pair_warp import PairWarper
from .synthetic_faces import FaceViews, photograph
from .tgdm_evaluation import psnr, ssim

FIT_CHUNK = 8


def swap_pairs(views: FaceViews) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed (source, target) view pairs of different people: every view is a target once, its source
    the same view number of the next person."""
    per_identity = int((views.identities == views.identities[0]).sum())
    people = int(views.identities.max()) + 1
    targets = torch.arange(len(views))
    sources = ((views.identities + 1) % people) * per_identity + targets % per_identity
    return sources, targets


@torch.no_grad()
def evaluate_swap(
    model: TGDMDenoiser | None, views: FaceViews, face_model: MorphableModel, settings: SamplerSettings,
    pairs: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, float]:
    """Swap every held-out pair with ``model`` (None: baselines only) and score it and the baselines.
    ``views`` must come from :func:`~.synthetic_faces.render_synthetic_views` (it needs the people)."""
    if views.people is None:
        raise ValueError("the swap evaluation needs synthetic views that carry their people")
    sources, targets = swap_pairs(views) if pairs is None else pairs
    dims = face_model.dims
    size = views.photos.shape[1]
    source_rows = generator_rows_to_coefficients(views.coefficients[sources], dims)
    swapped = swap_coefficients(source_rows, generator_rows_to_coefficients(views.coefficients[targets], dims))
    renderer = FaceRenderer(face_model, PerspectiveCamera.deep3d(size))
    people = [views.people[int(i)] for i in views.identities[sources]]
    truth, maps = photograph(renderer, swapped, people)
    textured = PairWarper(face_model, size).textured(
        views.photos[sources], views.coefficients[sources], flat_coefficients(swapped)
    )
    candidates = {"target": views.photos[targets], "warped_source": textured.image, "render": maps.image}
    if model is not None:
        config = model.config
        candidates["swap"] = TGDMSampler(model, settings).sample(GeneratorInputs(
            source=views.photos[sources], renders=maps.image, coefficients=flat_coefficients(swapped),
            target_surfaces=maps.surface, source_surface=views.surfaces[sources],
            identity=views.descriptors[sources] if config.identity_dim else None,
            warped_sources=textured.warped if config.warp_condition else None,
            warp_masks=textured.valid if config.warp_condition else None,
        ))
    face = maps.mask > 0.5
    true_textures = torch.stack([person.texture for person in views.people])
    source_people = views.identities[sources]
    results = {}
    for name, images in candidates.items():
        results[f"psnr_{name}_face"] = round(psnr(images, truth, face).nanmean().item(), 3)
        results[f"ssim_{name}_face"] = round(ssim(images, truth, face).nanmean().item(), 4)
        # Per-frame texture solves hold a K×K system per pixel while accumulating: a few frames at a time.
        fitted = torch.cat([
            estimate_appearance(face_model, swapped[chunk], images[chunk], shared_texture=False).texture
            for chunk in frame_chunks(len(images), FIT_CHUNK)
        ])
        nearest = torch.cdist(fitted, true_textures).argmin(1)
        results[f"identity_top1_{name}"] = round(float((nearest == source_people).float().mean()), 4)
        results[f"texture_cosine_{name}"] = round(float(F.cosine_similarity(fitted, true_textures[source_people]).mean()), 4)
    return results
