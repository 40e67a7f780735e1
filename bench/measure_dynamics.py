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


def measure(study_name: str, store: str) -> dict:
    study = resolve_study(store, study_name)
    result = fit_study(study, FitConfig(resamples=0, n_boot=0, audit=False))
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
            "checkpoints": int(np.median([len(z) for z in runs_z])), "states": states}


def _range(values) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    lo, hi = min(values), max(values)
    return f"{lo:.3g}" if np.isclose(lo, hi) else f"{lo:.3g}–{hi:.3g}"


def table(rows: list[dict]) -> str:
    lines = ["| study | K (default fit) | runs × checkpoints | within-state lag-1 autocorrelation | drift R² | "
             "per-run offset (within-state sds, median feature) | largest feature | ICC |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r["states"]
        lines.append(f"| {r['study']} | {r['K']} | {r['runs']} × {r['checkpoints']} | "
                     f"{_range([x['autocorrelation'] for x in s])} | {_range([x['drift_r2'] for x in s])} | "
                     f"{_range([x['offset_sd'] for x in s])} | {_range([x['offset_sd_max'] for x in s])} | "
                     f"{_range([x['icc'] for x in s])} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", default="data")
    ap.add_argument("--studies", default=",".join(DEFAULT_STUDIES),
                    help="comma-separated study names; those not in the store are skipped")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    rows = []
    for name in present_studies(args.store, args.studies):
        rows.append(measure(name, args.store))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    if not rows:
        print("no study measured; collect the default studies first (latent collect --task modadd --seeds 40)",
              file=sys.stderr)
        return 2
    body = (table(rows) + "\n\nRanges are over the states of each study's default fit (`latent fit`, Gaussian HMM; "
            "states with stretches of at least 10 consecutive checkpoints). Offsets and ICC use the runs with at "
            "least 5 checkpoints in the state; an ICC near 1/(checkpoints per run) would mean no run effect. "
            "Per state: bench/results/dynamics.json. Command: `python bench/measure_dynamics.py`.")
    print(body)
    if not args.no_write:
        RAW.parent.mkdir(exist_ok=True)
        RAW.write_text(json.dumps(rows, indent=1) + "\n")
        write_block("dynamics", body, title="dynamics of real runs inside their states (`bench/measure_dynamics.py`)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
