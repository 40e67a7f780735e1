"""Transition feature importance: the filtered-posterior gradient of reference.md F, done as the paper states.

Notation: state means μ_h (d-vectors), covariances Σ_h with precisions P_h = Σ_h⁻¹, scaled
observation z_t, filtered posterior p_t(h) = p(s_t = h | z_1..z_t) from a forward pass.

For target state k at time t the gradient of the filtered log-posterior is::

    g_k(t) = ∂ log p(s_t = k | z_1:t) / ∂ z_t = P_k (μ_k − z_t) − Σ_h p_t(h) P_h (μ_h − z_t)

(the correction term is summed over states only, giving a d-vector; the reference notebook
summed it over states *and* features). For an edge j → k, every occurrence t (s_t = j and
s_{t+1} = k on a run's Viterbi path; t is the last step in j) contributes |g_k(t)|, and the
importance of each feature is the mean of these absolute vectors over all occurrences in all
runs. The change annotated here is μ_k − μ_j in z units; ``latent fit`` replaces it with what the
data do on the move (:func:`latent.trainmap.entry_changes`), the definition the state table uses.
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp


def log_emissions(z: np.ndarray, means: np.ndarray, covars: np.ndarray) -> np.ndarray:
    """log N(z_t | μ_h, Σ_h), shape (T, K), for full covariances ``covars`` (K, d, d)."""
    T, d = z.shape
    out = np.empty((T, len(means)))
    for h, (mu, cov) in enumerate(zip(means, covars)):
        chol = np.linalg.cholesky(cov)
        diff = np.linalg.solve(chol, (z - mu).T)  # (d, T)
        logdet = 2 * np.log(np.diag(chol)).sum()
        out[:, h] = -0.5 * (d * np.log(2 * np.pi) + logdet + (diff**2).sum(axis=0))
    return out


def filtered_log_posteriors(z, startprob, transmat, means, covars, logb=None) -> np.ndarray:
    """log p(s_t = h | z_1..z_t) for one run, shape (T, K), by a forward pass.

    ``logb`` (T, K) are the emission log-densities when the model is not a Gaussian HMM
    (:meth:`latent.family.StateFamily.log_density`); else they are computed from ``means`` and
    ``covars``. Each step is normalised (so nothing underflows); a step whose scaled mass
    vanishes is redone in log space.
    """
    if logb is None:
        logb = log_emissions(z, means, covars)
    T, K = logb.shape
    b = np.exp(logb - logb.max(axis=1, keepdims=True))
    startprob = np.asarray(startprob, dtype=float)
    transmat = np.asarray(transmat, dtype=float)
    with np.errstate(divide="ignore"):
        log_pi = np.log(startprob)
        log_A = np.log(transmat)
    out = np.empty((T, K))
    a = startprob * b[0]
    for t in range(T):
        if t:
            a = (a @ transmat) * b[t]  # a: the normalised filtered posterior at t - 1
        s = a.sum()
        if s > 0 and np.isfinite(s):
            a = a / s
            with np.errstate(divide="ignore"):
                out[t] = np.log(a)
        else:  # all predicted mass on states that cannot emit z_t: log space
            la = (log_pi if t == 0 else logsumexp(out[t - 1][:, None] + log_A, axis=0)) + logb[t]
            out[t] = la - logsumexp(la)
            a = np.exp(out[t])
    return out


def state_gradients(z, filtered, means, covars) -> np.ndarray:
    """g_k(t) for every state k and time t, shape (T, K, d).

    Parameters
    ----------
    z : ndarray, shape (T, d)
    filtered : ndarray, shape (T, K)
        Filtered posteriors p_t(h) (probabilities, not logs).
    means : ndarray, shape (K, d) or (T, K, d)
        Each state's expected z_t: its mean, or per row its prediction from the rows before
        (:meth:`latent.family.StateFamily.centers`).
    covars : ndarray, shape (K, d, d)
    """
    prec = np.linalg.inv(covars)  # (K, d, d)
    centers = means if np.ndim(means) == 3 else means[None, :, :]
    v = np.einsum("hij,thj->thi", prec, centers - z[:, None, :])  # P_h (μ_h − z_t)
    correction = np.einsum("th,thi->ti", filtered, v)  # Σ_h p_t(h) P_h (μ_h − z_t), a d-vector
    return v - correction[:, None, :]


def transition_importance(runs_z, runs_path, params: dict, features: list[str],
                          family: str = "gaussian") -> list[dict]:
    """Feature importance for every transition j → k (j ≠ k) some Viterbi path takes.

    Parameters
    ----------
    runs_z : list of ndarray, each (T_i, d)
        Scaled observations per run.
    runs_path : list of ndarray, each (T_i,)
        Viterbi states per run (canonical labels of ``params``).
    params : dict
        The model's parameters (:mod:`latent.family`; full covariances).
    features : list of str
    family : str
        The model family. For the Gaussian HMM μ_h is the state's mean; for other families it
        is the state's prediction of z_t from the rows before it, so the gradient is that of
        the same filtered posterior under the family's own density.

    Returns
    -------
    list of dict
        Sorted by (source, target): ``source, target, occurrences, features`` where
        ``features`` lists every feature as ``{"feature", "importance", "change_z"}`` ranked by
        decreasing importance.
    """
    from .family import get_family

    fam = get_family(family)
    means = np.asarray(params["means"])
    covars = np.asarray(params["covars"])
    sums: dict[tuple[int, int], np.ndarray] = {}
    counts: dict[tuple[int, int], int] = {}
    for z, path in zip(runs_z, runs_path):
        path = np.asarray(path)
        t_idx = np.flatnonzero(path[:-1] != path[1:])
        if t_idx.size == 0:
            continue
        if fam.name == "gaussian":
            logb, centers = None, means
        else:
            logb, centers = fam.log_density(params, z), fam.centers(params, z)[t_idx]
        filt = np.exp(filtered_log_posteriors(z, params["startprob"], params["transmat"], means, covars, logb))
        grads = state_gradients(z[t_idx], filt[t_idx], centers, covars)  # (n, K, d)
        for n, t in enumerate(t_idx):
            j, k = int(path[t]), int(path[t + 1])
            g = np.abs(grads[n, k])
            sums[(j, k)] = sums.get((j, k), 0) + g
            counts[(j, k)] = counts.get((j, k), 0) + 1
    out = []
    for (j, k) in sorted(sums):
        imp = sums[(j, k)] / counts[(j, k)]
        change = means[k] - means[j]
        order = sorted(range(len(features)), key=lambda i: (-imp[i], i))
        out.append(
            {
                "source": j,
                "target": k,
                "occurrences": counts[(j, k)],
                "features": [
                    {"feature": features[i], "importance": float(imp[i]), "change_z": float(change[i])}
                    for i in order
                ],
            }
        )
    return out
