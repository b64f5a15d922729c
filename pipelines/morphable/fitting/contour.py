"""The jaw contour: which vertices a jaw landmark may slide to as the head turns, and along the outline.

The jaw landmarks 0–16 (except the chin, 8) that a detector returns lie on the visible outline of
the face, which slides over the surface as the head turns; and where along the outline each one
sits is a convention of the annotators (roughly even spacing from ear to chin), not a point of the
surface. So each of them has a short stretch of the outline: a few heights (*stations*) along the
jaw from halfway towards the previous landmark to halfway towards the next one, and at every
station a horizontal band of candidate vertices between the outline and the face's midline (in
front of the station). At every round the fitter takes, per station, the candidate that projects
furthest outwards (the silhouette point at that height for the current pose), and then the point
of the polyline through these silhouette points that lies nearest the observed landmark, a blend of
two neighbouring vertices (:meth:`~.projection.LandmarkProjection.select_contour`), much as eos does
with its contour line. Its residual is then the landmark's distance to the model's outline.
Without observations, or at a frontal pose with the landmark exactly where the model puts it,
this is the landmark vertex itself (up to perspective, which brings nearer points slightly further
out).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..model import NUM_LANDMARKS, MorphableModel

# iBUG-68 jaw line from the subject's right ear (0) over the chin (8) to the left ear (16).
JAW_LINE = tuple(range(17))
JAW_CONTOUR = tuple(i for i in JAW_LINE if i != 8)
# iBUG points on the facial midline: chin, nose bridge and tip, lip centres.
MIDLINE = (8, 27, 28, 29, 30, 33, 51, 57, 62, 66)
# Stations per jaw landmark, evenly spread from halfway to the previous landmark to halfway to the
# next (an odd count, so the middle station is the landmark itself).
STATIONS = 9


@dataclass
class ContourCandidates:
    """The model rows the fit uses and, per jaw landmark and station, its candidates.

    ``rows`` are vertex ids ``[U]``; ``landmark_slots`` ``[68]`` index into them;
    ``candidate_slots`` ``[16, S, K]`` list the candidates of each jaw landmark's stations (padded
    with the station's own vertex; station ``S // 2`` is the landmark's height) and ``sides``
    ``[16]`` the outward direction (±1) of each landmark."""

    rows: torch.Tensor
    landmark_slots: torch.Tensor
    candidate_slots: torch.Tensor
    sides: torch.Tensor

    @property
    def middle_station(self) -> int:
        return self.candidate_slots.shape[1] // 2

    @classmethod
    def for_model(cls, model: MorphableModel, stations: int = STATIONS) -> ContourCandidates:
        mean = model.mean_shape
        ids = model.landmark_ids
        # A band about one mesh edge tall holds roughly one row of vertices across the face.
        tri = model.triangles
        edges = mean[tri[:, [1, 2, 0]]] - mean[tri]
        band = 0.75 * edges.norm(dim=-1).median()
        midline = mean[ids[list(MIDLINE)], 0].mean()
        jaw = mean[ids[list(JAW_LINE)]]  # [17, 3]
        # The jaw line extended by one step past each ear, so the end landmarks slide both ways too.
        line = torch.cat([2 * jaw[:1] - jaw[1:2], jaw, 2 * jaw[-1:] - jaw[-2:-1]])
        fractions = torch.linspace(-0.5, 0.5, stations, device=mean.device)
        candidate_lists, sides = [], []
        for index in JAW_CONTOUR:
            point = line[index + 1]
            side = 1.0 if point[0] >= midline else -1.0
            outward = side * (mean[:, 0] - midline)
            for fraction in fractions.tolist():
                neighbour = line[index + 1 + (1 if fraction > 0 else -1)]
                if fraction == 0:
                    station = int(ids[index])
                else:
                    # The skin vertex nearest the point that far along the jaw line.
                    along = point + abs(fraction) * (neighbour - point)
                    station = int((mean - along).norm(dim=-1).argmin())
                anchor = mean[station]
                in_band = (
                    ((mean[:, 1] - anchor[1]).abs() <= band)
                    & (outward >= 0)
                    & (outward <= side * (anchor[0] - midline) + band)
                    & (mean[:, 2] >= anchor[2] - band)
                )
                found = torch.nonzero(in_band).flatten()
                candidate_lists.append(torch.cat([found.new_tensor([station]), found[found != station]]))
            sides.append(side)
        rows, inverse = torch.unique(torch.cat([ids, *candidate_lists]), return_inverse=True)
        landmark_slots = inverse[:NUM_LANDMARKS]
        width = max(len(c) for c in candidate_lists)
        candidate_slots = torch.empty(len(candidate_lists), width, dtype=torch.long, device=mean.device)
        offset = NUM_LANDMARKS
        for row, candidates in enumerate(candidate_lists):
            slots = inverse[offset : offset + len(candidates)]
            candidate_slots[row] = slots[0]
            candidate_slots[row, : len(candidates)] = slots
            offset += len(candidates)
        return cls(rows, landmark_slots, candidate_slots.view(len(JAW_CONTOUR), stations, width), mean.new_tensor(sides))
