"""Face swap as TGDM does it (the UniFace++ paradigm): the same conditioning as reenactment with the
roles changed. Identity and skin (3DMM identity and texture, the photo's texture warped onto the
geometry, the ArcFace identity token) come from the swap source; expression, pose, gaze and light from
each target frame; the generated face is pasted back into the target frame, colour-matched to it,
and everything outside the face stays the target's.

Several photos of the swap source are one person: their identity and texture coefficients and their
descriptors are averaged, and each target frame takes its warp and texture attention from the photo
whose head pose is nearest (the photo that shows most of what the target frame shows).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import TalkingFaceError
from ..face.alignment import FIT_CROP_SIZE, face_mask, match_colours, paste_back, warp_images
from ..face.analysis import DetectedFace
from ..face.faces import DEFAULT_FPS, AnalyzedFaces, faces_from_track
from ..face.fit import fit_faces
from ..face.motion import PRESETS, mix_coefficients
from ..morphable.camera import PerspectiveCamera
from ..morphable.coefficients import FaceCoefficients
from ..morphable.model import MorphableModel
from ..render.mouth import MouthLook
from ..render.renderer import FaceRenderer, RenderMaps
from ..render.texture_transfer import TextureTransfer
from ..render.textured_target import DRAWN_MOUTH, TexturedTarget, textured_from_render
from ..video import frame_chunks
from .inputs import GeneratorInputs, flat_coefficients
from .sampler import TGDMSampler

# Paste-back feathering is given in pixels of a 256-px crop and scaled to the working resolution.
FEATHER_REFERENCE_SIZE = 256


@dataclass
class SwapSource:
    """The swap source, ready for any number of target frames."""

    crops: torch.Tensor  # [S, R, R, 3] the source photos in the fitting framing, at the working resolution
    coefficients: FaceCoefficients  # [S] each photo's own fit (where the photo shows each surface point)
    person: FaceCoefficients  # [1] identity and texture averaged over the photos
    descriptor: torch.Tensor | None  # [E] the averaged identity descriptor (ArcFace), unit length

    @property
    def photos(self) -> int:
        return self.crops.shape[0]


def swap_source(faces: AnalyzedFaces, coefficients: FaceCoefficients, resolution: int) -> SwapSource:
    """The swap source from the analysed photo(s) of one person and their fitted coefficients."""
    if coefficients.frames != faces.frames:
        raise TalkingFaceError(
            f"{coefficients.frames} source_coefficients rows for {faces.frames} analysed source photos: "
            "fit the same source faces you connect"
        )
    rows = torch.nonzero(faces.detected).flatten()
    if rows.numel() == 0:
        raise TalkingFaceError(
            "no face was found in the source image(s): use a photo with a clearly visible face, or lower "
            "detection_threshold in Load Face Analyzer"
        )
    transforms = faces.fit_transforms[rows] * (resolution / FIT_CROP_SIZE)
    crops = warp_images(faces.images[rows], transforms, resolution).clamp(0.0, 1.0)
    fitted = coefficients[rows].to("cpu", torch.float32)
    person = fitted[0].replace(
        identity=fitted.identity.mean(0, keepdim=True), texture=fitted.texture.mean(0, keepdim=True)
    )
    descriptor = None
    if faces.embeddings is not None:
        descriptor = F.normalize(faces.embeddings[rows].float().mean(0), dim=0)
    return SwapSource(crops, fitted, person, descriptor)


def swap_coefficients(person: FaceCoefficients, targets: FaceCoefficients) -> FaceCoefficients:
    """The source's identity and texture in every target frame; expression, pose, gaze and light stay the target's."""
    return mix_coefficients(person, targets, PRESETS["swap"])


def nearest_photo(source_rotation: torch.Tensor, target_rotation: torch.Tensor) -> torch.Tensor:
    """For each target frame ``[T, 3]`` (Euler angles), the source photo ``[S, 3]`` with the nearest head pose."""
    return torch.cdist(target_rotation.float(), source_rotation.float()).argmin(1)


@dataclass(frozen=True)
class SwapSettings:
    """``resolution`` is the working crop size without a generator (a generator works at its own size);
    ``erode`` and ``blur`` are pixels of a 256-px crop; ``colour_match`` 0..1 blends the face towards
    the target face's colour mean and spread; ``chunk_size`` frames are conditioned, generated and
    pasted at once, so memory does not grow with the video."""

    resolution: int = 256
    relight: bool = True
    mouth: MouthLook | None = DRAWN_MOUTH
    erode: int = 4
    blur: int = 8
    colour_match: float = 0.5
    chunk_size: int = 16

    def __post_init__(self) -> None:
        if not 0.0 <= self.colour_match <= 1.0:
            raise TalkingFaceError(f"colour_match must be between 0 and 1, got {self.colour_match}")
        if self.chunk_size < 1 or self.resolution < 16:
            raise TalkingFaceError("chunk_size must be at least 1 and resolution at least 16")


@dataclass
class SwapResult:
    images: torch.Tensor  # [T, H, W, 3] the target frames with the swapped face
    masks: torch.Tensor  # [T, H, W] where each frame was replaced (0 in frames passed through)
    swapped: torch.Tensor  # [T] bool: frames whose face was swapped (the others had no face)
    visible_fraction: torch.Tensor  # [T] share of the swapped face that a source photo saw (0 when passed through)


def check_same_face_model(face_model: MorphableModel, **coefficients: FaceCoefficients) -> None:
    for name, coeffs in coefficients.items():
        if coeffs.dims != face_model.dims:
            raise TalkingFaceError(
                f"{name} were fitted with a face model of {coeffs.dims} but {face_model.name} has {face_model.dims}: "
                "fit the source and the target with the same Load 3DMM model and connect that model here"
            )
        if not torch.isfinite(coeffs.to_flat()).all():
            raise TalkingFaceError(f"{name} hold NaN or infinite values; check the Fit 3DMM that made them")


@torch.no_grad()
def swap_faces(
    face_model: MorphableModel,
    source: SwapSource,
    target_faces: AnalyzedFaces,
    target_coefficients: FaceCoefficients,
    settings: SwapSettings = SwapSettings(),
    sampler: TGDMSampler | None = None,
    on_frames: Callable[[int], None] | None = None,
    check_interrupted: Callable[[], None] | None = None,
) -> SwapResult:
    """Swap the source's face into every target frame where the target face was found; frames without
    it (``target_faces.detected`` False) are passed through unchanged. Without ``sampler`` the face is
    the source photo warped onto the swapped geometry (no trained weights); with it, TGDM paints it,
    conditioned on that warp, the I_3d render, the coefficients and, when the generator has an
    identity token, the source's descriptor. ``source.crops`` must be at the working resolution (the
    generator's pixel size, else ``settings.resolution``). ``on_frames(frames_done)`` runs after every chunk."""
    check_same_face_model(face_model, source_coefficients=source.coefficients, target_coefficients=target_coefficients)
    frames = target_faces.frames
    if target_coefficients.frames != frames:
        raise TalkingFaceError(
            f"{target_coefficients.frames} target_coefficients rows for {frames} analysed target frames: "
            "fit the same target faces you connect"
        )
    resolution = sampler.model.config.pixel_size if sampler is not None else settings.resolution
    if source.crops.shape[1] != resolution:
        raise TalkingFaceError(f"the source crops are {source.crops.shape[1]} px but the swap works at {resolution} px")
    descriptor = _identity_token(source, sampler)
    device = face_model.mean_shape.device
    renderer = FaceRenderer(face_model, PerspectiveCamera.deep3d(resolution))
    transfer = TextureTransfer(renderer)
    source_view = transfer.prepare_source(source.coefficients.to(device), source.crops.to(device))
    source_surfaces = renderer.render(source.coefficients.to(device)).surface.cpu() if sampler is not None else None
    swapped = swap_coefficients(source.person, target_coefficients.to("cpu", torch.float32))
    picks = nearest_photo(source.coefficients.rotation, swapped.rotation)
    present = target_faces.detected.bool()
    images = target_faces.images.float().clone()
    masks = images.new_zeros(images.shape[:3])
    visible = torch.zeros(frames)
    scale = resolution / FEATHER_REFERENCE_SIZE
    erode, blur = round(settings.erode * scale), round(settings.blur * scale)
    for chunk in frame_chunks(frames, settings.chunk_size):
        if check_interrupted is not None:
            check_interrupted()
        rows = torch.arange(chunk.start, chunk.stop)[present[chunk]]
        if rows.numel():
            coeffs = swapped[rows].to(device)
            maps, covered, vertices = renderer.render_with_coverage(coeffs)
            textured = textured_from_render(transfer, source_view.take(picks[rows].to(device)), coeffs, maps, covered,
                                            vertices, settings.relight, settings.mouth)
            if sampler is None:
                faces = textured.image.cpu()
            else:
                faces = _generate(sampler, source, source_surfaces, picks[rows], coeffs, textured, maps, descriptor,
                                  check_interrupted)
            transforms = target_faces.fit_transforms[rows] * (resolution / FIT_CROP_SIZE)
            frame_images = target_faces.images[rows].float()
            feathered = face_mask(textured.mask.cpu(), erode, blur)
            if settings.colour_match > 0:
                originals = warp_images(frame_images, transforms, resolution)
                matched = match_colours(faces, originals, feathered)
                faces = torch.lerp(faces, matched, settings.colour_match)
            pasted, mask = paste_back(frame_images, faces, transforms, feathered)
            images[rows] = pasted
            masks[rows] = mask
            visible[rows] = textured.visible_fraction.cpu().float()
        if on_frames is not None:
            on_frames(chunk.stop)
    return SwapResult(images, masks, present.clone(), visible)


