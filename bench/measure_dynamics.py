"""How real training runs move inside their states: the numbers the realistic simulations use.

For each study named (default: every task's default study in the store, as `latent collect
--task T --seeds 40` names them), fit the default Gaussian HMM (no resamples: only the decoded
states are needed), and measure on the fit's own z-scored features and Viterbi states:

* **within-state autocorrelation**: per state and feature, the lag-1 autocorrelation of the
  checkpoints inside the state, pooled over every stretch of at least 10 consecutive checkpoints
  (each stretch demeaned on its own); the median over features per state;
* **drift**: per state and feature, the share of within-stretch variance a straight line in time
  explains (pooled R²); the median over features;
* **per-run offsets**: per state and feature, over runs with at least 5 checkpoints in the
  state, the standard deviation across runs of the run's mean there, in units of the pooled
  within-run standard deviation; the median over features, and the largest;
* **intraclass correlation** (ICC, one-way random effects): the share of a state's variance
  that lies between runs; independent draws give ≈ 1/n per run.
* **offset persistence**: whether a run's offset in one state carries into the next: for every
  pair of states both measured (at least 5 checkpoints) in at least 8 runs, per feature, the
  correlation across those runs of the run's offset (its mean there minus the state's mean over
  runs) in the one state and in the other; the median over features, for the pairs of states
  that follow each other on the runs' paths (a run effect shared by every state gives 1, offsets
  drawn afresh in each state give 0).

It writes bench/results/dynamics.json (per study and state) and the ``dynamics`` block of
bench/RESULTS.md, whose ranges set the ``realistic`` simulation family
(:mod:`latent.simulate`).

    python bench/measure_dynamics.py                   # modadd, parity, mnist (+ the contrast pair if collected)
    python bench/measure_dynamics.py --studies modadd
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import DEFAULT_STUDIES, present_studies, write_block  # noqa: E402

from latent.fit import FitConfig, fit_study  # noqa: E402
from latent.store import resolve_study  # noqa: E402

RAW = Path(__file__).with_name("results") / "dynamics.json"
MIN_STRETCH = 10
MIN_ROWS = 5


def stretches(path: np.ndarray, k: int, least: int = MIN_STRETCH) -> list[tuple[int, int]]:
    """``(start, stop)`` of every run of consecutive checkpoints in state ``k`` at least ``least`` long."""
    out, start = [], None
    for t, s in enumerate(list(path) + [-1]):
        if s == k and start is None:
            start = t
        elif s != k and start is not None:
            if t - start >= least:
                out.append((start, t))
            start = None
    return out


def state_dynamics(runs_z: list[np.ndarray], runs_path: list[np.ndarray], k: int) -> dict | None:
    """The four measures of one state (module docstring), or None if it has no stretch to measure."""
    num = den = 0.0
    trend_ss = total_ss = 0.0
    d = runs_z[0].shape[1]
    num, den, trend_ss, total_ss = (np.zeros(d) for _ in range(4))
    run_means, run_vars, run_n = [], [], []
    for z, path in zip(runs_z, runs_path):
        for a, b in stretches(path, k):
            x = z[a:b] - z[a:b].mean(axis=0)
            num += (x[1:] * x[:-1]).sum(axis=0)
            den += (x * x).sum(axis=0)
            t = np.arange(b - a) - (b - a - 1) / 2
            slope = (t[:, None] * x).sum(axis=0) / (t * t).sum()
            trend_ss += slope**2 * (t * t).sum()
            total_ss += (x * x).sum(axis=0)
        rows = z[path == k]
        if len(rows) >= MIN_ROWS:
            run_means.append(rows.mean(axis=0))
            run_vars.append(rows.var(axis=0, ddof=1))
            run_n.append(len(rows))
    if not (den > 0).any():
        return None
    ok = den > 1e-12
    out = {"autocorrelation": float(np.median(num[ok] / den[ok])),
           "drift_r2": float(np.median(trend_ss[ok] / total_ss[ok]))}
    if len(run_means) >= 3:
        means, n = np.array(run_means), np.array(run_n, dtype=float)
        within = np.sqrt(np.average(np.array(run_vars), axis=0, weights=n - 1))
        spread = means.std(axis=0, ddof=1)
        good = within > 1e-12
        offset = spread[good] / within[good]
        n0 = (n.sum() - (n**2).sum() / n.sum()) / (len(n) - 1)  # one-way ANOVA's mean group size
        msb = (n[:, None] * (means - np.average(means, axis=0, weights=n)) ** 2).sum(axis=0) / (len(n) - 1)
        msw = within**2
        icc = (msb - msw) / (msb + (n0 - 1) * msw)
        out.update(offset_sd=float(np.median(offset)), offset_sd_max=float(np.max(offset)),
                   icc=float(np.median(icc[good])), runs_measured=len(n))
    else:
        out.update(offset_sd=None, offset_sd_max=None, icc=None, runs_measured=len(run_means))
    return out


def offset_persistence(runs_z: list[np.ndarray], runs_path: list[np.ndarray], K: int,
                       least_runs: int = 8) -> list[dict]:
    """Per pair of consecutive states (a run leaves the first for the second), the median over
    features of the across-run correlation of the run's offsets in the two states (module docstring)."""
    means = np.full((len(runs_z), K, runs_z[0].shape[1]), np.nan)
    follows = np.zeros((K, K), dtype=int)
    for r, (z, path) in enumerate(zip(runs_z, runs_path)):
        for k in range(K):
            if (path == k).sum() >= MIN_ROWS:
                means[r, k] = z[path == k].mean(axis=0)
        order = [int(s) for i, s in enumerate(path) if i == 0 or s != path[i - 1]]
        for a, b in zip(order, order[1:]):
            follows[a, b] += 1
    out = []
    for a in range(K):
        for b in range(K):
            if a == b or follows[a, b] < least_runs:
                continue
            both = ~np.isnan(means[:, a, 0]) & ~np.isnan(means[:, b, 0])
            if both.sum() < least_runs:
                continue
            oa = means[both, a] - means[both, a].mean(axis=0)
            ob = means[both, b] - means[both, b].mean(axis=0)
            den = np.sqrt((oa**2).sum(axis=0) * (ob**2).sum(axis=0))
            good = den > 1e-12
            if good.any():
                r = (oa * ob).sum(axis=0)[good] / den[good]
                out.append({"from": a, "to": b, "runs": int(both.sum()), "correlation": float(np.median(r))})
    return out


