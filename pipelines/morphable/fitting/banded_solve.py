"""The linear algebra of the smoothed video fit: the normal equations are block pentadiagonal in the
frames (the landmark acceleration couples each frame with two neighbours on either side) with a
dense identity border, solved exactly by block elimination (Schur complement on the identity)."""
from __future__ import annotations

import torch


def second_difference_band(anchors: int, frames: int, device: torch.device) -> torch.Tensor:
    """Diagonal, first and second off-diagonal of D₂ᵀD₂ for the window's frames ``[3, T]`` (the
    off-diagonals zero padded at the end), D₂ the second differences of anchors + frames."""
    nodes = anchors + frames
    second = torch.zeros(max(nodes - 2, 0), nodes, dtype=torch.float64, device=device)
    for offset, value in enumerate((1.0, -2.0, 1.0)):
        second.diagonal(offset).fill_(value)
    gram = (second.T @ second)[anchors:, anchors:]
    band = torch.zeros(3, frames, dtype=torch.float64, device=device)
    for offset in range(3):
        diagonal = gram.diagonal(offset)
        band[offset, : diagonal.numel()] = diagonal
    return band


def second_difference_transpose(differences: torch.Tensor, frames: int) -> torch.Tensor:
    """D₂ᵀ·d for second differences ``d [K, ...]`` of a sequence whose last ``frames`` entries are
    the window's: the rows of those frames, ``[frames, ...]``."""
    padding = differences.new_zeros(2, *differences.shape[1:])
    padded = torch.cat([padding, differences, padding])
    return (padded[2:] - 2 * padded[1:-1] + padded[:-2])[-frames:]


def bordered_banded_solve(
    frame_hessian: torch.Tensor,
    next_coupling: torch.Tensor,
    skip_coupling: torch.Tensor,
    frame_gradient: torch.Tensor,
    coupling: torch.Tensor,
    identity_hessian: torch.Tensor,
    identity_gradient: torch.Tensor,
    damping: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve the damped system [[A, C], [Cᵀ, K]]·[δf; δi] = −[g_f; g_i] exactly.

    A is block pentadiagonal: diagonal blocks ``frame_hessian [T, n, n]``, blocks
    ``next_coupling [T−1, n, n]`` between frames t and t+1 and ``skip_coupling [T−2, n, n]``
    between t and t+2 (their transposes below the diagonal). C stacks ``coupling [T, n, m]``.
    Pairs of frames make A block tridiagonal, solved by block elimination in O(T·n²·(n + m));
    the m × m Schur complement K − CᵀA⁻¹C then gives the identity step. Returns NaN steps if
    the system is not positive definite.
    """
    frames, n = frame_gradient.shape
    m = identity_gradient.numel()
    blocks = frame_hessian + torch.diag_embed(damping * frame_hessian.diagonal(dim1=-2, dim2=-1))
    right = torch.cat([frame_gradient.unsqueeze(-1), coupling], -1)  # [T, n, 1 + m]
    if not next_coupling.any() and not skip_coupling.any():
        factors, info = torch.linalg.cholesky_ex(blocks)
        solved = torch.cholesky_solve(right, factors)
        failed = bool((info != 0).any())
    else:
        solved, failed = paired_tridiagonal_solve(blocks, next_coupling, skip_coupling, right)
    if failed:
        nan = frame_gradient.new_full((), float("nan"))
        return nan.expand(frames, n), nan.expand(m)
    gradient_solved, coupling_solved = solved[..., 0], solved[..., 1:]
    if m == 0:
        return -gradient_solved, identity_gradient
    schur = identity_hessian - torch.einsum("tnm,tnk->mk", coupling, coupling_solved)
    schur = schur + torch.diag(damping * identity_hessian.diagonal())
    schur_rhs = -identity_gradient + torch.einsum("tnm,tn->m", coupling, gradient_solved)
    factor, info = torch.linalg.cholesky_ex(schur)
    if int(info) != 0:
        nan = frame_gradient.new_full((), float("nan"))
        return nan.expand(frames, n), nan.expand(m)
    identity_step = torch.cholesky_solve(schur_rhs.unsqueeze(-1), factor).squeeze(-1)
    frame_step = -gradient_solved - coupling_solved @ identity_step
    return frame_step, identity_step


def paired_tridiagonal_solve(
    blocks: torch.Tensor, next_coupling: torch.Tensor, skip_coupling: torch.Tensor, right: torch.Tensor
) -> tuple[torch.Tensor, bool]:
    """A⁻¹·right for the block-pentadiagonal A of :func:`bordered_banded_solve`.

    Frames (2k, 2k+1) form super-block k; then A is block tridiagonal with diagonal blocks
    [[D₂ₖ, N₂ₖ], [N₂ₖᵀ, D₂ₖ₊₁]] and upper blocks [[S₂ₖ, 0], [N₂ₖ₊₁, S₂ₖ₊₁]] (N, S the couplings to
    the next and next-but-one frame). An odd frame count gets a decoupled dummy frame.
    """
    frames, n, _ = blocks.shape
    if frames % 2:
        blocks = torch.cat([blocks, torch.eye(n, dtype=blocks.dtype, device=blocks.device).unsqueeze(0)])
        right = torch.cat([right, right.new_zeros(1, *right.shape[1:])])
    total = blocks.shape[0]
    # Couplings past the last frame are zero.
    next_coupling = torch.cat([next_coupling, next_coupling.new_zeros(total + 2 - next_coupling.shape[0], n, n)])
    skip_coupling = torch.cat([skip_coupling, skip_coupling.new_zeros(total + 2 - skip_coupling.shape[0], n, n)])
    diagonal = torch.cat(
        [
            torch.cat([blocks[0::2], next_coupling[0:total:2]], -1),
            torch.cat([next_coupling[0:total:2].transpose(1, 2), blocks[1::2]], -1),
        ],
        -2,
    )
    upper = torch.cat(
        [
            torch.cat([skip_coupling[0:total:2], torch.zeros_like(skip_coupling[0:total:2])], -1),
            torch.cat([next_coupling[1:total:2], skip_coupling[1:total:2]], -1),
        ],
        -2,
    )
    pairs = total // 2
    right = right.reshape(pairs, 2 * n, -1)
    factors, reduced, failed = [], [], False
    for k in range(pairs):
        block, rhs = diagonal[k], right[k]
        if k > 0:
            # Eliminating super-block k−1 leaves Uᵀ·D̃⁻¹·U on block k and Uᵀ·D̃⁻¹·z on its right side.
            link = upper[k - 1]
            eliminated = torch.cholesky_solve(torch.cat([link, reduced[-1]], -1), factors[-1])
            block = block - link.T @ eliminated[:, : 2 * n]
            rhs = rhs - link.T @ eliminated[:, 2 * n :]
        factor, info = torch.linalg.cholesky_ex(block)
        failed |= bool(info != 0)
        factors.append(factor)
        reduced.append(rhs)
    solution = [torch.cholesky_solve(reduced[-1], factors[-1])]
    for k in range(pairs - 2, -1, -1):
        solution.append(torch.cholesky_solve(reduced[k] - upper[k] @ solution[-1], factors[k]))
    solved = torch.stack(solution[::-1]).reshape(2 * pairs, n, -1)
    return solved[:frames], failed
