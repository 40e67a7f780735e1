"""The paper's slow road in a study: do the slowest runs take a road of their own?

Hu et al. (reference.md G3) find, in 40 modular-addition transformers without LayerNorm, a fork:
12 runs take a slow road on which the weight norm grows, and converge at 7,260 ± 3,010 epochs
against 3,530 ± 460 for the others. This script asks the same of any study in the store:

* **convergence**: each run's convergence step (the study's rule, e.g. val_acc > 0.9); the
  ``--slowest`` runs that converge last (runs that never converge count as the latest) against
  the others, mean ± sd of each group (runs that never converge are left out of the means);
* **the weight-norm signature**: a run *rises* when ``--feature`` (default ``l2``) goes more than
  ``--rise`` above its value at the start of ``--window`` (the first checkpoint at or after it)
  at some checkpoint inside the window; counts in each group and Fisher's exact test (one-sided:
  more rises among the slow runs);
* **which fit sees it**: for every fit of the study, the states that at least half the slow runs
  visit and at most a quarter of the others do (a road of their own), and the fit's detours. A
  fit whose slow runs only stay longer in the states everyone visits finds no such state.

    python bench/slow_road.py --study modadd-paper
    python bench/slow_road.py --study t59n-8000 --window 500 1500 --rise 0.05

Writes the ``slow-road-<study>`` block of bench/RESULTS.md (``--no-write``: print only).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import write_block  # noqa: E402

from latent.artifacts import load_fit  # noqa: E402
from latent.detours import convergence_step  # noqa: E402
from latent.store import resolve_study  # noqa: E402

#: a state is the slow runs' own when at least this share of them visit it ...
OWN_SLOW = 0.5
#: ... and at most this share of the other runs do
OWN_REST = 0.25


def convergence_by_run(table: pd.DataFrame, rule: dict) -> dict[int, int | None]:
    """``{seed: first step at which the rule holds, or None}``."""
    out = {}
    for seed, run in table.groupby("seed", sort=True):
        run = run.sort_values("step", kind="stable")
        out[int(seed)] = convergence_step(run["step"].to_numpy(), run[rule["metric"]].to_numpy(),
                                          float(rule["threshold"]), rule.get("direction", "above"))
    return out


def slowest_runs(conv: dict[int, int | None], n: int) -> tuple[list[int], list[int]]:
    """The ``n`` runs that converge last (runs that never converge are the latest), and the runs
    tied with the last of them that were left out (ties are broken by seed)."""
    inf = float("inf")
    key = {s: inf if conv[s] is None else conv[s] for s in conv}
    order = sorted(conv, key=lambda s: (-key[s], s))
    chosen, left = order[:n], order[n:]
    cut = key[chosen[-1]] if chosen else None
    return sorted(chosen), sorted(s for s in left if key[s] == cut)


def rises(table: pd.DataFrame, feature: str, start: float, stop: float, by: float) -> dict[int, bool]:
    """Per run: does ``feature`` exceed its value at the first checkpoint at or after ``start`` by
    more than ``by`` at some checkpoint in ``(that checkpoint, stop]``? Runs with no checkpoint in
    the window, or no value at its first checkpoint, are left out."""
    out = {}
    for seed, run in table.groupby("seed", sort=True):
        run = run.sort_values("step", kind="stable")
        steps, x = run["step"].to_numpy(float), run[feature].to_numpy(float)
        first = np.flatnonzero(steps >= start)
        if not first.size or steps[first[0]] > stop:
            continue
        i = first[0]
        if not np.isfinite(x[i]):
            continue
        inside = (steps > steps[i]) & (steps <= stop)
        out[int(seed)] = bool(np.any(x[inside] > x[i] + by))
    return out


def own_states(paths: pd.DataFrame, slow: list[int]) -> tuple[list[dict], list[int], int, int]:
    """Per state, the shares of slow and other runs that visit it (a visit: at least one checkpoint
    decoded in the state); the states that are the slow runs' own (visited by ≥ ``OWN_SLOW`` of
    them and ≤ ``OWN_REST`` of the others; none when either group is absent from ``paths``); and
    how many slow and other runs ``paths`` holds."""
    visits = paths.groupby("seed")["state"].agg(lambda s: set(int(v) for v in s))
    slow_set = set(slow)
    slow_runs = [v for s, v in visits.items() if int(s) in slow_set]
    rest_runs = [v for s, v in visits.items() if int(s) not in slow_set]
    rows, own = [], []
    if not slow_runs or not rest_runs:
        return [], [], len(slow_runs), len(rest_runs)
    for k in sorted(set().union(*visits.tolist())):
        a = sum(k in v for v in slow_runs) / max(1, len(slow_runs))
        b = sum(k in v for v in rest_runs) / max(1, len(rest_runs))
        rows.append({"state": k, "slow": a, "rest": b})
        if a >= OWN_SLOW and b <= OWN_REST:
            own.append(k)
    return rows, own, len(slow_runs), len(rest_runs)


def _mean_sd(values) -> str:
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if not v.size:
        return "– (none converges)"
    return f"{v.mean():,.0f} ± {v.std(ddof=1) if v.size > 1 else 0:,.0f}"


def report(store: str, name: str, slowest: int, feature: str, window: tuple[float, float], by: float) -> str:
    from scipy.stats import fisher_exact

    study = resolve_study(store, name)
    meta = study.read_meta()
    rule = meta.get("convergence")
    if not rule or rule.get("metric") is None:
        raise SystemExit(f"slow_road: study {name!r} records no convergence rule (study.json 'convergence')")
    table = study.read_runs()
    unit = meta.get("step_unit", "step")
    conv = convergence_by_run(table, rule)
    if not 0 < slowest < len(conv):
        raise SystemExit(f"slow_road: --slowest must be between 1 and {len(conv) - 1} (the study has {len(conv)} runs)")
    slow, tied = slowest_runs(conv, slowest)
    rest = [s for s in conv if s not in slow]
    never = [s for s in conv if conv[s] is None]
    lines = [f"Study `{name}`: {len(conv)} runs, convergence at {rule['metric']} "
             f"{'>' if rule.get('direction', 'above') == 'above' else '<'} {rule['threshold']}"
             f" ({len(conv) - len(never)} converge).", "",
             f"- **The {len(slow)} slowest runs** (seeds {', '.join(map(str, slow))}) converge at "
             f"{_mean_sd(conv[s] for s in slow)} {unit}s"
             + (f" ({sum(conv[s] is None for s in slow)} never)" if any(conv[s] is None for s in slow) else "")
             + f"; the other {len(rest)} at {_mean_sd(conv[s] for s in rest)}."
             + (f" Seeds {', '.join(map(str, tied))} converge with the last of the slow group and were left "
                "out by seed number." if tied else "")]
    if feature in table.columns:
        up = rises(table, feature, *window, by)
        a, b = sum(up.get(s, False) for s in slow), sum(up.get(s, False) for s in rest)
        na, nb = sum(s in up for s in slow), sum(s in up for s in rest)
        p = fisher_exact([[a, na - a], [b, nb - b]], alternative="greater")[1] if na and nb else None
        lines.append(f"- **`{feature}` rises** (more than {by:g} above its value at {unit} {window[0]:g}, by "
                     f"{unit} {window[1]:g}) in {a} of {na} slow runs and {b} of {nb} others"
                     + (f" (Fisher's exact test, one-sided: p = {p:.2g})." if p is not None else "."))
    else:
        lines.append(f"- The study does not record `{feature}`.")
    fits = study.fit_ids()
    if not fits:
        lines.append("- No fit of this study yet (`latent fit --study " + name + "`).")
    for fit in fits:
        model, paths, analysis = load_fit(study.fits_dir / fit)
        rows, own, n_slow, n_rest = own_states(paths, slow)
        detours = [d["state"] for d in analysis.get("detours", [])]
        fam = (model.get("config") or {}).get("family") or model.get("family") or "gaussian"
        held = "" if (n_slow, n_rest) == (len(slow), len(rest)) else \
            f" (its paths hold {n_slow} of the slow runs and {n_rest} of the others)"
        if not rows:
            lines.append(f"- Fit `{fit}` (K = {model['n_states']}, {fam}){held}: cannot compare the groups.")
            continue
        shares = ", ".join(f"{r['state']}: {r['slow']:.0%}/{r['rest']:.0%}" for r in rows)
        lines.append(f"- Fit `{fit}` (K = {model['n_states']}, {fam}){held}: "
                     + (f"state(s) {', '.join(map(str, own))} are the slow runs' own" if own else
                        "no state of the slow runs' own")
                     + f"; detours: {', '.join(map(str, detours)) or 'none'}. Share of slow/other runs visiting each "
                     f"state: {shares}.")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default="data")
    ap.add_argument("--study", required=True)
    ap.add_argument("--slowest", type=int, default=12, help="runs in the slow group (the paper: 12 of 40)")
    ap.add_argument("--feature", default="l2")
    ap.add_argument("--window", type=float, nargs=2, default=(500.0, 1500.0), metavar=("START", "STOP"))
    ap.add_argument("--rise", type=float, default=0.05)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    text = report(args.store, args.study, args.slowest, args.feature, tuple(args.window), args.rise)
    print(text)
    if not args.no_write:
        cmd = (f"python bench/slow_road.py --study {args.study} --slowest {args.slowest} --feature {args.feature} "
               f"--window {args.window[0]:g} {args.window[1]:g} --rise {args.rise:g}")
        write_block(f"slow-road-{args.study}", text + f"\n\nCommand: `{cmd}`.",
                    title=f"The slow road in `{args.study}` (`bench/slow_road.py`)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
