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

so the map has the edges 0→1 (6 runs), 1→3 (3), 1→2 (3), 2→3 (2). The detour rule is the
delay rule with ``min_runs = 3`` and ``alpha = 0.1``; convergence is restricted at τ = 390
(seed 5 counts as 390), so

    state 0, 1: obligatory (all six runs visit them)
    state 2:    tested; visited by seeds 3-5 (220, 240, 390), skipped by 0-2 (170, 150, 160):
                delay 283.33 - 160 = +123.33 epochs, exact permutation p = 1/20 = 0.05 < 0.1:
                the detour (and positive coefficient 130, so the paper rule agrees)
    state 3:    not estimable (only seed 5 skips it; observed delay 188 - 390 = -202)

Selection is 3-fold CV BIC; two of the three folds choose K = 4. The stability block says 19 of
20 resamples were used and state 2 is a detour again in 14 of them; ``analysis.warnings`` has
three entries (TOY_WARNINGS). ``make_old_toy_fit`` writes the same toy in the format before
per-state delay tests (``old_format=True``: no ``states``, ``selection``, ``stability``,
``warnings``, ``detour_rule``; detours carry the coefficient and its interval).
"""

from __future__ import annotations

import json
import math
from itertools import combinations
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
TOY_OLD_FIT_ID = "k4-bic-old"
TOY_MIN_RUNS = 3
TOY_ALPHA = 0.1
TOY_TAU = 390.0
TOY_STATUS = {0: "obligatory", 1: "obligatory", 2: "tested", 3: "not_estimable"}
TOY_DELAY = {2: (220 + 240 + 390) / 3 - (170 + 150 + 160) / 3, 3: (170 + 150 + 160 + 220 + 240) / 5 - 390}
TOY_P = {2: 0.05}  # exact: the visiting set {3, 4, 5} is the slowest of the C(6, 3) = 20 splits
TOY_FOLDS = 3
TOY_FOLD_CHOICE = {3: 1, 4: 2}
TOY_SE = {1: 60.0, 2: 45.0, 3: 30.0, 4: 0.0}  # K = 5 failed: no score, no SE
TOY_STABILITY = {"resamples": 20, "used": 19, "state_found": [19, 19, 15, 8], "detour_found": {2: 14}}
TOY_WARNINGS = [
    "1 of 6 run(s) never reach val_acc > 0.9: seeds 5 (rule: restrict)",
    "state 3 reappears in only 8 of 19 resamples of the runs: treat it with care",
    "1 of 20 stability resamples failed: resample 7: no restart of K=4 succeeded <diag>",
]

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


def _welch(a: np.ndarray, b: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Welch t interval of mean(a) - mean(b)."""
    from scipy import stats

    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1)) if va + vb > 0 else 1.0
    q = stats.t.ppf(0.5 + level / 2, df)
    diff = float(a.mean() - b.mean())
    return diff - q * se, diff + q * se


def _perm_p(y: np.ndarray, visit: np.ndarray, seed: int, n_perm: int = 4000) -> float:
    """One-sided permutation p of mean(y | visit) - mean(y | skip): exact when there are few splits."""
    n, nv = len(y), int(visit.sum())
    obs = y[visit].mean() - y[~visit].mean()

    def delay(idx):
        m = np.zeros(n, dtype=bool)
        m[list(idx)] = True
        return y[m].mean() - y[~m].mean()

    if math.comb(n, nv) <= 5000:
        ds = [delay(c) for c in combinations(range(n), nv)]
        return float(np.mean(np.asarray(ds) >= obs - 1e-9))
    rng = np.random.default_rng(seed)
    ds = [delay(rng.permutation(n)[:nv]) for _ in range(n_perm)]
    return float((1 + np.sum(np.asarray(ds) >= obs - 1e-9)) / (1 + n_perm))


