"""Held-out evaluation of dubbing: synthetic speakers whose template video says something else.

Every held-out clip comes as (target, template): the same speaker and head motion, the target's mouth
following its audio, the template's another clip's mouth. Dubbing the template with the target's
audio should give the target. Measures, over every frame of every held-out clip:

* **mouth-region PSNR / SSIM** against the target, in the box around both the target's and the
  template's lips and chin (so copying the template's mouth is penalised); PSNR of the squared error
  pooled over all frames, SSIM averaged over frames;
* **lip sync**: the Pearson correlation between the true jaw opening of the frame (the synthetic
  ground truth) and the *mouth interior* measured on the produced frame: the fraction of pixels in the
  template's box from the upper lip to the chin, between the mouth corners, that are teeth or cavity
  (luminance above ``TEETH_LUMINANCE`` or below ``CAVITY_LUMINANCE``; the synthetic skin lies between).
  It is read off pixels, not off any model's landmarks. (The first measure, the box's mean darkness,
  stopped working when the synthetic mouths gained bright teeth: on the true frames it correlated 0.30
  with the jaw opening, this one 0.96.)

Methods: the model with the true landmarks, with landmarks predicted from the audio by a landmark
model (frozen or jointly trained), the model with its landmark tokens dropped (ablation; a
``reference_base`` model then also starts from the first reference as it is, so no target landmark
reaches it), and the copies: the template frame; the first reference frame of the template video; the
reference frame nearest the target in mouth landmarks (of the same K the model sees, compared as the
model's base compares them); and, for ``reference_base`` models, the base alone: that reference warped
onto the true target landmarks inside the template, pasted back as the model's frames are (what the
model corrects, i.e. the model with no weights).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..audio.io import SAMPLE_RATE, Audio
from ..audio.landmark_model import MOUTH_POINTS, POSE_POINTS, LandmarkCompletionTransformer
from ..audio.landmarks import eye_frames, predict_mouth, to_normalised, to_pixels
from ..face.mouth import lower_face_input_mask, mouth_paste_mask
from ..generator.dubbing import DubbingDenoiser, crop_coordinates
from ..generator.dubbing_sampler import DubbingSampler, DubbingSettings
from ..generator.dubbing_video import INNER_LIPS, spread_references
from ..generator.mouth_warp import nearest_reference, reference_base
from .dubbing import DubbingClip
from .tgdm_evaluation import psnr, ssim

LIPS = list(range(48, 68))
CHIN = 8
UPPER_LIP = 51
BOX_PADDING = 2
TEETH_LUMINANCE = 0.75
CAVITY_LUMINANCE = 0.12


@dataclass
class Scores:
    psnr: float
    ssim: float
    lip_sync: float
    # the lip-sync correlation within each held-out pair, so two methods can be compared pair by pair
    lip_sync_per_pair: list[float]

    def as_dict(self) -> dict[str, float | list[float]]:
        return {"mouth_psnr": round(self.psnr, 3), "mouth_ssim": round(self.ssim, 4), "lip_sync_r": round(self.lip_sync, 3),
                "lip_sync_r_per_pair": [round(value, 3) for value in self.lip_sync_per_pair]}


def mouth_boxes(target: torch.Tensor, template: torch.Tensor, size: int) -> torch.Tensor:
    """``[F, 4]`` (x0, y0, x1, y1) integer boxes around the lips and chin of both landmark sets ``[F, 68, 2]``."""
    points = torch.cat([target[:, LIPS + [CHIN]], template[:, LIPS + [CHIN]]], dim=1)
    low = (points.amin(1) - BOX_PADDING).floor().clamp(0, size - 1)
    high = (points.amax(1) + BOX_PADDING).ceil().clamp(1, size)
    return torch.cat([low, high], dim=1).long()


def region_scores(images: torch.Tensor, truth: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame PSNR and SSIM of ``[F, S, S, 3]`` images inside ``boxes`` (SSIM: windows centred there)."""
    mask = torch.zeros(images.shape[:3])
    for frame, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        mask[frame, y0:y1, x0:x1] = 1
    return psnr(images, truth, mask), ssim(images, truth, mask)


