r"""Eigendecompositions of the Kronecker factors and the inverse roots built from
them (Shampoo's :math:`(L + \epsilon I)^{-1/4}`, K-FAC's damped factor inverses),
checked and retried in float64.

A refresh is the dominant cost of a preconditioner's period: a float64 ``eigh`` of
a 1000 x 1000 factor takes about 0.5 s of one CPU thread, the float32 one half that
(and far less on a GPU, where float64 is slow).  :func:`checked_eigh` therefore runs
``eigh`` in the precision asked for -- ``"factor"``: the factor's own dtype (float32
for a float32 model), as Distributed Shampoo does (Shi et al. 2023, its
``retry_double_precision``) -- and retries in float64 when that fails, is not finite,
or is inaccurate.  Accuracy is checked on ``PROBES`` random vectors :math:`z`
(a fixed seed, so runs repeat): the decomposition's backward error
:math:`\|F Q z - Q \Lambda z\| / (\|F\|_F \|z\|)` and its loss of orthogonality
:math:`\|Q^\top Q z - z\| / \|z\|` must both be at most ``tolerance`` (default
:data:`FLOAT32_TOLERANCE`, about 1000 float32 round-offs).  The probes cost
:math:`O(n^2)` products against the :math:`O(n^3)` ``eigh``; their expected
squared norm is the squared Frobenius norm of the error matrix (Hutchinson).

What float32 costs in accuracy: eigenvalues below about :math:`n\,2^{-23}\lambda_{max}`
are not resolved, so the root's directions there are noise.  A gradient moment has
little weight in those directions: on ``fmnist_mlp``'s factors after 25 Shampoo
steps, the float32 direction :math:`L^{-1/4} M R^{-1/4}` was within 2e-4 (the
1000 x 784 layer) to 8e-2 (the 500 x 1000 layer) of the float64 one in relative
norm (cosine >= 0.997).  ``"float64"`` keeps the exact root.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

EighPrecision = Literal["factor", "float64"]
PROBES = 4
FLOAT32_TOLERANCE = 1e-4


def _accurate(matrix: Tensor, values: Tensor, vectors: Tensor, tolerance: float) -> bool:
    """Probe estimates of the backward error and of the orthogonality loss, both at most ``tolerance``."""
    generator = torch.Generator(device=matrix.device).manual_seed(0)
    z = torch.randn(matrix.shape[0], PROBES, dtype=matrix.dtype, device=matrix.device, generator=generator)
    qz = vectors @ z
    backward = (matrix @ qz - vectors @ (values[:, None] * z)).norm() / (matrix.norm() * z.norm()).clamp_min(1e-300)
    orthogonality = (vectors.T @ qz - z).norm() / z.norm()
    return bool(torch.isfinite(values).all()) and float(torch.maximum(backward, orthogonality)) <= tolerance


def checked_eigh(
    matrix: Tensor, precision: EighPrecision = "factor", tolerance: float = FLOAT32_TOLERANCE
) -> tuple[Tensor, Tensor, bool] | None:
    """``(values, vectors, retried)`` of a symmetric matrix, ascending, in the dtype
    ``eigh`` ran in (``matrix``'s, or float64); ``retried`` when the first precision
    failed and float64 answered.  ``None``
    when the matrix is not finite or float64 fails too (the caller keeps its previous
    preconditioner, as Anil et al. 2020 advise)."""
    if not bool(torch.isfinite(matrix).all()):
        return None
    if precision == "factor" and matrix.dtype != torch.float64:
        try:
            values, vectors = torch.linalg.eigh(matrix)
            if _accurate(matrix, values, vectors, tolerance):
                return values, vectors, False
        except torch.linalg.LinAlgError:
            pass
        retried = True
    else:
        retried = False
    try:
        values, vectors = torch.linalg.eigh(matrix.double())
    except torch.linalg.LinAlgError:
        return None
    return values, vectors, retried


def inverse_root(
    matrix: Tensor, exponent: float, eps: float, precision: EighPrecision = "float64"
) -> tuple[Tensor, float, bool] | None:
    r""":math:`(M + \epsilon I)^{-1/p}` of a symmetric PSD matrix from :func:`checked_eigh`
    (eigenvalues clamped at 0 first: round-off can make tiny ones negative), the
    condition number :math:`(\lambda_{max} + \epsilon) / (\lambda_{min} + \epsilon)`,
    and whether float64 had to retry.  ``None`` when no ``eigh`` succeeded."""
    found = checked_eigh(matrix, precision)
    if found is None:
        return None
    values, vectors, retried = found
    shifted = values.clamp_min(0.0) + eps
    root = ((vectors * shifted.pow(-1.0 / exponent)) @ vectors.T).to(matrix.dtype)
    return root, float(shifted[-1] / shifted[0]), retried


def damped_inverse(values: Tensor, vectors: Tensor, damping: float) -> Tensor:
    r""":math:`(F + d I)^{-1} = Q\,\mathrm{diag}(1 / (\lambda + d))\,Q^\top` from ``F``'s eigendecomposition."""
    return (vectors / (values + damping)) @ vectors.T