def _holm(p: list[float]) -> list[float]:
    order = np.argsort(p)
    out, running = np.empty(len(p)), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        out[i] = running
    return out.tolist()


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
    min_runs: int = 5,
    alpha: float = 0.05,
    detour_rule: str = "delay",
    n_folds: int = 5,
    fold_choice: dict[int, int] | None = None,
    se: dict[int, float] | None = None,
    stability: dict | None = None,
    warnings: list[str] | None = None,
    old_format: bool = False,
) -> Path:
    """Write ``<store>/<name>/`` with runs and one fit ``fits/<fit_id>/``; return the study dir.

    ``segments[seed]`` is that seed's decoded path as ``(state, length)`` runs covering the
    first ``first_n`` checkpoints (the fit decodes only those; the rest of the run stays in
    the last state). ``val_acc`` crosses 0.9 exactly when a run first enters
    ``converged_state``, so convergence times follow from the segments.

    The per-state delay tests in ``analysis.states`` are computed here from those times, the
    way docs/fit.md defines them (restricted at τ = the last step, Welch interval, one-sided
    permutation p, exact when there are few splits, Holm-adjusted: simpler than the fit's maxT; the report only displays the numbers), independently of ``latent.detours``.
    ``stability`` is ``{"resamples", "used", "state_found": [...], "detour_found": {state: n}}``
    (default: every state found in all 20 resamples, every detour in 18); ``warnings`` defaults
    to what ``latent fit`` would log for never-converging runs and fold disagreement.
    ``old_format=True`` writes the format before these fields (see the module docstring).
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
    n_rows = len(seeds) * first_n
    selection = []
    for kk in range(1, k + 2):
        failed = kk == k + 1
        bic = 1000.0 + 40.0 * (kk - best_k) ** 2
        row = {
            "k": kk, "loglik_mean": None if failed else -500.0 - 30.0 * (kk - best_k) ** 2 + 5 * kk,
            "loglik_std": None if failed else 2.0 + kk, "aic": None if failed else bic - 20.0 * kk,
            "bic": None if failed else bic, "n_params": kk * kk + 2 * kk * d, "n_converged": 0 if failed else 3,
            "n_failed": 3 if failed else 0, "random_states": [1, 2, 3],
            "best_random_state": None if failed else 2,
        }
        if not old_format:
            se_k = (se or {}).get(kk, 0.0 if kk == best_k else 10.0 * abs(kk - best_k))
            row.update(
                loglik=None if failed else -(bic - row["n_params"] * math.log(n_rows)) / 2,
                score=None if failed else bic, se=None if failed else se_k,
                spread=None if failed else 4.0 + kk, failures=["random_state=1: degenerate"] * 3 if failed else [],
            )
        selection.append(row)
    fold_choice = {best_k: n_folds} if fold_choice is None else dict(fold_choice)
    scored = [r for r in selection if r["bic"] is not None and r["k"] != best_k]
    runner_up = min(scored, key=lambda r: (r["bic"], r["k"]))["k"] if scored else None
    if not old_format and runner_up is not None:
        chosen_row = selection[best_k - 1]
        chosen_row["gap_to_runner_up"] = abs(selection[runner_up - 1]["bic"] - chosen_row["bic"])
    folds = [seeds[i::n_folds] for i in range(n_folds)]
    model = {
        "format": "latent.fit/1", "fit_id": fit_id, "study": name,
        "config": {"features": features, "first_n": first_n, "scaling": "per_run", "max_states": k + 1,
                   "restarts": 3, "n_iter": 100, "covariance": "diag", "criterion": "bic", "random_state": 0,
                   "test_fraction": 0.2, "convergence_metric": "val_acc", "threshold": 0.9,
                   "direction": "above"},
        "n_states": k, "criterion": "bic", "features": features, "covariance_type": "diag",
        "startprob": startprob.tolist(), "transmat": transmat.tolist(), "means": means_z.tolist(),
        "covars": [np.eye(d).tolist() for _ in range(k)], "scaling": scaling, "selection": selection,
        "seeds": {"train": seeds[:-1], "test": seeds[-1:], "used": seeds, "excluded": {}}
        if old_format else {"train": seeds, "test": [], "folds": folds, "used": seeds, "excluded": {}},
        "state_order": list(range(k))[::-1], "versions": {"latent": "0.1.0", "hmmlearn": "0.3.3"},
        "command": f"latent fit --study {name} --max-states {k + 1}",
    }
    if not old_format:
        model["config"].update(selection="cv", folds=n_folds, one_se=True, detour_rule=detour_rule,
                               min_runs=min_runs, alpha=alpha, nonconverged="restrict")
        model["final_restarts"] = [{"k": k, "restart": r, "random_state": r + 1, "ok": True, "fold": None}
                                   for r in range(3)]
        model["command"] += f" --selection cv --folds {n_folds} --min-runs {min_runs} --alpha {alpha}"
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
    times = {str(s): conv[s] for s in seeds}
    if old_format:
        detours = []
        for s in range(k):
            if not visited_by[s]:
                continue
            skip = len(converged - visited_by[s])
            if skip > 0 and coef[s] > 0 and len(visited_by[s]) < len(seeds):
                detours.append({"state": s, "coef": coef[s], "ci_low": coef[s] - ci_half[s],
                                "ci_high": coef[s] + ci_half[s], "significant": coef[s] - ci_half[s] > 0,
                                "runs_visiting": len(visited_by[s]), "converged_runs_skipping": skip})
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

    # the delay tests, restricted at tau (the last step every run reaches)
    tau = float(steps[-1])
    y = np.array([tau if conv[s] is None else min(conv[s], tau) for s in seeds])
    visited = np.array([[s_ in visited_by[st] for st in range(k)] for s_ in seeds])
    n = len(seeds)
    rows, tested = [], []
    for st in range(k):
        nv = int(visited[:, st].sum())
        row = {"state": st, "runs_visiting": nv, "runs_skipping": n - nv, "delay": None, "ci_low": None,
               "ci_high": None, "p_value": None, "p_adjusted": None, "detour": False}
        if nv == n:
            row["status"] = "obligatory"
        elif nv == 0:
            row["status"] = "unvisited"
        else:
            a, b = y[visited[:, st]], y[~visited[:, st]]
            row["delay"] = float(a.mean() - b.mean())
            if min(nv, n - nv) < max(min_runs, 2):
                row["status"] = "not_estimable"
            else:
                row["status"] = "tested"
                row["ci_low"], row["ci_high"] = _welch(a, b)
                row["p_value"] = _perm_p(y, visited[:, st], rng_seed)
                tested.append(st)
        rows.append(row)
    for st, padj in zip(tested, _holm([rows[st]["p_value"] for st in tested])):
        rows[st]["p_adjusted"] = padj
        rows[st]["detour"] = bool(padj < alpha and rows[st]["delay"] > 0)
    estimable = [len(visited_by[st]) >= min_runs for st in range(k)]
    reg_coef = [coef[st] if estimable[st] else None for st in range(k)]
    paper = [st for st in range(k) if visited_by[st] and (converged - visited_by[st]) and reg_coef[st] is not None
             and reg_coef[st] > 0]
    flagged = [r["state"] for r in rows if r["detour"]] if detour_rule == "delay" else paper
    if stability is None:
        stability = {"resamples": 20, "used": 20, "state_found": [20] * k, "detour_found": {st: 18 for st in flagged}}
    used = stability["used"]
    stab = {"resamples": stability["resamples"], "used": used,
            "failures": [f"resample {i}: no restart of K={k} succeeded"
                         for i in range(stability["resamples"] - used)],
            "state_found": list(stability["state_found"]),
            "detour_found": {str(st): v for st, v in stability["detour_found"].items()},
            "new_detours": {}, "seed": 0, "k_folds": {str(kk): v for kk, v in fold_choice.items()}}
    for r in rows:
        st = r["state"]
        r.update(paper_rule=st in paper, coef=reg_coef[st],
                 coef_ci_low=None if reg_coef[st] is None else coef[st] - ci_half[st],
                 coef_ci_high=None if reg_coef[st] is None else coef[st] + ci_half[st],
                 coef_reference=None if reg_coef[st] is None else coef[st] - 10.0,
                 stability={"found": stab["state_found"][st], "of": used,
                            "detour_found": stability["detour_found"].get(st, 0)})
    detours = []
    for st in flagged:
        r = rows[st]
        detours.append({
            "state": st, "rule": detour_rule, "delay": r["delay"], "ci_low": r["ci_low"], "ci_high": r["ci_high"],
            "p_value": r["p_value"], "p_adjusted": r["p_adjusted"],
            "significant": r["detour"] if detour_rule == "delay" else bool(coef[st] - ci_half[st] > 0),
            "coef": r["coef"], "coef_ci_low": r["coef_ci_low"], "coef_ci_high": r["coef_ci_high"],
            "runs_visiting": r["runs_visiting"], "runs_skipping": r["runs_skipping"], "stability": r["stability"],
        })
    never = [s for s in seeds if conv[s] is None]
    if warnings is None:
        warnings = []
        if never:
            warnings.append(f"{len(never)} of {n} run(s) never reach val_acc > 0.9: seeds "
                            f"{', '.join(map(str, never))} (rule: restrict)")
        agree, total = fold_choice.get(best_k, 0), sum(fold_choice.values())
        if total and agree < total / 2:
            warnings.append(f"K = {best_k} is unstable: only {agree} of {total} folds choose it on their own "
                            "held-out runs (" + ", ".join(f"K={kk}: {v}" for kk, v in fold_choice.items()) + ")")
    rule = (f"convergence steps are restricted at tau = {tau:g} (the last step every run reaches): a run that "
            "never converges counts as tau, and means are restricted means")
    analysis = {
        "format": "latent.analysis/1",
        "convergence": {"metric": "val_acc", "threshold": 0.9, "direction": "above", "step_unit": "epoch",
                        "times": times, "tau": tau, "never_converged": never, "rule": rule},
        "occupancy": occupancy,
        "map": nx.node_link_data(g, edges="edges"),
        "states": rows,
        "regression": {"target": "convergence step (epoch) of val_acc > 0.9",
                       "design": "occupancy fractions, no intercept", "states": list(range(k)),
                       "coef": reg_coef,
                       "ci_low": [None if c is None else coef[st] - ci_half[st] for st, c in enumerate(reg_coef)],
                       "ci_high": [None if c is None else coef[st] + ci_half[st] for st, c in enumerate(reg_coef)],
                       "estimable": estimable,
                       "coef_reference": [None if c is None else c - 10.0 for c in reg_coef],
                       "intercept": float(y.mean()), "r2": 0.93, "f_stat": 41.5, "p_value": 0.00042,
                       "n_runs": n, "rank": sum(estimable), "df_model": max(sum(estimable) - 1, 0),
                       "df_resid": max(n - sum(estimable), 1), "n_boot": 1000, "n_boot_used": 1000,
                       "boot_seed": 0, "min_runs": min_runs, "note": rule},
        "detours": detours,
        "detour_rule": {"rule": detour_rule, "min_runs": min_runs, "alpha": alpha},
        "selection": {"procedure": "cv", "criterion": "bic", "one_se": True,
                      "folds": [[seeds.index(x) for x in f] for f in folds],
                      "fold_choice": {str(kk): v for kk, v in sorted(fold_choice.items())},
                      "fragile": False, "runner_up": runner_up},
        "stability": stab,
        "dissimilarity": {"value": 0.31, "ground_metric": "|i - j| over state indices"},
        "importance": importance,
        "warnings": list(warnings),
    }
    _write_json(fit_dir / "analysis.json", analysis)
    return root


def make_toy_fit(store: Path, old_format: bool = False, fit_id: str = TOY_FIT_ID) -> Path:
    """The small fit with known content described in the module docstring."""
    return make_fit_study(
        store, TOY_NAME, TOY_SEGMENTS, n_states=TOY_K, n_steps=TOY_N_STEPS, first_n=TOY_FIRST_N,
        features=TOY_FEATURES, coef=TOY_COEF, ci_half=TOY_CI_HALF, converged_state=3,
        step_every=TOY_STEP_EVERY, fit_id=fit_id, selection_best_k=TOY_SELECTION_BEST_K,
        importance_top=TOY_TOP_FEATURE, min_runs=TOY_MIN_RUNS, alpha=TOY_ALPHA, n_folds=TOY_FOLDS,
        fold_choice=TOY_FOLD_CHOICE, se=TOY_SE, stability=TOY_STABILITY, warnings=TOY_WARNINGS,
        old_format=old_format,
    )


def make_old_toy_fit(store: Path) -> Path:
    """The toy fit in the format before per-state delay tests (fit id ``TOY_OLD_FIT_ID``)."""
    return make_toy_fit(store, old_format=True, fit_id=TOY_OLD_FIT_ID)


def make_rare_fit(store: Path, name: str = "rare") -> Path:
    """Eight runs 0 → 1 → 3, except seeds 6 and 7, which take a slow detour through 2.

    State 2 is visited by only two runs (< min_runs = 3): its observed delay is large and
    positive, but it is *not estimable*: never tested, never a detour, and its regression
    coefficient is null. No state is tested, so there are no detours and no warnings but the
    not-estimable one.
    """
    segs = {s: [(0, 5), (1, 5 + s % 3), (3, 10 - s % 3)] for s in range(6)}
    segs[6] = [(0, 5), (1, 3), (2, 9), (3, 3)]
    segs[7] = [(0, 5), (1, 3), (2, 10), (3, 2)]
    return make_fit_study(store, name, segs, n_states=4, n_steps=20, first_n=20, features=["l1", "l2"],
                          coef=[-5.0, -20.0, 150.0, -30.0], ci_half=[5.0, 5.0, 40.0, 5.0], converged_state=3,
                          fit_id="k4-rare", min_runs=3, n_folds=4,
                          warnings=["state 2: visited by 2 and skipped by 6 run(s), too few (--min-runs 3) to "
                                    "test whether it delays convergence (observed delay +65)"])


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
