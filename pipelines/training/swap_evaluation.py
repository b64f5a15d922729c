"""Held-out evaluation of face swapping on synthetic people, where the truth is known exactly: the
source person photographed with the target's expression, pose, gaze and light.

Measured on the target's face (what a swap replaces; hair and wall stay the target's after paste-back):
PSNR and SSIM against that truth; identity retrieval by the texture coefficients fitted back from each
output by the photometric fit the face pipeline uses (not an embedding the generator saw); and, with a
landmark detector of the synthetic world, the expression and pose fitted back from each output.
Baselines: the target unchanged, the source photo warped onto the swapped geometry (the weight-free
swap), and the Replace Coefficients render I_3d."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..face.appearance import estimate_appearance
from ..generator.face_swap import swap_coefficients
from ..generator.inputs import GeneratorInputs, flat_coefficients, generator_rows_to_coefficients
from ..generator.sampler import SamplerSettings, TGDMSampler
from ..generator.tgdm import TGDMDenoiser
from ..morphable.camera import PerspectiveCamera
from ..morphable.coefficients import FaceCoefficients
from ..morphable.model import MorphableModel
from ..render.renderer import FaceRenderer, RenderMaps
from ..render.textured_target import TexturedTarget
from ..video import frame_chunks
from .pair_warp import PairWarper
from .synthetic_faces import FaceViews, photograph
from .synthetic_landmarks import SyntheticLandmarkDetector, motion_error
from .tgdm_evaluation import held_out_pairs, psnr, ssim

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
    pairs: tuple[torch.Tensor, torch.Tensor] | None = None, detector: SyntheticLandmarkDetector | None = None,
) -> dict[str, float]:
    """Swap every held-out pair with ``model`` (None: baselines only) and score it and the baselines.
    ``views`` must come from :func:`~.synthetic_faces.render_synthetic_views` (it needs the people).

    Identity is retrieved as face recognition is scored: the texture fitted back from each output is
    compared with a gallery made the same way from every held-out person's own photographs (the mean
    over their views); ``albedo_top1`` compares with the people's true 3DMM albedo instead, which the
    render matches by construction. With a ``detector`` the motion is fitted back from each output
    (:func:`~.synthetic_landmarks.motion_error`), and for ``model`` also from its same-person
    reenactments of the same views (``_reenact``), the bound the swap's motion is held to."""
    if views.people is None:
        raise ValueError("the swap evaluation needs synthetic views that carry their people")
    sources, targets = swap_pairs(views) if pairs is None else pairs
    case = swap_case(views, face_model, sources, targets)
    swapped, truth, maps, textured = case.coefficients, case.truth, case.maps, case.textured
    all_rows = generator_rows_to_coefficients(views.coefficients, face_model.dims)
    candidates = {"target": views.photos[targets], "warped_source": textured.image, "render": maps.image}
    if model is not None:
        candidates["swap"] = sample_views(model, settings, views, sources, flat_coefficients(swapped), maps.image,
                                       maps.surface, textured)
    face = maps.mask > 0.5
    true_textures = torch.stack([person.texture for person in views.people])
    gallery = _texture_gallery(face_model, views, all_rows)
    source_people = views.identities[sources]
    results = {}
    for name, images in candidates.items():
        results[f"psnr_{name}_face"] = round(psnr(images, truth, face).nanmean().item(), 3)
        results[f"ssim_{name}_face"] = round(ssim(images, truth, face).nanmean().item(), 4)
        fitted = _fitted_textures(face_model, swapped, images)
        results[f"identity_top1_{name}"] = _top1(fitted, gallery, source_people)
        results[f"albedo_top1_{name}"] = _top1(fitted, true_textures, source_people)
        results[f"texture_cosine_{name}"] = round(float(F.cosine_similarity(fitted, gallery[source_people]).mean()), 4)
        if detector is not None:
            results.update(motion_error(detector, face_model, images, swapped).summary(name))
    if detector is not None:
        results.update(motion_error(detector, face_model, truth, swapped).summary("truth"))
        if model is not None:
            same_sources, same_targets = held_out_pairs(views)
            relit = PairWarper(face_model, views.photos.shape[1]).textured(views.photos[same_sources], views.coefficients[same_sources],
                                    views.coefficients[same_targets])
            reenacted = sample_views(model, settings, views, same_sources, views.coefficients[same_targets],
                                  views.renders[same_targets], views.surfaces[same_targets], relit)
            results.update(motion_error(detector, face_model, reenacted, all_rows[same_targets]).summary("reenact"))
    return results


@dataclass
class SwapCase:
    """Swapped pairs of views: the swapped coefficients, the exact truth photographed with the source
    people's skin, its render maps (image = the Replace Coefficients render) and the warped source."""

    coefficients: FaceCoefficients
    truth: torch.Tensor
    maps: RenderMaps
    textured: TexturedTarget


def swap_case(views: FaceViews, face_model: MorphableModel, sources: torch.Tensor, targets: torch.Tensor) -> SwapCase:
    size = views.photos.shape[1]
    rows = generator_rows_to_coefficients(views.coefficients, face_model.dims)
    swapped = swap_coefficients(rows[sources], rows[targets])
    people = [views.people[int(i)] for i in views.identities[sources]]
    truth, maps = photograph(FaceRenderer(face_model, PerspectiveCamera.deep3d(size)), swapped, people)
    textured = PairWarper(face_model, size).textured(views.photos[sources], views.coefficients[sources],
                                                     flat_coefficients(swapped))
    return SwapCase(swapped, truth, maps, textured)


def sample_views(
    model: TGDMDenoiser, settings: SamplerSettings, views: FaceViews, sources: torch.Tensor, coefficients: torch.Tensor,
    renders: torch.Tensor, surfaces: torch.Tensor, textured: TexturedTarget,
) -> torch.Tensor:
    """``model``'s faces for target ``coefficients`` (their ``renders``, ``surfaces`` and warp
    ``textured``), painted from the photos of views ``sources`` with their identity descriptors."""
    config = model.config
    return TGDMSampler(model, settings).sample(GeneratorInputs(
        source=views.photos[sources], renders=renders, coefficients=coefficients,
        target_surfaces=surfaces, source_surface=views.surfaces[sources],
        identity=views.descriptors[sources] if config.identity_dim else None,
        warped_sources=textured.warped if config.warp_condition else None,
        warp_masks=textured.valid if config.warp_condition else None,
    ))


def _fitted_textures(face_model: MorphableModel, coefficients: FaceCoefficients, images: torch.Tensor) -> torch.Tensor:
    # Per-frame texture solves hold a K×K system per pixel while accumulating: a few frames at a time.
    return torch.cat([
        estimate_appearance(face_model, coefficients[chunk], images[chunk], shared_texture=False).texture
        for chunk in frame_chunks(len(images), FIT_CHUNK)
    ])


def _texture_gallery(face_model: MorphableModel, views: FaceViews, coefficients: FaceCoefficients) -> torch.Tensor:
    """Every person's texture as fitted back from their own photographs, averaged over their views."""
    fitted = _fitted_textures(face_model, coefficients, views.photos)
    people = int(views.identities.max()) + 1
    sums = torch.zeros(people, fitted.shape[1]).index_add_(0, views.identities, fitted)
    return sums / torch.bincount(views.identities, minlength=people).unsqueeze(1)


def _top1(fitted: torch.Tensor, gallery: torch.Tensor, people: torch.Tensor) -> float:
    return round(float((torch.cdist(fitted, gallery).argmin(1) == people).float().mean()), 4)