def measure(study_name: str, store: str) -> dict:
    study = resolve_study(store, study_name)
    result = fit_study(study, FitConfig(resamples=0, n_boot=0, audit=False))
    return measure_fit(study_name, result)


def measure_fit(study_name: str, result) -> dict:
    """The measures of one fitted study (a real one, or a simulated one for comparison)."""
    fm = result.features
    runs_z, runs_path = fm.split(fm.X), fm.split(result.paths["state"].to_numpy())
    K = result.model["n_states"]
    states = []
    for k in range(K):
        m = state_dynamics(runs_z, runs_path, k)
        if m is not None:
            m["state"] = k
            m["occupancy"] = float(np.mean(np.concatenate(runs_path) == k))
            states.append(m)
    return {"study": study_name, "fit_id": result.fit_id, "K": K, "runs": len(runs_z),
            "checkpoints": int(np.median([len(z) for z in runs_z])), "states": states,
            "persistence": offset_persistence(runs_z, runs_path, K)}


def measure_simulated(i: int, family: str = "realistic", level: str = "medium") -> dict:
    """The same measures on the i-th draw of a simulation family, on its *true* states (what the
    simulator produces, to set beside what the real studies' fits show)."""
    from latent.simulate import feature_names, random_config, simulate

    cfg = random_config(family, level, i)
    table, truth = simulate(cfg)
    names = feature_names(cfg.n_features)
    runs = [g.sort_values("step")[names].to_numpy() for _, g in table.groupby("seed")]
    pooled = np.vstack(runs)
    runs_z = [(r - pooled.mean(axis=0)) / pooled.std(axis=0) for r in runs]
    runs_path = [truth.paths[s] for s in sorted(truth.paths)]
    K = truth.n_states
    states = [dict(m, state=k) for k in range(K) if (m := state_dynamics(runs_z, runs_path, k)) is not None]
    label = (f"{family} draw {i} (true states; ar {cfg.ar:.3f}, offset {cfg.offset:.2f}, persistence "
             f"{cfg.persistence:.2f}, drift {cfg.drift:.3f})")
    return {"study": label, "fit_id": None, "K": K, "runs": len(runs), "checkpoints": cfg.n_checkpoints,
            "states": states, "persistence": offset_persistence(runs_z, runs_path, K)}


def _range(values) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    lo, hi = min(values), max(values)
    return f"{lo:.3g}" if np.isclose(lo, hi) else f"{lo:.3g}–{hi:.3g}"


def table(rows: list[dict]) -> str:
    lines = ["| study | K (default fit; simulated: true) | runs × checkpoints | within-state lag-1 autocorrelation | drift R² | "
             "per-run offset (within-state sds, median feature) | largest feature | ICC | "
             "offset persistence (consecutive states) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r["states"]
        lines.append(f"| {r['study']} | {r['K']} | {r['runs']} × {r['checkpoints']} | "
                     f"{_range([x['autocorrelation'] for x in s])} | {_range([x['drift_r2'] for x in s])} | "
                     f"{_range([x['offset_sd'] for x in s])} | {_range([x['offset_sd_max'] for x in s])} | "
                     f"{_range([x['icc'] for x in s])} | "
                     f"{_range([x['correlation'] for x in r.get('persistence', [])])} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", default="data")
    ap.add_argument("--studies", default=",".join(DEFAULT_STUDIES),
                    help="comma-separated study names; those not in the store are skipped")
    ap.add_argument("--simulated", type=int, default=0, metavar="N",
                    help="also measure N draws of the realistic simulation family (medium) on their true states, "
                         "to check that they move as the real studies do")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    rows = []
    for name in present_studies(args.store, args.studies):
        rows.append(measure(name, args.store))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    for i in range(args.simulated):
        rows.append(measure_simulated(i))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    if not rows:
        print("no study measured; collect the default studies first (latent collect --task modadd --seeds 40)",
              file=sys.stderr)
        return 2
    command = "python bench/measure_dynamics.py" + (f" --simulated {args.simulated}" if args.simulated else "")
    body = (table(rows) + "\n\nRanges are over the states of each study's default fit (`latent fit`, Gaussian HMM; "
            "states with stretches of at least 10 consecutive checkpoints); for the `realistic` simulation draws, "
            "over their true states, with the draw's settings in brackets (`latent/simulate.py` draws them per "
            "study from ranges chosen so that these measures fall where the real studies' do). Offsets and ICC use "
            "the runs with at least 5 checkpoints in the state; an ICC near 1/(checkpoints per run) would mean no "
            "run effect. Offset persistence: the correlation across runs of a run's offsets in two states it "
            "visits one after the other (median feature; 1: one offset per run, 0: a new one in each state). Per "
            f"state: bench/results/dynamics.json. Command: `{command}`.")
    print(body)
    if not args.no_write:
        RAW.parent.mkdir(exist_ok=True)
        RAW.write_text(json.dumps(rows, indent=1) + "\n")
        write_block("dynamics", body, title="dynamics of real runs inside their states (`bench/measure_dynamics.py`)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