def mouth_interior(images: torch.Tensor, template: torch.Tensor) -> torch.Tensor:
    """``[F]``: the fraction of teeth or cavity pixels between the template's mouth corners, from its upper lip to its chin."""
    luminance = images @ torch.tensor([0.299, 0.587, 0.114])
    interior = (luminance > TEETH_LUMINANCE) | (luminance < CAVITY_LUMINANCE)
    values = []
    for frame in range(images.shape[0]):
        points = template[frame]
        x0, x1 = int(points[48, 0]), int(points[54, 0]) + 1
        y0, y1 = int(points[UPPER_LIP, 1]), int(points[CHIN, 1]) + 1
        values.append(interior[frame, y0:y1, x0:x1].float().mean())
    return torch.stack(values)


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.float(), b.float()]))[0, 1])


def _paste(template: DubbingClip, generated: torch.Tensor, mouth: torch.Tensor) -> torch.Tensor:
    """Generated crops pasted into the template's frames with Dub Video's mouth mask."""
    size = generated.shape[1]
    frames = template.frames[torch.arange(template.count)].float()
    paste = mouth_paste_mask(template.landmarks, mouth[:, :17], size, feather=max(round(6 * size / 256), 1)).unsqueeze(-1)
    return frames * (1 - paste) + generated * paste


def _dub(model: DubbingDenoiser, settings: DubbingSettings, template: DubbingClip, reference_index: torch.Tensor,
         mouth: torch.Tensor) -> torch.Tensor:
    """The template's frames dubbed to the lip and jaw points ``mouth`` ``[F, 37, 2]`` (crop px), pasted
    back as Dub Video does."""
    size = model.config.pixel_size
    sampler = DubbingSampler(model, settings)
    frames = template.frames[torch.arange(template.count)].float()
    references = sampler.encode_references(frames[reference_index],
                                           crop_coordinates(template.landmarks[reference_index][:, list(MOUTH_POINTS)], size))
    generated = []
    for start in range(0, template.count, 32):
        rows = list(range(start, min(start + 32, template.count)))
        masks = lower_face_input_mask(template.landmarks[rows], size)
        generated.append(sampler.sample(frames[rows], masks, crop_coordinates(mouth[rows], size), references, rows))
    return _paste(template, torch.cat(generated), mouth)


def _warped_reference(template: DubbingClip, reference_index: torch.Tensor, mouth: torch.Tensor) -> torch.Tensor:
    """The ``reference_base`` model's base for every frame, pasted back: no weights involved."""
    frames = template.frames[torch.arange(template.count)].float()
    size = frames.shape[1]
    images = frames.permute(0, 3, 1, 2) * 2 - 1
    count = template.count
    mask = lower_face_input_mask(template.landmarks, size).unsqueeze(1)
    reference_points = crop_coordinates(template.landmarks[reference_index][:, list(MOUTH_POINTS)], size)
    base = reference_base(images * (1 - mask), mask, crop_coordinates(mouth, size),
                          images[reference_index].expand(count, -1, -1, -1, -1), reference_points.expand(count, -1, -1, -1))
    return _paste(template, ((base + 1) * 0.5).clamp(0, 1).permute(0, 2, 3, 1), mouth)


def template_references(template: DubbingClip, count: int) -> torch.Tensor:
    """The ``count`` reference frames Dub Video would pick from the template: spread over its mouth openings."""
    normalised = to_normalised(template.landmarks, eye_frames(template.landmarks))
    opening = (normalised[:, INNER_LIPS[1], 1] - normalised[:, INNER_LIPS[0], 1]).abs()
    return spread_references(opening, torch.ones(template.count, dtype=torch.bool), count)


def predicted_mouth(landmark_model: LandmarkCompletionTransformer, target: DubbingClip, template: DubbingClip,
                    reference_index: torch.Tensor) -> torch.Tensor:
    """Lip and jaw points ``[F, 37, 2]`` in the template's crops, predicted from the target's audio."""
    points = template.landmarks
    axes = eye_frames(points)
    normalised = to_normalised(points, axes)
    sets = reference_index[torch.arange(landmark_model.config.reference_sets) % len(reference_index)]
    mouth = predict_mouth(landmark_model.eval(), Audio(target.audio, SAMPLE_RATE), target.fps, normalised[sets],
                          normalised[:, list(POSE_POINTS)])
    return to_pixels(mouth.cpu(), axes)


