"""Does the answer on real studies survive a change of seed, of runs and of state family?

For each default study in the store (as `latent collect --task T --seeds 40` names them) and each
state family, `latent fit`'s defaults are run six times: on all runs with ``--random-state`` 0, 1
and 2, and on three random 30-run subsets (seeded; random state 0). The first fit also runs the
20 stability resamples. Per study and family the table says:

* K of each fit, and whether it is at the edge of the range searched (K = ``--max-states``);
* fold agreement: the share of the 5 folds whose own held-out runs choose the reported K (fit 1);
* state recurrence: the smallest share of the 20 resamples in which a reported state reappears;
* detours and R² of each fit;
* the issue-20 criteria: K not at the edge, the same K in ≥ 80 % of the six fits and of the
  folds, every state recurring in ≥ 90 % of resamples.

    python bench/bench_real_stability.py                       # modadd, parity, mnist (+ contrast pair if collected)
    python bench/bench_real_stability.py --studies modadd --families gaussian
    python bench/bench_real_stability.py --table-only           # the block again from the raw results

Raw results: bench/results/real-stability.json (a run replaces the rows of the studies and families
it measures and keeps the others); the ``real-stability`` block of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import DEFAULT_STUDIES, present_studies, write_block  # noqa: E402

from latent.family import FAMILIES  # noqa: E402
from latent.fit import FitConfig, fit_study  # noqa: E402
from latent.store import Study, resolve_study  # noqa: E402

RAW = Path(__file__).with_name("results") / "real-stability.json"
SUBSET = 30


def subset_study(study: Study, seeds: list[int], root: Path) -> Study:
    """A study of ``seeds`` only: its study.json with those seeds, the run files linked."""
    meta = json.loads((study.root / "study.json").read_text())
    meta["seeds"] = sorted(int(s) for s in seeds)
    (root / "runs").mkdir(parents=True)
    (root / "study.json").write_text(json.dumps(meta))
    for s in seeds:
        for ext in ("parquet", "json"):
            src = study.root / "runs" / f"seed-{int(s):03d}.{ext}"
            if src.exists():
                os.symlink(src.resolve(), root / "runs" / src.name)
    return Study(root)


def one_fit(study: Study, cfg: FitConfig, label: str) -> dict:
    t0 = time.perf_counter()
    r = fit_study(study, cfg, n_jobs=os.cpu_count())
    a = r.analysis
    stab = a.get("stability") or {}
    used = stab.get("used") or 0
    found = stab.get("state_found") or []
    return {"label": label, "K": r.model["n_states"], "max_states": cfg.max_states,
            "fold_choice": a["selection"]["fold_choice"], "r2": a["regression"]["r2"],
            "detours": [d["state"] for d in a["detours"]],
            "state_recurrence": (min(found) / used) if used and found else None,
            "robust_states": None if not a.get("audit") else sum(r["robust"] for r in a["audit"]["states"]),
            "robust_detours": None if not a.get("audit") else [d["state"] for d in a["audit"]["detours"] if d["robust"]],
            "discrete": a["boundaries"]["discrete_transitions"], "judged": a["boundaries"]["judged_transitions"],
            "ppc_outside": a["ppc"]["outside_names"],
            "seconds": time.perf_counter() - t0}


def measure(name: str, store: str, family: str) -> dict:
    study = resolve_study(store, name)
    seeds = json.loads((study.root / "study.json").read_text())["seeds"]
    fits = []
    for rs in (0, 1, 2):
        cfg = FitConfig(family=family, random_state=rs, resamples=20 if rs == 0 else 0, audit=rs == 0)
        fits.append(one_fit(study, cfg, f"seed {rs}"))
        print(f"  {name} {family} random state {rs}: K = {fits[-1]['K']}", flush=True)
    rng = np.random.default_rng(np.random.SeedSequence(2026, spawn_key=(len(seeds),)))
    for i in range(3):
        chosen = sorted(rng.choice(seeds, size=min(SUBSET, len(seeds) - 1), replace=False).tolist())
        with tempfile.TemporaryDirectory() as tmp:
            sub = subset_study(study, chosen, Path(tmp) / name)
            fits.append(one_fit(sub, FitConfig(family=family, resamples=0, audit=False), f"subset {i}"))
        print(f"  {name} {family} subset {i}: K = {fits[-1]['K']}", flush=True)
    return {"study": name, "family": family, "fits": fits,
            "measured": time.strftime("%Y-%m-%d", time.gmtime())}


def verdict(row: dict) -> dict:
    fits = row["fits"]
    ks = [f["K"] for f in fits]
    first = fits[0]
    folds = first["fold_choice"]
    fold_share = folds.get(str(first["K"]), 0) / max(1, sum(folds.values()))
    mode = max(set(ks), key=ks.count)
    rec = first["state_recurrence"]
    return {"edge": any(f["K"] == f["max_states"] for f in fits), "same_k": ks.count(mode) / len(ks), "mode": mode,
            "fold_share": fold_share, "recurrence": rec,
            "ok": (not any(f["K"] == f["max_states"] for f in fits)) and ks.count(mode) / len(ks) >= 0.8
            and fold_share >= 0.8 and rec is not None and rec >= 0.9}


def _detours(fit: dict) -> str:
    if not fit["detours"]:
        return "none"
    robust = set(fit["robust_detours"] or [])
    return ", ".join(f"{d} ({'yes' if d in robust else 'no'})" for d in fit["detours"])


def _pct(x) -> str:
    return "–" if x is None else f"{x:.0%}"


def _r2(x) -> str:
    return "–" if x is None else f"{x:.2f}"


def table(rows: list[dict]) -> str:
    lines = ["| study | family | K: random state 0, 1, 2 | K: 30-run subsets | K at the edge | same K (6 fits) | "
             "folds choosing K | least state recurrence | robust states (audit) | detours (robust) | R² (all six) | "
             "discrete transitions (of judged, six fits) | posterior predictive checks failed (first fit) | "
             "meets the criteria | measured |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        v = verdict(r)
        f = r["fits"]
        lines.append(
            f"| {r['study']} | {r['family']} | {', '.join(str(x['K']) for x in f[:3])} | "
            f"{', '.join(str(x['K']) for x in f[3:])} | {'yes' if v['edge'] else 'no'} | {v['same_k']:.0%} | "
            f"{v['fold_share']:.0%} | {_pct(v['recurrence'])} | {f[0]['robust_states']} of {f[0]['K']} | "
            f"{_detours(f[0])} | "
            f"{', '.join(_r2(x['r2']) for x in f)} | "
            + (", ".join(f"{x['discrete']}/{x['judged']}" for x in f) if all("discrete" in x for x in f) else "–")
            + " | " + ((", ".join(f[0]["ppc_outside"]) or "none") if "ppc_outside" in f[0] else "–")
            + f" | {'yes' if v['ok'] else 'no'} | {r.get('measured', '–')} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", default="data")
    ap.add_argument("--studies", default=",".join(DEFAULT_STUDIES))
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--table-only", action="store_true", help="rewrite the block from the raw results, fitting nothing")
    args = ap.parse_args(argv)
    rows = []
    for name in [] if args.table_only else present_studies(args.store, args.studies):
        for family in args.families.split(","):
            rows.append(measure(name, args.store, family))
    if not rows and not args.table_only:
        print("no study measured; collect the default studies first", file=sys.stderr)
        return 2
    # rows of other studies and families measured before are kept (one run need not redo them all)
    fresh = {(r["study"], r["family"]) for r in rows}
    kept = json.loads(RAW.read_text()) if RAW.exists() else []
    rows = [r for r in kept if (r["study"], r["family"]) not in fresh] + rows
    if not rows:
        print("no rows to table; run without --table-only first", file=sys.stderr)
        return 2
    order = {name: i for i, name in enumerate(DEFAULT_STUDIES)}
    rows.sort(key=lambda r: (order.get(r["study"], len(order)), r["study"],
                             FAMILIES.index(r["family"]) if r["family"] in FAMILIES else len(FAMILIES)))
    body = (table(rows) + "\n\nEach row: `latent fit` with its defaults and `--family`, on all runs with three "
            "random states and on three random 30-run subsets; the first fit also runs the 20 resamples and "
            "the robustness audit (robust: surviving 75 % of the alternative fits, docs/fit.md). Criteria "
            "(issue 20): K never at the edge "
            f"(`--max-states` {FitConfig().max_states}), the same K in at least 80 % of the six fits and of the "
            "folds, every reported state reappearing in at least 90 % of the 20 resamples. Raw: "
            "bench/results/real-stability.json (the date each row was measured is its last column; a – in the "
            "transitions or posterior predictive column: the row predates it). Command: "
            "`python bench/bench_real_stability.py` (`--studies`, `--families` to redo some rows), after the "
            "studies are collected: `latent collect --task T --seeds 40` for modadd, parity and mnist, and "
            "`latent collect --task modadd --preset contrast --seeds 40` with and without `--layernorm` for the "
            "contrast pair.")
    print(body)
    if not args.no_write:
        RAW.parent.mkdir(exist_ok=True)
        RAW.write_text(json.dumps(rows, indent=1) + "\n")
        write_block("real-stability", body, title="The answer on real studies, across seeds, runs and families "
                    "(`bench/bench_real_stability.py`)",
                    stamp_label="Tabled from the stored rows (each dated in its last column)" if args.table_only
                    else "Last rows measured")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
