"""Does a fit over the Fourier progress measures recover Nanda et al.'s phases?

Nanda et al. (2023) split grokking of modular addition into **memorisation** (train accuracy
reaches 1, the network memorises), **circuit formation** (the generalising Fourier circuit forms:
restricted loss falls, excluded loss rises, while validation accuracy is still low) and
**cleanup** (weight decay removes the memorising solution: the sum of squared weights falls, and
validation accuracy jumps). This script fits a study's progress measures
(`latent fit --features progress`) and checks that story against the fitted states, with rules
written down here rather than read off by eye:

* each state's means and, while runs stay in it, its mean change per checkpoint of every progress
  measure (from the fit's own phases block);
* a state is **memorisation** while its mean train accuracy is below 0.99 (runs are still
  memorising), **circuit formation** once train accuracy is ~1, validation accuracy is below the
  convergence threshold and excluded loss rises inside it (positive rate), and **cleanup** once
  the sum of squared weights falls inside it and validation accuracy is at or above the threshold
  (states that fit none of these are "other");
* the order: do memorisation, circuit formation and cleanup come in that order along each run's
  path (canonical order is by mean first visit)?
* timing: the median over runs of the step at which a run enters its first circuit-formation
  state, against the median step at which its validation accuracy leaves chance (first checkpoint
  above twice chance, 2/p) and the median convergence step.

    python bench/validate_phases.py --study modadd-contrast     # after collecting it (docs/results.md)

Writes the ``phases-validation`` block of docs/results.md (``phases-validation-<study>`` for another
study) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import write_block  # noqa: E402

from latent.fit import FitConfig, fit_study, write_fit  # noqa: E402
from latent.store import resolve_study  # noqa: E402

MEASURES = ("restricted_loss", "excluded_loss", "embed_gini", "sum_sq_weights")


def label_states(phases: list[dict], threshold: float) -> dict[int, str]:
    """The rules of the module docstring, per state."""
    out = {}
    for r in phases:
        m = r["metrics"]
        rate = {x["feature"]: x["rate_z"] for x in r.get("moving") or []}
        train_acc, val_acc = m.get("train_acc"), m.get("val_acc")
        if train_acc is None or val_acc is None:
            out[r["state"]] = "other"
        elif train_acc < 0.99:
            out[r["state"]] = "memorisation"
        elif val_acc < threshold and rate.get("excluded_loss", 0) > 0:
            out[r["state"]] = "circuit formation"
        elif val_acc >= threshold and rate.get("sum_sq_weights", 0) < 0:
            out[r["state"]] = "cleanup"
        else:
            out[r["state"]] = "other"
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default="data")
    ap.add_argument("--study", default="modadd-contrast")
    ap.add_argument("--features", default="progress")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    study = resolve_study(args.store, args.study)
    result = fit_study(study, FitConfig(features=(args.features,)), progress=False)
    out_dir = write_fit(study, result)
    a = result.analysis
    threshold = float(a["convergence"]["threshold"])
    phases = a["phases"]["states"]
    labels = label_states(phases, threshold)
    meta = study.read_meta()
    p = int(meta["config"]["p"])
    paths = result.paths.sort_values(["seed", "step"])
    table = pd.concat([pd.read_parquet(f) for f in sorted((study.root / "runs").glob("seed-*.parquet"))])
    chance_steps, circuit_steps, jump_steps = [], [], []
    for seed, g in paths.groupby("seed", sort=True):
        run = table[table["seed"] == seed].sort_values("step")
        above = run.loc[run["val_acc"] > 2.0 / p, "step"]
        chance_steps.append(float(above.iloc[0]) if len(above) else np.nan)
        # the jump Nanda et al. time circuit formation against: first above half the convergence threshold
        half = run.loc[run["val_acc"] > threshold / 2, "step"]
        jump_steps.append(float(half.iloc[0]) if len(half) else np.nan)
        inside = g.loc[g["state"].map(labels) == "circuit formation", "step"]
        circuit_steps.append(float(inside.iloc[0]) if len(inside) else np.nan)
    conv = [v for v in a["convergence"]["times"].values() if v is not None]
    order = []
    for _, g in paths.groupby("seed", sort=True):
        seen = [labels[int(s)] for s in g["state"]]
        firsts = {name: seen.index(name) for name in ("memorisation", "circuit formation", "cleanup") if name in seen}
        order.append(list(firsts) == sorted(firsts, key=firsts.get) and len(firsts) == 3)
    rows = ["| state | reads as | runs | steps (p10–p90) | train_acc | val_acc | "
            + " | ".join(MEASURES) + " | moving in it (z per checkpoint) |",
            "|---|---|---|---|---|---|" + "---|" * len(MEASURES) + "---|"]
    for r in phases:
        m = r["metrics"]
        st = r.get("steps") or {}
        moving = ", ".join(f"{x['feature']} {x['rate_z']:+.3f}" for x in (r.get("moving") or [])[:3])
        rows.append(f"| {r['state']} | {labels[r['state']]} | {r['runs']} | {st.get('p10', '–'):g}–{st.get('p90', '–'):g} | "
                    f"{m.get('train_acc', float('nan')):.2f} | {m.get('val_acc', float('nan')):.2f} | "
                    + " | ".join(f"{m.get(x, float('nan')):.3g}" for x in MEASURES) + f" | {moving} |")
    med = lambda v: float(np.nanmedian(v)) if np.isfinite(v).any() else float("nan")  # noqa: E731
    circuit = np.array(circuit_steps, dtype=float)
    chance = np.array(chance_steps, dtype=float)
    both = np.isfinite(circuit) & np.isfinite(chance)
    jump = np.array(jump_steps, dtype=float)
    both_jump = np.isfinite(circuit) & np.isfinite(jump)
    summary = {
        "K": result.selector.n_states_, "runs": len(paths["seed"].unique()),
        "order_ok": int(sum(order)), "circuit_entry_median": med(circuit), "chance_exit_median": med(chance),
        "circuit_before_chance": int((circuit[both] < chance[both]).sum()), "both": int(both.sum()),
        "jump_median": med(jump), "circuit_before_jump": int((circuit[both_jump] < jump[both_jump]).sum()),
        "both_jump": int(both_jump.sum()),
        "convergence_median": float(np.median(conv)) if conv else None,
        "detours": [d["state"] for d in a["detours"]], "verdict": a["boundaries"]["verdict"],
        "ppc_outside": a["ppc"]["outside_names"], "fit": str(out_dir),
    }
    text = ("\n".join(rows) + "\n\n"
            f"K = {summary['K']} over {summary['runs']} runs (`latent fit --study {args.study} --features "
            f"{args.features}`). Memorisation, circuit formation and cleanup come in that order in "
            f"{summary['order_ok']} of {summary['runs']} runs. "
            + (f"Runs enter circuit formation at a median step {summary['circuit_entry_median']:g}; their validation "
               f"accuracy leaves chance (first above 2/p) at a median {summary['chance_exit_median']:g} (circuit "
               f"formation first in {summary['circuit_before_chance']} of {summary['both']} runs), and jumps (first above "
               f"half the threshold, {threshold / 2:g}) at a median {summary['jump_median']:g} (circuit formation "
               f"first in {summary['circuit_before_jump']} of {summary['both_jump']} runs); "
               if summary["both"] else
               "No state reads as circuit formation (none has validation accuracy below the threshold with excluded "
               f"loss rising); validation accuracy leaves chance (first above 2/p) at a median "
               f"{summary['chance_exit_median']:g}; ")
            + f"they converge at a median {summary['convergence_median']:g}. Transitions: "
            f"{summary['verdict']}. Detours: {', '.join(map(str, summary['detours'])) or 'none'}. Posterior "
            f"predictive checks failed: {', '.join(summary['ppc_outside']) or 'none'}.")
    print(text)
    print(json.dumps(summary))
    if not args.no_write:
        # one block per study: the contrast study keeps the original block name
        block = "phases-validation" if args.study == "modadd-contrast" else f"phases-validation-{args.study}"
        write_block(block, text + f"\n\nCommand: `python bench/validate_phases.py --study {args.study}`.",
                    path=ROOT / "docs" / "results.md",
                    title=f"Nanda et al.'s phases from the progress measures ({args.study})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
