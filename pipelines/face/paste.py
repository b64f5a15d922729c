"""Paste Back over a video: generated crops blended into the analysed frames, chunk by chunk."""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..video import frame_chunks
from .alignment import apply_transforms, face_mask, lower_face_mask, match_colours, paste_back, warp_images
from .faces import AnalyzedFaces

PASTE_REGIONS = ("full_face", "lower_face")
PASTE_CHUNK = 16


def feathered_paste_mask(faces: AnalyzedFaces, index: torch.Tensor, transforms: torch.Tensor, render_mask: torch.Tensor,
                         region: str, erode: int, blur: int, untouched: torch.Tensor) -> torch.Tensor:
    """The blend mask of the crops of frames ``index``: the render mask (nothing where a frame is left
    untouched), cut below the nose for ``lower_face``, eroded and feathered."""
    mask = render_mask.float() * (~untouched).float().view(-1, 1, 1)
    if region == "lower_face" and not untouched.all():
        landmarks = apply_transforms(transforms, faces.require_landmarks68()[index])
        mask = lower_face_mask(mask, landmarks, feather=max(blur, 1))
    return face_mask(mask, erode, blur)


def paste_faces(
    faces: AnalyzedFaces, generated: torch.Tensor, render_masks: torch.Tensor, region: str, erode: int, blur: int,
    colour_match: bool, on_frames: Callable[[int], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every generated square crop ``[T, s, s, 3]`` pasted into its analysed frame (or, with one analysed
    frame, each into that one) where ``render_masks`` (``[1 or T, h, w]``, any size) say; ``erode`` and
    ``blur`` are pixels of the analysed crop. ``on_frames(done)`` runs after every chunk. Returns the
    frames and the masks of what was replaced."""
    frames, size = generated.shape[0], generated.shape[1]
    if render_masks.shape[1:] != generated.shape[1:3]:
        render_masks = F.interpolate(render_masks.unsqueeze(1).float(), size=(size, size), mode="bilinear",
                                     align_corners=False).squeeze(1)
    # Crops of another size than analysed (e.g. 512 from a 256 analysis) share the framing: scale the transforms.
    scale = size / faces.crop_size
    # erode and blur are pixels of the analysed crop, so a 64-px generator is feathered like a 256-px one
    erode, blur = round(erode * scale), round(blur * scale)
    outputs, masks = [], []
    for chunk in frame_chunks(frames, PASTE_CHUNK):
        count = chunk.stop - chunk.start
        index = torch.arange(chunk.start, chunk.stop) if faces.frames > 1 else torch.zeros(count, dtype=torch.long)
        transforms = faces.crop_transforms[index] * scale
        chunk_masks = render_masks[chunk] if render_masks.shape[0] > 1 else render_masks.expand(count, -1, -1)
        # Frames without a face under the 'pass_through' policy keep their original pixels exactly.
        untouched = faces.untouched[index]
        feathered = feathered_paste_mask(faces, index, transforms, chunk_masks, region, erode, blur, untouched)
        crops = generated[chunk].float()
        if colour_match:
            originals = warp_images(faces.images[index], transforms, size)
            crops = match_colours(crops, originals, feathered)
        pasted, mask = paste_back(faces.images[index], crops, transforms, feathered)
        pasted[untouched] = faces.images[index][untouched].to(pasted.dtype)
        outputs.append(pasted)
        masks.append(mask)
        if on_frames is not None:
            on_frames(chunk.stop)
    return torch.cat(outputs), torch.cat(masks)