def swap_every_face(
    face_model: MorphableModel,
    source: SwapSource,
    images: torch.Tensor,
    tracks: list[list[DetectedFace | None]],
    settings: SwapSettings = SwapSettings(),
    sampler: TGDMSampler | None = None,
    fps: float = DEFAULT_FPS,
    temporal_smoothing: float = 0.5,
    on_frames: Callable[[int], None] | None = None,
    check_interrupted: Callable[[], None] | None = None,
) -> SwapResult:
    """Swap the source's face onto every person of ``images``: each track (from
    :func:`~..face.selection.every_track`, one person each) is aligned, fitted (fast video mode,
    ``temporal_smoothing`` at ``fps``) and swapped in turn on the frames the previous people's swaps made;
    a person's frames without them pass through. ``on_frames(frames_done)`` counts the frames of every
    track so far (``len(tracks) × frames`` in all)."""
    frames = images.shape[0]
    result = SwapResult(images, images.new_zeros(images.shape[:3]), torch.zeros(frames, dtype=torch.bool),
                        torch.zeros(frames))
    resolution = sampler.model.config.pixel_size if sampler is not None else settings.resolution
    for done_tracks, track in enumerate(tracks):
        def on_track_frames(done: int, before: int = done_tracks * frames) -> None:
            if on_frames is not None:
                on_frames(before + done)

        faces = faces_from_track(result.images, track, "pass_through", resolution, fps=fps)
        fit = fit_faces(face_model, faces, video_mode="fast", smoothing=temporal_smoothing, fps=fps,
                        batch_size=settings.chunk_size)
        person = swap_faces(face_model, source, faces, fit.coefficients, settings, sampler, on_track_frames,
                            check_interrupted)
        result = SwapResult(
            person.images, torch.maximum(result.masks, person.masks), result.swapped | person.swapped,
            # A frame's figure is its least-seen person's: the warning it feeds is about the worst face.
            torch.where(person.swapped & result.swapped, torch.minimum(person.visible_fraction, result.visible_fraction),
                        torch.where(person.swapped, person.visible_fraction, result.visible_fraction)),
        )
    return result


