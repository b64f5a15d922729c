"""The jaw contour: which vertices a jaw landmark may slide to as the head turns.

The jaw landmarks 0–16 (except the chin, 8) that a detector returns lie on the visible outline of
the face, which slides over the surface as the head turns. For each of them the fitter keeps a
horizontal band of candidate vertices between the landmark vertex and the face's midline (in front
of the landmark vertex), and at every round picks the candidate that projects furthest outwards
(:meth:`~.projection.LandmarkProjection.select_contour`): the silhouette point at that height for
the current pose. At a frontal pose this is the landmark vertex itself (up to perspective, which
brings nearer points slightly further out).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..model import NUM_LANDMARKS, MorphableModel

# iBUG-68 jaw line from the subject's right ear (0) over the chin (8) to the left ear (16).
JAW_CONTOUR = tuple(i for i in range(17) if i != 8)
# iBUG points on the facial midline: chin, nose bridge and tip, lip centres.
MIDLINE = (8, 27, 28, 29, 30, 33, 51, 57, 62, 66)


@dataclass
class ContourCandidates:
    """The model rows the fit uses and, per jaw landmark, its candidates.

    ``rows`` are vertex ids ``[U]``; ``landmark_slots`` ``[68]`` index into them; ``candidate_slots``
    ``[16, K]`` list each jaw landmark's candidates (padded with its own slot) and ``sides`` ``[16]``
    the outward direction (±1) of each."""

    rows: torch.Tensor
    landmark_slots: torch.Tensor
    candidate_slots: torch.Tensor
    sides: torch.Tensor

    @classmethod
    def for_model(cls, model: MorphableModel) -> ContourCandidates:
        mean = model.mean_shape
        ids = model.landmark_ids
        # A band about one mesh edge tall holds roughly one row of vertices across the face.
        tri = model.triangles
        edges = mean[tri[:, [1, 2, 0]]] - mean[tri]
        band = 0.75 * edges.norm(dim=-1).median()
        midline = mean[ids[list(MIDLINE)], 0].mean()
        candidate_lists, sides = [], []
        for index in JAW_CONTOUR:
            point = mean[ids[index]]
            side = 1.0 if point[0] >= midline else -1.0
            outward = side * (mean[:, 0] - midline)
            in_band = (
                ((mean[:, 1] - point[1]).abs() <= band)
                & (outward >= 0)
                & (outward <= side * (point[0] - midline) + band)
                & (mean[:, 2] >= point[2] - band)
            )
            found = torch.nonzero(in_band).flatten()
            candidate_lists.append(torch.cat([ids[index : index + 1], found[found != ids[index]]]))
            sides.append(side)
        rows, inverse = torch.unique(torch.cat([ids, *candidate_lists]), return_inverse=True)
        landmark_slots = inverse[:NUM_LANDMARKS]
        width = max(len(c) for c in candidate_lists)
        contour_slots = torch.tensor(JAW_CONTOUR, device=mean.device)
        candidate_slots = landmark_slots[contour_slots].unsqueeze(1).repeat(1, width)
        offset = NUM_LANDMARKS
        for row, candidates in enumerate(candidate_lists):
            candidate_slots[row, : len(candidates)] = inverse[offset : offset + len(candidates)]
            offset += len(candidates)
        return cls(rows, landmark_slots, candidate_slots, mean.new_tensor(sides))
