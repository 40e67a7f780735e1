"""Initial HMM parameters from a segmentation of each run into stretches of constant mean.

Notation: a run is a (T, d) array of scaled features; a *segment* is a stretch [a, b) of it.

Why: hmmlearn starts EM from KMeans clusters of single checkpoints. Training runs spend most of
their checkpoints in one or two long phases (the converged plateau above all), and KMeans on
checkpoints splits those big, noisy clouds instead of finding the short phases; EM then stays
in that poor optimum (on simulated studies with a known truth, none of 40 such restarts reached
the truth's likelihood; bench/RESULTS.md). Phases are *stretches of time*, so we find them
where the noise is averaged away:

1. each run is cut by binary segmentation into stretches whose means differ by more than its
   noise explains (noise scale per feature from the median absolute first difference; a split
   needs a gain above a χ²-type threshold in d);
2. the segment means, one point per stretch (weighted by a power of its length), are clustered
   into K groups by KMeans;
3. every checkpoint takes its segment's group, and the start, transition, mean and covariance
   parameters are estimated from those labels; EM refines them.

Each restart clusters with its own seed and alternates the length weighting (√length,
length), which varies where EM starts.
"""

from __future__ import annotations

import numpy as np

MIN_SEGMENT = 3  # checkpoints


def noise_scale(X: np.ndarray, lengths) -> np.ndarray:
    """Per-feature noise sd: median absolute first difference / (0.6745 √2), robust to jumps."""
    off = np.concatenate([[0], np.cumsum(lengths)])
    diffs = [np.diff(X[off[i] : off[i + 1]], axis=0) for i in range(len(lengths)) if lengths[i] > 1]
    if not diffs:
        return np.ones(X.shape[1])
    D = np.concatenate(diffs)
    mad = np.median(np.abs(D - np.median(D, axis=0)), axis=0) / 0.6745 / np.sqrt(2)
    fallback = X.std(axis=0)
    return np.where(mad > 0, mad, np.where(fallback > 0, fallback, 1.0))


def segment_run(x: np.ndarray, penalty: float, min_len: int = MIN_SEGMENT) -> list[tuple[int, int]]:
    """Binary segmentation of one whitened run ``x`` (T, d) into ``[(a, b), ...]`` in time order.

    A stretch is split at the point that most reduces the squared error around its means, if
    the reduction exceeds ``penalty``.
    """
    T = len(x)
    cs = np.vstack([np.zeros(x.shape[1]), np.cumsum(x, axis=0)])
    todo, out = [(0, T)], []
    while todo:
        a, b = todo.pop()
        n = b - a
        if n < 2 * min_len:
            out.append((a, b))
            continue
        taus = np.arange(a + min_len, b - min_len + 1)
        n1, n2 = taus - a, b - taus
        diff = (cs[taus] - cs[a]) / n1[:, None] - (cs[b] - cs[taus]) / n2[:, None]
        gain = (n1 * n2 / n) * np.einsum("ij,ij->i", diff, diff)
        j = int(np.argmax(gain))
        if gain[j] > penalty:
            todo += [(int(taus[j]), b), (a, int(taus[j]))]
        else:
            out.append((a, b))
    return sorted(out)


def run_segments(X: np.ndarray, lengths) -> list[list[tuple[int, int]]]:
    """Segments of every run, in each run's own row numbers."""
    lengths = np.asarray(lengths)
    scale = noise_scale(X, lengths)
    off = np.concatenate([[0], np.cumsum(lengths)])
    d = X.shape[1]
    out = []
    for i, T in enumerate(lengths):
        x = X[off[i] : off[i + 1]] / scale
        logt = np.log(max(T, 2))
        # the largest of ~T χ²_d gains under no change stays below d + 2√(2d log T) + 4 log T
        penalty = d + 2 * np.sqrt(2 * d * logt) + 4 * logt
        out.append(segment_run(x, penalty))
    return out


def labels_from_segments(X: np.ndarray, lengths, segments, k: int, seed: int, weight_power: float) -> np.ndarray:
    """One label per row: KMeans (``k`` groups, 10 inits) of the segment means."""
    from sklearn.cluster import KMeans

    off = np.concatenate([[0], np.cumsum(lengths)])
    bounds = [(off[i] + a, off[i] + b) for i, segs in enumerate(segments) for a, b in segs]
    means = np.array([X[a:b].mean(axis=0) for a, b in bounds])
    sizes = np.array([b - a for a, b in bounds], dtype=float)
    k_eff = min(k, len(np.unique(means, axis=0)))
    km = KMeans(n_clusters=k_eff, n_init=10, random_state=seed).fit(means, sample_weight=sizes**weight_power)
    labels = np.empty(len(X), dtype=int)
    for (a, b), lab in zip(bounds, km.labels_):
        labels[a:b] = lab
    if k_eff < k:  # fewer distinct stretches than states: give the extra states the largest groups' tails
        counts = np.bincount(labels, minlength=k)
        for extra in range(k_eff, k):
            big = int(np.argmax(counts))
            rows = np.flatnonzero(labels == big)
            labels[rows[len(rows) // 2 :]] = extra
            counts = np.bincount(labels, minlength=k)
    return labels


def params_from_labels(X: np.ndarray, lengths, labels: np.ndarray, k: int, min_covar: float = 1e-3) -> dict:
    """Start, transition, mean and full covariance estimates from hard labels (add-one smoothing
    on counts; a state with too few rows for a covariance takes the pooled one)."""
    d = X.shape[1]
    off = np.concatenate([[0], np.cumsum(lengths)])
    start = np.ones(k)
    trans = np.ones((k, k))
    for i in range(len(lengths)):
        lab = labels[off[i] : off[i + 1]]
        start[lab[0]] += 1
        np.add.at(trans, (lab[:-1], lab[1:]), 1)
    pooled = np.atleast_2d(np.cov(X.T)) + min_covar * np.eye(d)
    means = np.empty((k, d))
    covars = np.empty((k, d, d))
    for j in range(k):
        rows = X[labels == j]
        means[j] = rows.mean(axis=0) if len(rows) else X.mean(axis=0)
        covars[j] = (np.atleast_2d(np.cov(rows.T)) + min_covar * np.eye(d)) if len(rows) > d else pooled
    return {"startprob": start / start.sum(), "transmat": trans / trans.sum(axis=1, keepdims=True),
            "means": means, "covars": covars}
