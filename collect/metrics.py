"""Weight statistics with the reference code's exact definitions, batched over seeds.

Notation: a *matrix group* is a tensor of shape ``(S, M, m, n)``: for each of S seeds, M
matrices of the same m×n shape (the four per-head W_Q of a transformer, say). Keeping seeds on
the leading axis lets one batched eigendecomposition serve every seed at once.

Definitions (reference.md B1–B5):

* per matrix: ``l1`` = Σ|w|, ``l2`` = Frobenius norm, ``trace`` = sum of the main diagonal of
  length min(m, n), ``spectral`` = σ_max, ``code_sparsity`` = l1/l2, ``computational_sparsity``
  = trace/spectral, ``mean_singular_value`` / ``var_singular_value`` = mean and unbiased
  variance of the singular values after zeroing those below 1e-5 (variance NaN for one value);
  a matrix with a non-finite entry yields NaN for every key and is skipped in the averages;
* per checkpoint: each of ``l1 … mean_lambda`` is the unweighted mean over all matrices,
  ``variance_lambda`` the NaN-skipping mean of the per-matrix variances;
* ``mean_w, median_w, var_w`` (``_b``): mean, lower median and unbiased variance of all included
  weights (biases) concatenated;
* conv tensors ``(out, in, kh, kw)`` (reference B2) give only ``l1``, ``l2`` and
  ``code_sparsity``: the means over the out×in kernel slices of each slice's L1, L2 and L1/L2.
  Each column averages over the entries that have it, so with convs in a model ``l1`` mixes conv
  and matrix entries while ``spectral`` etc. come from the matrices alone (reference B5,
  ``get_stats_for_cnn``).

Variants (reference.md I and J1): ``"reference"`` (the default) is all of the above, the
reference code's definitions. ``"paper"`` follows the paper's wording instead, in two places
only: ``var_w``, ``var_b`` and the singular-value variance are population variances (ddof 0,
"without Bessel's correction", Appendix B), and ``mean_lambda`` / ``variance_lambda`` are the
mean and variance of every thresholded singular value of every included matrix pooled together
(each seed's own pool; a matrix with a non-finite entry stays out of it), not means of
per-matrix values. The other ten columns are the same in both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from latent.store import REFERENCE_COLUMNS

SV_THRESHOLD = 1e-5

#: The metric definitions :func:`reference_metrics` offers: the reference code's, or the paper's wording.
METRIC_VARIANTS = ("reference", "paper")

MATRIX_KEYS = (
    "l1",
    "l2",
    "trace",
    "spectral",
    "code_sparsity",
    "computational_sparsity",
    "mean_singular_value",
    "var_singular_value",
)


_MATRIX_TO_COLUMN = {
    "l1": "l1",
    "l2": "l2",
    "trace": "trace",
    "spectral": "spectral",
    "code_sparsity": "code_sparsity",
    "computational_sparsity": "computational_sparsity",
    "mean_singular_value": "mean_lambda",
    "var_singular_value": "variance_lambda",
}


def _eigvalsh_one_thread(gram: torch.Tensor) -> torch.Tensor:
    """``eigvalsh`` with one intra-op thread on CPU.

    LAPACK's symmetric eigensolver opens many tiny parallel regions; with OpenMP's passive wait
    policy (which the collector sets, see latent.collect.runtime) each one wakes sleeping threads, and
    128x128 problems ran 13x slower on 2 threads than on 1.
    """
    if gram.device.type != "cpu" or torch.get_num_threads() == 1:
        return torch.linalg.eigvalsh(gram)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return torch.linalg.eigvalsh(gram)
    finally:
        torch.set_num_threads(threads)


def singular_values(w: torch.Tensor) -> torch.Tensor:
    """Singular values of a stack of matrices ``(..., m, n)``, descending, in float64.

    Uses the Gram matrix of the smaller side and a symmetric eigensolver: 1–3× faster than
    ``torch.linalg.svdvals`` on CPU for these shapes, and in float64 its error (~1e-8·σ_max on
    the smallest values) is far below the 1e-5 threshold the reference applies.
    """
    m, n = w.shape[-2], w.shape[-1]
    # One flat batch dimension for the eigensolver, whatever the leading shape.
    w64 = w.to(torch.float64).reshape(-1, m, n)
    gram = w64 @ w64.transpose(-1, -2) if m <= n else w64.transpose(-1, -2) @ w64
    eig = _eigvalsh_one_thread(gram)  # ascending
    return eig.clamp_min(0.0).sqrt().flip(-1).reshape(*w.shape[:-2], min(m, n))


def _nan_where_not(finite: torch.Tensor, stats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """NaN for every statistic of an entry with a non-finite weight (the reference skips those)."""
    nan = torch.tensor(float("nan"), dtype=torch.float64, device=finite.device)
    return {key: torch.where(finite, val, nan) for key, val in stats.items()}


def matrix_metrics(w: torch.Tensor) -> dict[str, torch.Tensor]:
    """The reference's per-matrix statistics (``get_matrix_metrics``), for one matrix or a stack.

    Parameters
    ----------
    w : torch.Tensor
        A 2-D matrix of shape ``(m, n)`` or a stack of shape ``(..., m, n)``.

    Returns
    -------
    dict of str to torch.Tensor
        Keys ``l1, l2, trace, spectral, code_sparsity, computational_sparsity,
        mean_singular_value, var_singular_value``; each value is a float64 tensor of shape
        ``w.shape[:-2]`` (a 0-d tensor for a single matrix). Matrices with a non-finite entry
        give NaN for every key (the reference returns null and skips them).
    """
    if w.dim() < 2:
        raise ValueError(f"matrix_metrics needs a matrix or a stack of matrices, got shape {tuple(w.shape)}")
    stats, _, finite = _matrix_stats(w)
    return _nan_where_not(finite, stats)


def _matrix_stats(w: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """:func:`matrix_metrics` before the NaN masking, with what the pooled statistics need.

    Returns
    -------
    stats : dict of str to torch.Tensor
        The per-matrix statistics, not yet NaN for non-finite matrices.
    sv : torch.Tensor
        The thresholded singular values, float64 ``(..., min(m, n))``, descending (zeros for a
        non-finite matrix).
    finite : torch.Tensor
        Bool ``w.shape[:-2]``: the matrix has no NaN or infinite entry.
    """
    w64 = w.detach().to(torch.float64)
    finite = torch.isfinite(w64).flatten(-2).all(-1)
    # Zero non-finite matrices before the eigensolver (it fails on NaN); they are masked below.
    safe = torch.where(finite[..., None, None], w64, torch.zeros((), dtype=w64.dtype, device=w64.device))
    l1 = safe.abs().sum((-2, -1))
    l2 = safe.square().sum((-2, -1)).sqrt()
    trace = torch.diagonal(safe, dim1=-2, dim2=-1).sum(-1)
    sv = singular_values(safe)
    spectral = sv[..., 0]
    sv = torch.where(sv < SV_THRESHOLD, torch.zeros((), dtype=sv.dtype, device=sv.device), sv)
    k = sv.shape[-1]
    mean_sv = sv.mean(-1)
    var_sv = sv.var(-1, correction=1) if k > 1 else torch.full_like(mean_sv, float("nan"))
    out = {
        "l1": l1,
        "l2": l2,
        "trace": trace,
        "spectral": spectral,
        "code_sparsity": l1 / l2,
        "computational_sparsity": trace / spectral,
        "mean_singular_value": mean_sv,
        "var_singular_value": var_sv,
    }
    return out, sv, finite


def tensor_metrics(w: torch.Tensor) -> dict[str, torch.Tensor]:
    """The reference's conv-tensor statistics (``get_tensor_metrics``, reference.md B2).

    Parameters
    ----------
    w : torch.Tensor
        Shape ``(..., out, in, kh, kw)``.

    Returns
    -------
    dict of str to torch.Tensor
        ``l1``, ``l2``, ``code_sparsity``: means over the ``out × in`` kernel slices of the slice's
        L1 norm, L2 norm and their ratio, float64 of shape ``w.shape[:-4]``. A tensor with a
        non-finite entry gives NaN.
    """
    if w.dim() < 4:
        raise ValueError(f"tensor_metrics needs (..., out, in, kh, kw), got shape {tuple(w.shape)}")
    w64 = w.detach().to(torch.float64)
    finite = torch.isfinite(w64).flatten(-4).all(-1)
    l1 = w64.abs().sum((-2, -1))  # (..., out, in)
    l2 = w64.square().sum((-2, -1)).sqrt()
    out = {
        "l1": l1.mean((-2, -1)),
        "l2": l2.mean((-2, -1)),
        "code_sparsity": (l1 / l2).mean((-2, -1)),
    }
    return _nan_where_not(finite, out)


def distribution_stats(values: torch.Tensor, correction: int = 1) -> dict[str, torch.Tensor]:
    """Mean, lower median and variance along the last axis (``get_distribution_stats``).

    Parameters
    ----------
    values : torch.Tensor
        Shape ``(S, N)``: for each seed, all included weights (or biases) concatenated.
    correction : {1, 0}
        Degrees of freedom subtracted from N in the variance: 1 is the reference's unbiased
        variance, 0 the population variance of the paper's wording.

    Returns
    -------
    dict with keys ``mean``, ``median``, ``var``, each a float64 tensor of shape ``(S,)``.
    """
    v = values.detach()
    return {
        "mean": v.to(torch.float64).mean(-1),
        # torch.median returns the lower of the two middle values for even N, as the reference.
        "median": v.median(-1).values.to(torch.float64),
        "var": v.to(torch.float64).var(-1, correction=correction),
    }


def pooled_singular_value_stats(svs: Sequence[torch.Tensor], finite: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Mean and population variance of every seed's singular values pooled over all its matrices.

    This is the ``"paper"`` variant's μ(λ) and σ(λ): one pool per seed holding every
    thresholded singular value of every finite matrix, whatever the matrices' shapes, so a
    matrix weighs by its number of singular values.

    Parameters
    ----------
    svs : sequence of torch.Tensor
        Thresholded singular values per matrix group, each float64 ``(S, M, k)``.
    finite : sequence of torch.Tensor
        Bool ``(S, M)`` per group: matrices with a non-finite entry (False) stay out of the pool.

    Returns
    -------
    dict with keys ``mean`` and ``var`` (ddof 0), each a float64 tensor of shape ``(S,)``; NaN
    for a seed whose pool is empty. A pool of one value has variance 0.
    """
    total = count = None
    for sv, ok in zip(svs, finite):
        keep = ok[..., None].to(sv.dtype)  # (S, M, 1)
        part_sum = (sv * keep).sum((-2, -1))
        part_count = ok.sum(-1).to(sv.dtype) * sv.shape[-1]
        total = part_sum if total is None else total + part_sum
        count = part_count if count is None else count + part_count
    if total is None:
        raise ValueError("pooled_singular_value_stats needs at least one matrix group")
    mean = total / count  # 0/0 = NaN for an empty pool
    squares = None
    for sv, ok in zip(svs, finite):
        dev = torch.where(ok[..., None], sv - mean[:, None, None], torch.zeros((), dtype=sv.dtype, device=sv.device))
        part = dev.square().sum((-2, -1))
        squares = part if squares is None else squares + part
    return {"mean": mean, "var": squares / count}