def _identity_token(source: SwapSource, sampler: TGDMSampler | None) -> torch.Tensor | None:
    if sampler is None or not sampler.model.config.identity_dim:
        return None
    width = sampler.model.config.identity_dim
    if source.descriptor is None:
        raise TalkingFaceError(
            f"this generator takes the source's identity descriptor ({width} values) and the source faces have none: "
            "analyse the source photo with an insightface pack (its ArcFace model gives the descriptor)"
        )
    if source.descriptor.numel() != width:
        raise TalkingFaceError(
            f"this generator was trained with {width}-value identity descriptors but the source faces carry "
            f"{source.descriptor.numel()}: analyse the source with the face analyzer the generator was trained with"
        )
    return source.descriptor.view(1, -1)


def _generate(
    sampler: TGDMSampler, source: SwapSource, source_surfaces: torch.Tensor, picks: torch.Tensor,
    coeffs: FaceCoefficients, textured: TexturedTarget, maps: RenderMaps, descriptor: torch.Tensor | None,
    check_interrupted: Callable[[], None] | None,
) -> torch.Tensor:
    config = sampler.model.config
    shared = source.photos == 1
    inputs = GeneratorInputs(
        source=source.crops[:1] if shared else source.crops[picks],
        renders=maps.image.cpu(),
        coefficients=flat_coefficients(coeffs).cpu(),
        target_surfaces=maps.surface.cpu(),
        source_surface=source_surfaces[:1] if shared else source_surfaces[picks],
        identity=descriptor,
        warped_sources=textured.warped.cpu() if config.warp_condition else None,
        warp_masks=textured.valid.cpu() if config.warp_condition else None,
    )
    return sampler.sample(inputs, check_interrupted=check_interrupted).float()
