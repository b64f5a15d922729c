"""The per-face parameter vector of the landmark fit: ``rotation (3) | translation (3) | identity |
expression``, and which columns belong to which coefficient group."""
from __future__ import annotations

from collections.abc import Collection

import torch

from ..coefficients import CoefficientDims, FaceCoefficients

POSE_GROUPS = ("rotation", "translation")
ALL_GROUPS = frozenset({"rotation", "translation", "identity", "expression"})


class ParameterLayout:
    """Where each group sits in the parameter vector of a model with ``dims``."""

    def __init__(self, dims: CoefficientDims, device: torch.device) -> None:
        self.dims = dims
        self.device = device
        self.size = 6 + dims.identity + dims.expression
        self._column_groups = [""] * self.size
        for group in ALL_GROUPS:
            span = self.slice(group)
            self._column_groups[span] = [group] * (span.stop - span.start)

    def slice(self, group: str) -> slice:
        n_id = self.dims.identity
        return {
            "rotation": slice(0, 3),
            "translation": slice(3, 6),
            "identity": slice(6, 6 + n_id),
            "expression": slice(6 + n_id, self.size),
        }[group]

    def columns(self, groups: Collection[str]) -> torch.Tensor:
        """The sorted column indices of ``groups``."""
        columns = [torch.arange(self.size)[self.slice(g)] for g in groups]
        if not columns:
            return torch.zeros(0, dtype=torch.long, device=self.device)
        return torch.cat(columns).sort().values.to(self.device)

    def groups_of(self, columns: torch.Tensor) -> set[str]:
        return {self._column_groups[column] for column in columns.tolist()}

    def from_coefficients(self, coefficients: FaceCoefficients, params: torch.Tensor) -> None:
        """Write the groups of ``coefficients`` into ``params`` ``[B, size]``."""
        for group in ALL_GROUPS:
            params[:, self.slice(group)] = getattr(coefficients, group)

    def to_coefficients(self, params: torch.Tensor, base: FaceCoefficients) -> FaceCoefficients:
        """``base`` with its fitted groups replaced by those of ``params``."""
        return base.replace(**{group: params[:, self.slice(group)].contiguous() for group in ALL_GROUPS})
