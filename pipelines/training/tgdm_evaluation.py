"""Held-out evaluation of a TGDM generator against trivial baselines, in PSNR and SSIM."""
from __future__ import annotations

import kornia
import torch

from ..generator.inputs import GeneratorInputs
from ..generator.sampler import SamplerSettings, TGDMSampler
from ..generator.tgdm import TGDMDenoiser
from ..generator.vae import LatentCodec
from ..images import dilate_masks
from ..morphable.model import MorphableModel
from .pair_warp import PairWarper
from .synthetic_faces import FaceViews

# Pixels around the heads (hair past the silhouette) that the composited generator output keeps.
HEAD_MARGIN = 4


def psnr(images: torch.Tensor, references: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image PSNR in dB of ``[B, H, W, C]`` images in 0..1, over the pixels where ``mask [B, H, W]``
    is 1 when given (NaN for an image whose mask is empty). Not kornia's ``metrics.psnr``: that one
    pools the whole batch into one number and takes no mask."""
    error = (images - references).pow(2).mean(-1)
    if mask is None:
        mse = error.flatten(1).mean(1)
    else:
        weight = mask.to(error.dtype)
        mse = (error * weight).flatten(1).sum(1) / weight.flatten(1).sum(1)
    return -10 * torch.log10(mse.clamp_min(1e-10))


def ssim(images: torch.Tensor, references: torch.Tensor, mask: torch.Tensor | None = None, window: int = 11) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004, Gaussian window of σ 1.5, averaged over channels) of
    ``[B, H, W, C]`` in 0..1, averaged over the windows that fit inside the image, or over those
    centred where ``mask`` is 1."""
    x, y = images.permute(0, 3, 1, 2).double(), references.permute(0, 3, 1, 2).double()
    index = kornia.metrics.ssim(x, y, window, max_val=1.0, padding="valid").mean(1)
    if mask is None:
        return index.flatten(1).mean(1).float()
    margin = window // 2
    weight = mask[:, margin : mask.shape[1] - margin, margin : mask.shape[2] - margin].double()
    return ((index * weight).flatten(1).sum(1) / weight.flatten(1).sum(1)).float()


def held_out_pairs(views: FaceViews) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed pairs: every view is a target once, its source the next view of the same identity."""
    per_identity = int((views.identities == views.identities[0]).sum())
    targets = torch.arange(len(views))
    sources = views.identities * per_identity + (targets + 1) % per_identity
    return sources, targets


def evaluate_generator(
    model: TGDMDenoiser, views: FaceViews, settings: SamplerSettings, vae: LatentCodec | None = None,
    pairs: tuple[torch.Tensor, torch.Tensor] | None = None, face_model: MorphableModel | None = None,
) -> dict[str, float]:
    """Generate every held-out target from its source and compare with the trivial answers: the render
    I_3d itself, the source photo unchanged and, given the data's ``face_model``, the source warped onto
    the target geometry as Render Textured Target composes it (relit and plain: the colour-matched
    render where the source did not see the face, a drawn mouth interior, the source photo around
    the face). ``pairs``
    (source, target indices) default to :func:`held_out_pairs`. A latent-mode model needs ``vae``; a
    warp-conditioned model needs ``face_model``.

    ``tgdm_composited`` is the generator's crop kept around both heads and the source photo elsewhere
    (the static wall both frames show), as Paste Back uses a crop. Besides the whole crop, PSNR and
    SSIM are reported on the target's face (``_face``) and PSNR on what the warp cannot know
    (``_unseen``: face pixels the source did not see, and wall pixels the source's head hid)."""
    sources, targets = held_out_pairs(views) if pairs is None else pairs
    source_photos = views.photos[sources]
    candidates = {"render": views.renders[targets], "source": source_photos}
    warped = valid = None
    if face_model is not None:
        warper = PairWarper(face_model, views.photos.shape[1])
        source_rows, target_rows = views.coefficients[sources], views.coefficients[targets]
        relit = warper.textured(source_photos, source_rows, target_rows)
        warped, valid = relit.warped, relit.valid
        candidates["warp_relit"] = relit.image
        candidates["warp_plain"] = warper.textured(source_photos, source_rows, target_rows, relight=False).image
    sampler = TGDMSampler(model, settings, vae)
    descriptors = getattr(views, "descriptors", None)
    candidates["tgdm"] = sampler.sample(GeneratorInputs(
        source=source_photos, renders=views.renders[targets], coefficients=views.coefficients[targets],
        identity=descriptors[sources] if model.config.identity_dim and descriptors is not None else None,
        target_surfaces=views.surfaces[targets], source_surface=views.surfaces[sources],
        warped_sources=warped if model.config.warp_condition else None,
        warp_masks=valid if model.config.warp_condition else None,
    ))
    truth = views.photos[targets]
    target_face = views.surfaces[targets].abs().sum(-1) > 0
    source_face = views.surfaces[sources].abs().sum(-1) > 0
    # What Paste Back does with a generated crop: the generator's pixels around either head (hair
    # included), the source photo's where both frames show the same static wall.
    heads = dilate_masks((target_face | source_face).float().unsqueeze(1), HEAD_MARGIN)
    heads = heads.squeeze(1).unsqueeze(-1)
    candidates["tgdm_composited"] = candidates["tgdm"] * heads + source_photos * (1 - heads)
    regions = {"": None, "_face": target_face}
    if valid is not None:
        regions["_unseen"] = (target_face & (valid < 0.5)) | (~target_face & source_face)
    results = {}
    for name, images in candidates.items():
        for suffix, mask in regions.items():
            results[f"psnr_{name}{suffix}"] = round(psnr(images, truth, mask).nanmean().item(), 3)
            if suffix != "_unseen":
                results[f"ssim_{name}{suffix}"] = round(ssim(images, truth, mask).nanmean().item(), 4)
    return results