@dataclass
class WeightGroups:
    """What the reference includes in the statistics of one architecture, batched over seeds.

    Attributes
    ----------
    matrices : list of torch.Tensor
        Matrix groups, each ``(S, M, m, n)``; every matrix counts once in the averages.
    weights : list of torch.Tensor
        Tensors ``(S, ...)`` whose entries are concatenated into ``w_all``.
    biases : list of torch.Tensor
        Tensors ``(S, ...)`` concatenated into ``b_all``.
    convs : list of torch.Tensor
        Conv tensors ``(S, out, in, kh, kw)``, each one entry in ``l1``, ``l2``, ``code_sparsity``.
    """

    matrices: list[torch.Tensor] = field(default_factory=list)
    convs: list[torch.Tensor] = field(default_factory=list)
    weights: list[torch.Tensor] = field(default_factory=list)
    biases: list[torch.Tensor] = field(default_factory=list)


def _concat(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([p.detach().reshape(p.shape[0], -1) for p in parts], dim=1)


def reference_metrics(groups: WeightGroups, variant: str = "reference") -> dict[str, torch.Tensor]:
    """The 14 reference columns for S seeds at one checkpoint.

    Parameters
    ----------
    groups : WeightGroups
        The included matrices, weights and biases, seeds on the leading axis.
    variant : {"reference", "paper"}
        ``"reference"``: the reference code's definitions (reference.md B1–B5). ``"paper"``:
        population variances for ``var_w`` and ``var_b``, and ``mean_lambda`` /
        ``variance_lambda`` from the pooled singular values
        (:func:`pooled_singular_value_stats`); the other columns are the same.

    Returns
    -------
    dict of str to torch.Tensor
        One float64 tensor of shape ``(S,)`` per column in :data:`REFERENCE_COLUMNS`.
    """
    if variant not in METRIC_VARIANTS:
        raise ValueError(f"unknown metric variant {variant!r}; use one of {', '.join(METRIC_VARIANTS)}")
    per_key: dict[str, list[torch.Tensor]] = {k: [] for k in MATRIX_KEYS}
    svs: list[torch.Tensor] = []
    finite: list[torch.Tensor] = []
    for group in groups.matrices:
        if group.dim() != 4:
            raise ValueError(f"matrix group must be (S, M, m, n), got {tuple(group.shape)}")
        raw, sv, ok = _matrix_stats(group)
        stats = _nan_where_not(ok, raw)  # each (S, M)
        for key in MATRIX_KEYS:
            per_key[key].append(stats[key])
        svs.append(sv)
        finite.append(ok)
    for conv in groups.convs:
        if conv.dim() != 5:
            raise ValueError(f"conv tensor must be (S, out, in, kh, kw), got {tuple(conv.shape)}")
        for key, val in tensor_metrics(conv).items():
            per_key[key].append(val[:, None])
    n_seeds = (groups.matrices or groups.convs)[0].shape[0]
    out: dict[str, torch.Tensor] = {}
    for key in MATRIX_KEYS:
        if per_key[key]:
            stacked = torch.cat(per_key[key], dim=1)  # (S, entries that have this key)
            out[_MATRIX_TO_COLUMN[key]] = stacked.nanmean(dim=1)
        else:
            out[_MATRIX_TO_COLUMN[key]] = torch.full((n_seeds,), float("nan"), dtype=torch.float64)
    if variant == "paper" and svs:
        pooled = pooled_singular_value_stats(svs, finite)
        out["mean_lambda"], out["variance_lambda"] = pooled["mean"], pooled["var"]
    correction = 1 if variant == "reference" else 0
    for prefix, parts in (("w", groups.weights), ("b", groups.biases)):
        if parts:
            stats = distribution_stats(_concat(parts), correction=correction)
            out[f"mean_{prefix}"] = stats["mean"]
            out[f"median_{prefix}"] = stats["median"]
            out[f"var_{prefix}"] = stats["var"]
        else:
            for stat in ("mean", "median", "var"):
                out[f"{stat}_{prefix}"] = torch.full((n_seeds,), float("nan"), dtype=torch.float64)
    return {col: out[col] for col in REFERENCE_COLUMNS}
