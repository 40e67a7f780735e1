"""Hand-made studies with a hand-made fit, written exactly as ``docs/artifacts.md`` specifies.

``make_toy_fit`` writes a small fit whose content is known in advance (the tests assert
against the constants below); ``make_fit_study`` is the general builder, also used by
``bench/bench_report.py`` for the 40 runs × 1,000 checkpoints timing.

The toy fit (K = 4, six seeds, 40 checkpoints every 10 epochs, the first 30 decoded):

    seed 0: 0×8 → 1×9 → 3×13          converges at checkpoint 17 (epoch 170)
    seed 1: 0×8 → 1×7 → 3×15          converges at checkpoint 15 (epoch 150)
    seed 2: 0×8 → 1×8 → 3×14          converges at checkpoint 16 (epoch 160)
    seed 3: 0×8 → 1×6 → 2×8 → 3×8     converges at checkpoint 22 (epoch 220)
    seed 4: 0×8 → 1×6 → 2×10 → 3×6    converges at checkpoint 24 (epoch 240)
    seed 5: 0×8 → 1×6 → 2×16          never converges

so the map has the edges 0→1 (6 runs), 1→3 (3), 1→2 (3), 2→3 (2), and state 2 is the detour
(optional, skipped by converging runs, positive coefficient).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import networkx as nx
import numpy as np
import pandas as pd

TOY_NAME = "toy"
TOY_FIT_ID = "k4-bic-toy"
TOY_K = 4
TOY_FEATURES = ["l1", "l2", "spectral", "var_w"]
TOY_SEGMENTS = {
    0: [(0, 8), (1, 9), (3, 13)],
    1: [(0, 8), (1, 7), (3, 15)],
    2: [(0, 8), (1, 8), (3, 14)],
    3: [(0, 8), (1, 6), (2, 8), (3, 8)],
    4: [(0, 8), (1, 6), (2, 10), (3, 6)],
    5: [(0, 8), (1, 6), (2, 16)],
}
TOY_N_STEPS = 40
TOY_FIRST_N = 30
TOY_STEP_EVERY = 10
TOY_EDGES = {(0, 1): 6, (1, 3): 3, (1, 2): 3, (2, 3): 2}
TOY_DETOURS = [2]
TOY_CONVERGENCE = {0: 170.0, 1: 150.0, 2: 160.0, 3: 220.0, 4: 240.0, 5: None}
TOY_COEF = [-40.0, 15.0, 130.0, -25.0]
TOY_CI_HALF = [20.0, 30.0, 40.0, 20.0]
TOY_TOP_FEATURE = "spectral"  # the most important feature overall (see _importance)
TOY_SELECTION_BEST_K = 4

METRICS = ["l1", "l2", "spectral", "var_w", "train_loss", "val_loss", "train_acc", "val_acc"]

# Per-state "level" of each metric, in original units; trajectories drift between levels.
_LEVELS = {
    "l1": [40.0, 55.0, 35.0, 30.0, 28.0, 26.0, 25.0, 24.0],
    "l2": [12.0, 16.0, 9.0, 8.0, 7.5, 7.0, 6.8, 6.6],
    "spectral": [3.0, 4.5, 2.0, 1.5, 1.4, 1.3, 1.2, 1.1],
    "var_w": [0.02, 0.03, 0.015, 0.01, 0.009, 0.008, 0.007, 0.006],
    "train_loss": [4.0, 0.3, 0.1, 0.01, 0.01, 0.01, 0.01, 0.01],
    "val_loss": [4.0, 6.0, 3.0, 0.2, 0.15, 0.1, 0.1, 0.1],
    "train_acc": [0.05, 0.9, 0.98, 1.0, 1.0, 1.0, 1.0, 1.0],
    "val_acc": [0.02, 0.05, 0.3, 0.97, 0.98, 0.99, 0.99, 0.99],
}


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _state_sequence(segments) -> np.ndarray:
    return np.concatenate([np.full(n, s, dtype=int) for s, n in segments])


def make_fit_study(
    store: Path,
    name: str,
    segments: dict[int, list[tuple[int, int]]],
    n_states: int,
    n_steps: int,
    first_n: int,
    features: list[str],
    coef: list[float],
    ci_half: list[float],
    converged_state: int,
    step_every: int = 10,
    fit_id: str = "fit",
    rng_seed: int = 0,
    selection_best_k: int | None = None,
    importance_top: str | None = None,
) -> Path:
    """Write ``<store>/<name>/`` with runs and one fit ``fits/<fit_id>/``; return the study dir.

    ``segments[seed]`` is that seed's decoded path as ``(state, length)`` runs covering the
    first ``first_n`` checkpoints (the fit decodes only those; the rest of the run stays in
    the last state). ``val_acc`` crosses 0.9 exactly when a run first enters
    ``converged_state``, so convergence times follow from the segments.
    """
    rng = np.random.default_rng(rng_seed)
    root = Path(store) / name
    k = n_states
    d = len(features)
    seeds = sorted(segments)
    steps = np.arange(n_steps) * step_every

    # -- runs ---------------------------------------------------------------------------------
    decoded: dict[int, np.ndarray] = {}
    conv: dict[int, float | None] = {}
    runs: dict[int, pd.DataFrame] = {}
    for seed in seeds:
        seq = _state_sequence(segments[seed])
        assert len(seq) == first_n, (seed, len(seq), first_n)
        decoded[seed] = seq
        full = np.concatenate([seq, np.full(n_steps - first_n, seq[-1])])
        hit = np.flatnonzero(full == converged_state)
        conv[seed] = float(steps[hit[0]]) if hit.size else None
        table = {"seed": np.full(n_steps, seed, dtype=np.int64), "step": steps.astype(np.int64),
                 "epoch": steps.astype(float)}
        for m in METRICS:
            levels = np.asarray(_LEVELS[m])[full % len(_LEVELS[m])]
            noise = rng.normal(0, 0.01 * (abs(levels).mean() + 1e-9), n_steps)
            values = levels + noise
            if m == "val_acc":  # make the convergence rule exact
                values = np.where(full == converged_state, 0.97, np.minimum(values, 0.5))
            table[m] = values.astype(float)
        frame = pd.DataFrame(table)
        runs[seed] = frame
        (root / "runs").mkdir(parents=True, exist_ok=True)
        frame.to_parquet(root / "runs" / f"seed-{seed:03d}.parquet", index=False)
        _write_json(root / "runs" / f"seed-{seed:03d}.json",
                    {"format": "latent.run/1", "seed": seed, "status": "done", "last_step": int(steps[-1]),
                     "rows": n_steps, "streams": {}, "timings": {}})

    _write_json(root / "study.json", {
        "format": "latent.study/1", "name": name, "task": "modadd", "preset": "default",
        "config": {"p": 59, "epochs": int(steps[-1])}, "seeds": seeds, "step_unit": "epoch",
        "convergence": {"metric": "val_acc", "threshold": 0.9, "direction": "above"},
        "features": features, "metrics": METRICS, "split": {"mode": "shared", "seed": 0},
        "versions": {"latent": "0.1.0"},
        "command": f"latent collect --task modadd --seeds {len(seeds)} --name {name}",
        "created": "2026-11-22T00:00:00+00:00",
    })

    # -- model.json ---------------------------------------------------------------------------
    stacked = pd.concat([runs[s].iloc[:first_n] for s in seeds], ignore_index=True)
    state_col = np.concatenate([decoded[s] for s in seeds])
    scaling = {"kind": "per_run", "per_run": {}}
    z = np.empty((len(stacked), d))
    for i, seed in enumerate(seeds):
        x = runs[seed].iloc[:first_n][features].to_numpy()
        mu, sd = x.mean(0), x.std(0) + 1e-12
        scaling["per_run"][str(seed)] = {"mean": mu.tolist(), "std": sd.tolist()}
        z[i * first_n:(i + 1) * first_n] = (x - mu) / sd
    means_z = np.array([z[state_col == s].mean(0) if np.any(state_col == s) else np.zeros(d) for s in range(k)])
    means_orig = np.array([stacked[features].to_numpy()[state_col == s].mean(0) if np.any(state_col == s)
                           else np.full(d, np.nan) for s in range(k)])

    counts = np.zeros((k, k))
    for seed in seeds:
        seq = decoded[seed]
        for a, b in zip(seq[:-1], seq[1:]):
            counts[a, b] += 1
    transmat = (counts + 1e-3) / (counts + 1e-3).sum(1, keepdims=True)
    startprob = np.bincount([decoded[s][0] for s in seeds], minlength=k) / len(seeds)
    best_k = selection_best_k or k
    selection = []
    for kk in range(1, k + 2):
        failed = kk == k + 1
        bic = 1000.0 + 40.0 * (kk - best_k) ** 2
        selection.append({
            "k": kk, "loglik_mean": None if failed else -500.0 - 30.0 * (kk - best_k) ** 2 + 5 * kk,
            "loglik_std": None if failed else 2.0 + kk, "aic": None if failed else bic - 20.0 * kk,
            "bic": None if failed else bic, "n_params": kk * kk + 2 * kk * d, "n_converged": 0 if failed else 3,
            "n_failed": 3 if failed else 0, "random_states": [1, 2, 3],
            "best_random_state": None if failed else 2,
        })
    model = {
        "format": "latent.fit/1", "fit_id": fit_id, "study": name,
        "config": {"features": features, "first_n": first_n, "scaling": "per_run", "max_states": k + 1,
                   "restarts": 3, "n_iter": 100, "covariance": "diag", "criterion": "bic", "random_state": 0,
                   "test_fraction": 0.2, "convergence_metric": "val_acc", "threshold": 0.9,
                   "direction": "above"},
        "n_states": k, "criterion": "bic", "features": features, "covariance_type": "diag",
        "startprob": startprob.tolist(), "transmat": transmat.tolist(), "means": means_z.tolist(),
        "covars": [np.eye(d).tolist() for _ in range(k)], "scaling": scaling, "selection": selection,
        "seeds": {"train": seeds[:-1], "test": seeds[-1:], "used": seeds, "excluded": {}},
        "state_order": list(range(k))[::-1], "versions": {"latent": "0.1.0", "hmmlearn": "0.3.3"},
        "command": f"latent fit --study {name} --max-states {k + 1}",
    }
    fit_dir = root / "fits" / fit_id
    _write_json(fit_dir / "model.json", model)

    # -- paths.parquet ------------------------------------------------------------------------
    post = np.full((len(state_col), k), 0.02 / max(k - 1, 1))
    post[np.arange(len(state_col)), state_col] = 0.98 if k > 1 else 1.0
    paths = pd.DataFrame({"seed": stacked["seed"].to_numpy(), "step": stacked["step"].to_numpy(),
                          "state": state_col.astype(np.int64)})
    for s in range(k):
        paths[f"p_state_{s}"] = post[:, s]
    paths.to_parquet(fit_dir / "paths.parquet", index=False)

    # -- analysis.json ------------------------------------------------------------------------
    occupancy = {str(s): (np.bincount(decoded[s], minlength=k) / first_n).tolist() for s in seeds}
    edge_runs: dict[tuple[int, int], set[int]] = {}
    for seed in seeds:
        seq = decoded[seed]
        for a, b in zip(seq[:-1], seq[1:]):
            if a != b:
                edge_runs.setdefault((int(a), int(b)), set()).add(seed)
    ranked_features = list(features)
    if importance_top in ranked_features:
        ranked_features.remove(importance_top)
        ranked_features.insert(0, importance_top)
    importance = []
    for (a, b), rs in sorted(edge_runs.items()):
        feats = [{"feature": f, "importance": round(2.0 - 0.3 * i, 3),
                  "change_z": round(float(means_z[b, features.index(f)] - means_z[a, features.index(f)]), 3)}
                 for i, f in enumerate(ranked_features)]
        importance.append({"source": a, "target": b, "occurrences": len(rs), "features": feats})
    imp_by_edge = {(e["source"], e["target"]): e for e in importance}

    g = nx.DiGraph()
    for s in range(k):
        visiting = [seed for seed in seeds if np.any(decoded[seed] == s)]
        g.add_node(s, state=s, occupancy=float(np.mean(state_col == s)), n_runs=len(visiting),
                   mean={f: float(means_orig[s, j]) for j, f in enumerate(features)},
                   mean_z={f: float(means_z[s, j]) for j, f in enumerate(features)},
                   self_prob=float(transmat[s, s]), self_runs=len(visiting))
    for (a, b), rs in sorted(edge_runs.items()):
        ct = [conv[r] for r in rs if conv[r] is not None]
        g.add_edge(a, b, runs=len(rs), prob=float(transmat[a, b]),
                   convergence_mean=float(np.mean(ct)) if ct else None,
                   convergence_std=float(np.std(ct)) if ct else None,
                   top_features=imp_by_edge[(a, b)]["features"][:3])

    visited_by = {s: {seed for seed in seeds if np.any(decoded[seed] == s)} for s in range(k)}
    converged = {s for s in seeds if conv[s] is not None}
    detours = []
    for s in range(k):
        if not visited_by[s]:
            continue
        skip = len(converged - visited_by[s])
        if skip > 0 and coef[s] > 0 and len(visited_by[s]) < len(seeds):
            detours.append({"state": s, "coef": coef[s], "ci_low": coef[s] - ci_half[s],
                            "ci_high": coef[s] + ci_half[s], "significant": coef[s] - ci_half[s] > 0,
                            "runs_visiting": len(visited_by[s]), "converged_runs_skipping": skip})
    times = {str(s): conv[s] for s in seeds}
    analysis = {
        "format": "latent.analysis/1",
        "convergence": {"metric": "val_acc", "threshold": 0.9, "direction": "above", "step_unit": "epoch",
                        "times": times, "never_converged": [s for s in seeds if conv[s] is None],
                        "rule": "runs that never converge are left out of the regression"},
        "occupancy": occupancy,
        "map": nx.node_link_data(g, edges="edges"),
        "regression": {"target": "convergence step", "design": "occupancy fractions, no intercept",
                       "states": list(range(k)),
                       "coef": [None if not visited_by[s] else coef[s] for s in range(k)],
                       "ci_low": [None if not visited_by[s] else coef[s] - ci_half[s] for s in range(k)],
                       "ci_high": [None if not visited_by[s] else coef[s] + ci_half[s] for s in range(k)],
                       "intercept": None, "r2": 0.93, "f_stat": 41.5, "p_value": 0.00042,
                       "n_runs": len(converged), "df_model": k, "df_resid": max(len(converged) - k, 1),
                       "n_boot": 1000, "boot_seed": 0, "note": "hand-made"},
        "detours": detours,
        "dissimilarity": {"value": 0.31, "ground_metric": "|i - j| over state indices"},
        "importance": importance,
    }
    _write_json(fit_dir / "analysis.json", analysis)
    return root


def make_toy_fit(store: Path) -> Path:
    """The small fit with known content described in the module docstring."""
    return make_fit_study(
        store, TOY_NAME, TOY_SEGMENTS, n_states=TOY_K, n_steps=TOY_N_STEPS, first_n=TOY_FIRST_N,
        features=TOY_FEATURES, coef=TOY_COEF, ci_half=TOY_CI_HALF, converged_state=3,
        step_every=TOY_STEP_EVERY, fit_id=TOY_FIT_ID, selection_best_k=TOY_SELECTION_BEST_K,
        importance_top=TOY_TOP_FEATURE,
    )


def make_big_fit(store: Path, n_seeds: int = 40, n_steps: int = 1000, k: int = 6, name: str = "big") -> Path:
    """A forking fit of ``n_seeds`` runs × ``n_steps`` checkpoints (all decoded), for timing.

    Paths: 0 → 1 → {4 directly | 3 → 4 | 2 → 3 → 4} → 5, with segment lengths drawn per seed, so
    states are in canonical order (by first visit) and 2 and 3 are the detours.
    """
    rng = np.random.default_rng(1)
    segments = {}
    for seed in range(n_seeds):
        route = [[0, 1, 4, 5], [0, 1, 3, 4, 5], [0, 1, 2, 3, 4, 5]][seed % 3]
        cuts = np.sort(rng.choice(np.arange(1, n_steps), size=len(route) - 1, replace=False))
        lengths = np.diff(np.concatenate([[0], cuts, [n_steps]]))
        segments[seed] = [(s, int(n)) for s, n in zip(route, lengths)]
    coef = [math.cos(i) * 100 for i in range(k)]
    coef[2], coef[3] = abs(coef[2]) + 50, abs(coef[3]) + 80
    return make_fit_study(store, name, segments, n_states=k, n_steps=n_steps, first_n=n_steps,
                          features=["l1", "l2", "spectral", "var_w"], coef=coef, ci_half=[30.0] * k,
                          converged_state=4, step_every=10, fit_id=f"k{k}-bench")
