"""Detours planted into real runs: does `latent fit` find a regime inserted into half of a real
study's runs, and stay quiet on the controls?

Real runs are not drawn from any model we fit (they drift inside phases, each seed sits at its
own offset), so recovery on simulated studies is not enough. Here the runs of a real default
study (`latent collect --task modadd --seeds 40`) get a regime planted by
:func:`latent.simulate.plant_regime`:

* ``displaced``: for ``length`` checkpoints the run leaves its path for a place ``size``
  across-run sds off it, wanders there, and comes back;
* ``pause``: the run stops moving for ``length`` checkpoints;
* ``slow``: the run moves steadily off its path (the paper's "slow road"), then comes back;

inserted into half of the runs at a random point of their plateau, delaying their convergence by
exactly ``length`` checkpoints. Two controls per kind: the regime in *every* run (an obligatory
phase, never a detour) and the regime replacing checkpoints instead of delaying (a state half the
runs visit that changes nothing). Each planted study is fitted (defaults, ``--family`` as asked,
no resamples) and scored by :func:`latent.simulate.score_plant`: the regime is *recovered* when
one fitted state holds its checkpoints with Jaccard index ≥ 0.5, *found* when that state is also
a detour; any other flagged state is a false detour, and a control is *clean* when nothing is
flagged.

    python bench/bench_planted.py                                # modadd, gaussian, 3 draws per cell
    python bench/bench_planted.py --families gaussian,hamilton --draws 5
    python bench/bench_planted.py --families gaussian,ar,hamilton --kinds displaced

Raw: bench/results/planted.jsonl (one line per fit; a rerun skips fits already there); the
``planted`` block of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import write_block  # noqa: E402

from latent.fit import FitConfig, fit_study  # noqa: E402
from latent.simulate import PlantConfig, plant_regime, score_plant, write_study  # noqa: E402
from latent.store import resolve_study  # noqa: E402

RAW = Path(__file__).with_name("results") / "planted.jsonl"
#: the cells: (label, PlantConfig fields); each is drawn --draws times (seeds 0..draws-1)
CELLS = [
    ("displaced", {"kind": "displaced", "size": 2.0}),
    ("displaced, every run", {"kind": "displaced", "size": 2.0, "fraction": 1.0}),
    ("displaced, no delay", {"kind": "displaced", "size": 2.0, "delay": False}),
    ("pause", {"kind": "pause"}),
    ("slow road", {"kind": "slow", "size": 3.0}),
    ("slow road, no delay", {"kind": "slow", "size": 3.0, "delay": False}),
]


def run_one(study, family: str, label: str, fields: dict, seed: int, table, meta) -> dict:
    cfg = PlantConfig(**fields, seed=seed)
    feats, conv = meta["features"], meta["convergence"]
    new, truth = plant_regime(table, feats, conv["metric"], conv["threshold"], cfg)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "planted"
        keep = ["seed", "step", "epoch", *feats, conv["metric"]]
        write_study(root, new[[c for c in keep if c in new.columns]], None, threshold=conv["threshold"])
        t0 = time.time()
        try:
            res = fit_study(resolve_study(tmp, "planted"), FitConfig(family=family, resamples=0, audit=False),
                            progress=False)
        except Exception as exc:  # a failed fit is a result too
            return {"study": study, "family": family, "cell": label, "seed": seed,
                    "control": fields.get("fraction", 0.5) == 1.0 or not fields.get("delay", True),
                    "error": f"{type(exc).__name__}: {exc}"[:300]}
        seconds = time.time() - t0
    sc = score_plant(truth, res.paths, res.analysis)
    control = fields.get("fraction", 0.5) == 1.0 or not fields.get("delay", True)
    return {"study": study, "family": family, "cell": label, "seed": seed, "control": control,
            "k": res.selector.n_states_, "max_states": res.config.max_states, "jaccard": sc["jaccard"],
            "recovered": sc["recovered"], "found": sc["found"], "false": len(sc["false"]),
            "flagged": sc["flagged"], "seconds": seconds, "measured": time.strftime("%Y-%m-%d", time.gmtime())}


def table(records: list[dict], families: list[str]) -> str:
    lines = ["| planted | family | draws | K (range) | regime recovered (one state) | found as a detour | "
             "draws with a false detour | clean (nothing flagged) | median s/fit | measured |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for label, fields in CELLS:
        for fam in families:
            rs = [r for r in records if r["cell"] == label and r["family"] == fam and "error" not in r]
            failed = sum(1 for r in records if r["cell"] == label and r["family"] == fam and "error" in r)
            if not rs:
                continue
            control = rs[0]["control"]
            ks = [r["k"] for r in rs]
            edge = sum(r["k"] == r["max_states"] for r in rs)
            found = "–" if control else f"{sum(r['found'] for r in rs)}/{len(rs)}"
            lines.append(
                f"| {label} | {fam} | {len(rs)}" + (f" ({failed} failed)" if failed else "") + f" | {min(ks)}–{max(ks)}" + (f" ({edge} at the edge)" if edge else "")
                + f" | {sum(r['recovered'] for r in rs)}/{len(rs)} | {found} | {sum(r['false'] > 0 for r in rs)}/{len(rs)}"
                f" | {sum(not r['flagged'] for r in rs)}/{len(rs)} | {np.median([r['seconds'] for r in rs]):.0f} | "
                + ", ".join(sorted({r.get("measured", "before 2026-12-07") for r in rs})) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default="data")
    ap.add_argument("--study", default="modadd")
    ap.add_argument("--families", default="gaussian")
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--kinds", default="displaced,pause,slow",
                    help="which regimes to plant and fit now (rows of other kinds already in the raw file are "
                         "still tabled)")
    ap.add_argument("--redo", action="store_true", help="fit again what the raw file has (the newest line of a fit is tabled)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    logging.getLogger("latent").setLevel(logging.ERROR)
    families = args.families.split(",")
    kinds = set(args.kinds.split(","))
    cells = [(label, fields) for label, fields in CELLS if fields["kind"] in kinds]
    study = resolve_study(args.store, args.study)
    meta = study.read_meta()
    table_in = pd.concat([pd.read_parquet(p) for p in sorted((study.root / "runs").glob("seed-*.parquet"))])
    done = [json.loads(line) for line in RAW.read_text().splitlines()] if RAW.exists() else []
    have = {(r["study"], r["family"], r["cell"], r["seed"]) for r in done}
    RAW.parent.mkdir(exist_ok=True)
    with RAW.open("a") as fh:
        for label, fields in cells:
            for seed in range(args.draws):
                for fam in families:
                    if (args.study, fam, label, seed) in have and not args.redo:
                        continue
                    rec = run_one(args.study, fam, label, fields, seed, table_in, meta)
                    print(json.dumps(rec), flush=True)
                    fh.write(json.dumps(rec) + "\n")
                    fh.flush()
                    done.append(rec)
    newest = {(r["study"], r["family"], r["cell"], r["seed"]): r for r in done}  # later lines replace earlier ones
    mine = [r for r in newest.values() if r["study"] == args.study and r["family"] in families and r["seed"] < args.draws]
    text = table(mine, families)
    print(text)
    if not args.no_write:
        write_block("planted", (
            f"Regimes planted into the real `{args.study}` study (40 runs; `latent collect --task {args.study} "
            f"--seeds 40`), fitted with `latent fit` defaults but `--family` and no resamples or audit. "
            "Planted: into 20 runs, 20 checkpoints long, starting at 30-70 % of the run's time before convergence, "
            "delaying it by 20 checkpoints; controls: in every run, or replacing checkpoints (no delay). "
            "Recovered: one fitted state holds the planted checkpoints with Jaccard index ≥ 0.5.\n\n"
            + text + f"\n\nRaw: bench/results/planted.jsonl. Command: `python bench/bench_planted.py --study "
            f"{args.study} --families FAMILIES --draws {args.draws} --kinds KINDS` (the rows of a family are the "
            "kinds it was run with); the raw file keeps every fit (lines from 2026-12-07 on carry their date) and a "
            "rerun skips the fits it has (`--redo` fits them again; the newest line of each fit is tabled)."),
            title="Detours planted into real runs (`bench/bench_planted.py`)", stamp_label="Last rows measured")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
