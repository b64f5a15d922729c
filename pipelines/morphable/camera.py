"""Deep3DFaceRecon's pinhole camera, scaled to any square output size.

World space is the 3DMM's: x to the subject's left (image right), y up, z towards the camera,
which sits at z = ``distance`` looking down -z. Pixel coordinates put the origin at the top-left
corner of the image, x right, y down, so the centre of pixel (row i, column j) is (j + 0.5, i + 0.5).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

REFERENCE_SIZE = 224
REFERENCE_FOCAL = 1015.0
REFERENCE_DISTANCE = 10.0


@dataclass(frozen=True)
class PerspectiveCamera:
    image_size: int = REFERENCE_SIZE
    focal: float = REFERENCE_FOCAL
    distance: float = REFERENCE_DISTANCE

    @classmethod
    def deep3d(cls, image_size: int = REFERENCE_SIZE) -> PerspectiveCamera:
        """The Deep3DFaceRecon camera (focal 1015 and centre 112 at 224 px) for another output size."""
        return cls(image_size=image_size, focal=REFERENCE_FOCAL * image_size / REFERENCE_SIZE)

    @property
    def center(self) -> float:
        return self.image_size / 2.0

    def depth(self, world: torch.Tensor) -> torch.Tensor:
        """Distance along the viewing axis, ``[..., N]``."""
        return self.distance - world[..., 2]

    def project(self, world: torch.Tensor) -> torch.Tensor:
        """World points ``[..., 3]`` to pixel coordinates ``[..., 2]``."""
        depth = self.depth(world)
        u = self.focal * world[..., 0] / depth + self.center
        v = self.center - self.focal * world[..., 1] / depth
        return torch.stack([u, v], dim=-1)

    def to_screen(self, world: torch.Tensor) -> torch.Tensor:
        """``[..., 3]`` of (u, v, depth): what the rasterizer consumes. A view of coordinate planes
        ``[3, ...]``, which the rasterizer and interpolation read without a copy; the same float32
        operations as :meth:`project` and :meth:`depth`."""
        planes = world.new_empty((3, *world.shape[:-1]))
        u, v, depth = planes
        torch.neg(world[..., 2], out=depth).add_(self.distance)
        torch.mul(world[..., 0], self.focal, out=u).div_(depth).add_(self.center)
        torch.mul(world[..., 1], self.focal, out=v).div_(depth).neg_().add_(self.center)
        return planes.movedim(0, -1)

    def view_directions(self, world: torch.Tensor) -> torch.Tensor:
        """Unit vectors from points towards the camera centre, ``[..., 3]``."""
        eye = world.new_tensor([0.0, 0.0, self.distance])
        return torch.nn.functional.normalize(eye - world, dim=-1)