def evaluate_dubbing(
    pairs: list[tuple[DubbingClip, DubbingClip]],
    models: dict[str, tuple[DubbingDenoiser, LandmarkCompletionTransformer | None]],
    ablation: DubbingDenoiser,
    settings: DubbingSettings | None = None,
    produced: dict[str, torch.Tensor] | None = None,
) -> dict[str, dict[str, float]]:
    """Scores of every method over every frame of the held-out ``pairs``. ``models`` maps a name to a
    denoiser and the landmark model that drives it (None: the true landmarks); ``ablation`` is scored
    with its landmark tokens dropped (true landmarks given, unused). ``produced``, if given, receives
    every method's frames ``[F, S, S, 3]`` (the pairs' frames one after another), to look at."""
    settings = settings or DubbingSettings(steps=10)
    copies = ["copy_template", "copy_reference", "copy_nearest_reference"]
    if ablation.config.reference_base:
        copies.append("warped_nearest_reference")
    outputs: dict[str, list[torch.Tensor]] = {name: [] for name in [*models, "no_landmarks", *copies, "truth"]}
    truths, templates, boxes, openings = [], [], [], []
    for target, template in pairs:
        size = ablation.config.pixel_size
        frames = template.frames[torch.arange(template.count)].float()
        reference_index = template_references(template, ablation.config.reference_frames)
        true_mouth = target.landmarks[:, list(MOUTH_POINTS)]
        for name, (model, landmark_model) in models.items():
            mouth = true_mouth if landmark_model is None else predicted_mouth(landmark_model, target, template, reference_index)
            outputs[name].append(_dub(model, settings, template, reference_index, mouth))
        # landmark guidance 0 is exactly the landmark-free prediction: free + 0·(full − free)
        outputs["no_landmarks"].append(_dub(ablation, replace(settings, landmark_guidance=0.0), template,
                                            reference_index, true_mouth))
        outputs["copy_template"].append(frames)
        outputs["copy_reference"].append(frames[reference_index[:1]].expand(template.count, -1, -1, -1))
        reference_points = template.landmarks[reference_index][:, list(MOUTH_POINTS)]
        nearest = nearest_reference(true_mouth, reference_points.expand(template.count, -1, -1, -1))
        outputs["copy_nearest_reference"].append(frames[reference_index[nearest]])
        if "warped_nearest_reference" in outputs:
            outputs["warped_nearest_reference"].append(_warped_reference(template, reference_index, true_mouth))
        truth = target.frames[torch.arange(target.count)].float()
        outputs["truth"].append(truth)
        truths.append(truth)
        templates.append(template.landmarks)
        boxes.append(mouth_boxes(target.landmarks, template.landmarks, size))
        openings.append(target.mouth[:, 0])
    truth, template_points, box, opening = map(torch.cat, (truths, templates, boxes, openings))
    pair_lengths = [len(pair_opening) for pair_opening in openings]
    results = {}
    for name, frames in outputs.items():
        images = torch.cat(frames)
        if produced is not None:
            produced[name] = images
        psnrs, ssims = region_scores(images, truth, box)
        # PSNR of the squared error pooled over every frame: a frame identical to the truth (both mouths
        # closed) would otherwise count 100 dB and swamp the mean
        pooled = -10 * torch.log10((10 ** (-psnrs / 10)).mean())
        interior = mouth_interior(images, template_points)
        per_pair = [correlation(measured, true) for measured, true in
                    zip(interior.split(pair_lengths), opening.split(pair_lengths), strict=True)]
        results[name] = Scores(float(pooled), float(ssims.mean()), correlation(interior, opening), per_pair).as_dict()
    return results


def evaluate_landmarks(
    pairs: list[tuple[DubbingClip, DubbingClip]],
    landmark_models: dict[str, LandmarkCompletionTransformer],
    reference_frames: int,
) -> dict[str, dict[str, float]]:
    """Each landmark model's lip and jaw points for the held-out pairs, before any image is made:
    ``point_error_px`` the mean distance to the target's true points (crop pixels), ``opening_r`` the
    correlation of the predicted inner-lip opening with the true jaw opening (the lip-sync ceiling the
    generator can reach from these points)."""
    upper, lower = (list(MOUTH_POINTS).index(point) for point in INNER_LIPS)
    results = {}
    for name, landmark_model in landmark_models.items():
        errors, openings, truths = [], [], []
        for target, template in pairs:
            mouth = predicted_mouth(landmark_model, target, template, template_references(template, reference_frames))
            errors.append((mouth - target.landmarks[:, list(MOUTH_POINTS)]).norm(dim=-1).mean(dim=-1))
            openings.append(mouth[:, lower, 1] - mouth[:, upper, 1])
            truths.append(target.mouth[:, 0])
        results[name] = {"point_error_px": round(float(torch.cat(errors).mean()), 4),
                         "opening_r": round(correlation(torch.cat(openings), torch.cat(truths)), 3)}
    return results
