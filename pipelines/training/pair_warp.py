"""The warped-source condition for training pairs: each pair's source photo carried onto its
target's geometry with the face model the data was fitted with, exactly as Render Textured Target
gives it at inference (relit, validity mask)."""
from __future__ import annotations

import torch

from ..generator.inputs import generator_rows_to_coefficients
from ..morphable.camera import PerspectiveCamera
from ..morphable.coefficients import FaceCoefficients
from ..morphable.model import MorphableModel
from ..render.renderer import FaceRenderer
from ..render.texture_transfer import SourceView, TextureTransfer
from ..render.textured_target import TexturedTarget, render_textured_target


class PairWarper:
    """Warps source photos ``[B, H, W, 3]`` onto target coefficient rows (the generator's flat
    257 + gaze layout, one source row and one target row per pair) at the photos' size."""

    def __init__(self, face_model: MorphableModel, size: int) -> None:
        self.face_model = face_model
        self.transfer = TextureTransfer(FaceRenderer(face_model, PerspectiveCamera.deep3d(size)))

    @torch.no_grad()
    def __call__(
        self, source_photos: torch.Tensor, source_rows: torch.Tensor, target_rows: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The relit warped sources ``[B, H, W, 3]`` (0 where not valid) and validity masks ``[B, H, W]``."""
        source, target = self._coefficients(source_photos, source_rows, target_rows)
        warped = self.transfer.warp(source, target)
        return warped.image, warped.valid

    @torch.no_grad()
    def textured(
        self, source_photos: torch.Tensor, source_rows: torch.Tensor, target_rows: torch.Tensor, relight: bool = True
    ) -> TexturedTarget:
        """What Render Textured Target makes of each pair: the no-weights reenactment."""
        source, target = self._coefficients(source_photos, source_rows, target_rows)
        return render_textured_target(self.transfer, source, target, relight)

    def _coefficients(
        self, source_photos: torch.Tensor, source_rows: torch.Tensor, target_rows: torch.Tensor
    ) -> tuple[SourceView, FaceCoefficients]:
        dims = self.face_model.dims
        source = self.transfer.prepare_source(generator_rows_to_coefficients(source_rows, dims), source_photos.float())
        return source, generator_rows_to_coefficients(target_rows, dims)
