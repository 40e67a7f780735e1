"""Forecast benchmark: do `latent predict`'s intervals and detour calls come true on held-out runs?

Planted studies (latent.simulate: exact HMM and gamma-duration semi-Markov families, three
separation levels): each draw simulates 60 runs, fits the first 40 (the default fit, no stability
resamples), and predicts the other 20 from prefixes of 2 %, 4 %, ... 90 % of their checkpoints.
Scored against the truth: the interval covers the true convergence step (runs not converged at the
cut), the detour risk (calibration, Brier score), how early a run's detour entry is called (risk >=
0.5) and warned of (its current state is the detour), and the current state's accuracy, with the
fit's global scaling and with per-run scaling of the prefix (its cost).

Real modadd: a 40-seed study (`latent collect --task modadd --seeds 40`) split into 4 folds of
10 held-out seeds; each fold is fitted on the other 30 and its held-out runs predicted.

    python bench/bench_predict.py                              # everything, writes bench/RESULTS.md
    python bench/bench_predict.py --draws 2 --no-write         # a smoke test
    python bench/bench_predict.py --modadd data/modadd         # where the real study is
    python bench/bench_predict.py --from-raw                   # the tables again from the saved records
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import write_block  # noqa: E402

from latent.fit import FitConfig, fit_study, write_fit  # noqa: E402
from latent.predict import FittedMap, PredictConfig, predict_run  # noqa: E402
from latent.simulate import LEVELS, random_config, simulate, write_study  # noqa: E402
from latent.store import Study, resolve_study  # noqa: E402

RAW = Path(__file__).with_name("results") / "predict.jsonl.gz"
CUTS = np.round(np.arange(0.02, 0.91, 0.02), 2)
REPORT_CUTS = (0.1, 0.2, 0.3, 0.5, 0.7)  # state accuracy table


def fit_dir(root: Path, table: pd.DataFrame, seeds, cfg: FitConfig, jobs: int, truth=None) -> Path:
    study_root = write_study(root, table[table["seed"].isin(seeds)].reset_index(drop=True))
    study = Study(study_root)
    result = fit_study(study, cfg, n_jobs=jobs)
    return write_fit(study, result)


def mapping(fmap: FittedMap, truth_paths: dict) -> dict[int, int]:
    """Fit state -> the truth state it overlaps most on the fitted runs."""
    counts = {}
    for seed, a in fmap.analogs.items():
        t = truth_paths[seed][: len(a.states)]
        for f, tr in zip(a.states, t):
            counts[(int(f), int(tr))] = counts.get((int(f), int(tr)), 0) + 1
    out = {}
    for f in range(fmap.k):
        best = max(((c, tr) for (ff, tr), c in counts.items() if ff == f), default=(0, -1))
        out[f] = best[1]
    return out


def score_runs(fmap: FittedMap, held: pd.DataFrame, truth_paths: dict | None, kinds: list | None,
               level: float, scaling_tag: str) -> list[dict]:
    """One record per held-out run and cut."""
    cfg = PredictConfig(level=level, risk="analogs")
    cfg_hmm = PredictConfig(level=level, risk="hmm")
    m = mapping(fmap, truth_paths) if truth_paths is not None else None
    recs = []
    for seed, run in held.groupby("seed", sort=True):
        run = run.sort_values("step").reset_index(drop=True)
        T = len(run)
        steps = run["step"].to_numpy(dtype=float)
        acc = run[fmap.metric].to_numpy(dtype=float)
        hit = np.flatnonzero(acc > fmap.threshold) if fmap.direction == "above" else np.flatnonzero(acc < fmap.threshold)
        true = float(steps[hit[0]]) if len(hit) else math.inf
        if truth_paths is not None:
            tp = truth_paths[int(seed)]
            # detour entries judged on the truth: the truth states the fit's detours stand for
            entry = {}
            for d in fmap.detours:
                t = m.get(d, -1)
                rows = np.flatnonzero(tp == t) if t >= 0 and kinds[t] == "detour" else np.array([], int)
                entry[d] = int(rows[0]) if len(rows) else None
        else:
            full, _ = fmap.decode(run[fmap.features].to_numpy(dtype=float))
            entry = {d: (int(np.flatnonzero(full == d)[0]) if np.any(full == d) else None) for d in fmap.detours}
        for f in CUTS:
            n = max(2, int(round(f * T)))
            res = predict_run(fmap, run.iloc[:n], cfg)
            risk_hmm = predict_run(fmap, run.iloc[:n], cfg_hmm)["detour_risk"] if fmap.detours else {}
            fc = res["forecast"]
            rec = {"scaling": scaling_tag, "seed": int(seed), "cut": float(f), "n": n, "T": T,
                   "step": float(steps[n - 1]), "first": float(steps[0]), "true": None if math.isinf(true) else true,
                   "converged_before": res["converged_at"] is not None, "method": fc["method"]}
            if res["converged_at"] is None and fc["method"] != "none":
                lo = -math.inf if fc["low"] is None else fc["low"]
                hi = math.inf if fc["high"] is None else fc["high"]
                rec["covered"] = bool(lo <= true <= hi)
                rec["open"] = fc["high"] is None
                rec["width"] = None if fc["high"] is None else (fc["high"] - fc["low"]) / (steps[-1] - steps[0])
                rec["abs_err"] = None if (fc["median"] is None or math.isinf(true)) else abs(fc["median"] - true) / (steps[-1] - steps[0])
            if truth_paths is not None:
                rec["state_right"] = bool(m.get(res["state"], -1) == truth_paths[int(seed)][n - 1])
            for d in fmap.detours:
                e = entry[d]
                if e is not None and e < n:
                    continue  # already entered: nothing left to foretell
                rec.setdefault("risk", {})[str(d)] = res["detour_risk"][str(d)]
                rec.setdefault("risk_hmm", {})[str(d)] = risk_hmm[str(d)]
                rec.setdefault("enters", {})[str(d)] = e is not None
                rec.setdefault("entry", {})[str(d)] = None if e is None else e / T
            for d in fmap.detours:  # the warning: current state is the detour, judged at any cut
                rec.setdefault("in", {})[str(d)] = bool(res["state"] == d)
                rec.setdefault("entry_any", {})[str(d)] = None if entry[d] is None else entry[d] / T
            recs.append(rec)
    return recs


def run_planted(args) -> list[dict]:
    out = []
    plan = [(fam, lvl) for fam in ("standard", "semi_markov") for lvl in ("hard", "medium", "easy")]
    for fam, lvl in plan:
        for i in range(args.draws):
            cfg = random_config(fam, lvl, 1000 + i, n_checkpoints=300, n_runs=60)
            table, truth = simulate(cfg)
            fit_seeds = list(range(40))
            held = table[table["seed"] >= 40]
            options = [("global", FitConfig(resamples=0))]
            if fam == "standard" and lvl == "medium":
                options.append(("per_run", FitConfig(resamples=0, scaling="per_run")))
            for tag, fcfg in options:
                t0 = time.perf_counter()
                with tempfile.TemporaryDirectory() as tmp:
                    fdir = fit_dir(Path(tmp) / "sim", table, fit_seeds, fcfg, args.jobs)
                    fmap = FittedMap(fdir)
                    recs = score_runs(fmap, held, truth.paths, truth.kinds, args.level, tag)
                for r in recs:
                    r.update(source="planted", family=fam, level=lvl, draw=i, K=fmap.k, detours=len(fmap.detours))
                out += recs
                print(f"{fam}/{lvl} draw {i} ({tag}): K {fmap.k}, detours {fmap.detours}, "
                      f"{time.perf_counter() - t0:.1f} s", flush=True)
    return out


def run_modadd(args) -> list[dict]:
    study = resolve_study(".", args.modadd) if Path(args.modadd).is_dir() else resolve_study("data", args.modadd)
    table, _ = study.read_finished_runs()
    seeds = sorted(int(s) for s in table["seed"].unique())
    if len(seeds) < 20:
        raise SystemExit(f"{study.root} has {len(seeds)} finished runs; collect 40 first")
    folds = [seeds[i::4] for i in range(4)]
    out = []
    for j, held_seeds in enumerate(folds):
        fit_seeds = [s for s in seeds if s not in held_seeds]
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "modadd"
            root.mkdir()
            meta = study.read_meta()
            for s in fit_seeds:
                (root / "runs").mkdir(exist_ok=True)
                (root / "runs" / f"seed-{s:03d}.parquet").write_bytes(study.run_table_path(s).read_bytes())
            meta = {k: v for k, v in meta.items() if k not in ("schedule",)}
            meta["seeds"] = fit_seeds
            (root / "study.json").write_text(json.dumps(meta))
            sub = Study(root)
            fdir = write_fit(sub, fit_study(sub, FitConfig(resamples=0), n_jobs=args.jobs))
            fmap = FittedMap(fdir)
            recs = score_runs(fmap, table[table["seed"].isin(held_seeds)], None, None, args.level, "global")
        for r in recs:
            r.update(source="modadd", family="modadd", level="real", draw=j, K=fmap.k, detours=len(fmap.detours))
        out += recs
        print(f"modadd fold {j}: K {fmap.k}, detours {fmap.detours}, {time.perf_counter() - t0:.1f} s", flush=True)
    return out


def _pct(x) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.0f} %"


def summarise(recs: list[dict], level: float) -> str:
    df = pd.DataFrame(recs)
    lines = [f"Nominal interval coverage {level:.0%}: the share of forecasts whose interval covered the true "
             "convergence step, pooled over the cuts (2 %, 4 %, ... 90 % of each held-out run's checkpoints) in each "
             "bin; (n) is the number of forecasts (runs not yet converged at the cut). Left: by the share of the run "
             "seen; right: by how far the run was on its way to convergence (runs that never converge are only "
             "in the left bins).", ""]
    def bins(values, edges):
        return pd.cut(values, edges, right=False, include_lowest=True)

    run_edges = [0, 0.1, 0.3, 0.6, 1.0]
    conv_edges = [0, 0.25, 0.5, 0.75, 1.0]
    run_names = ["<10 %", "10-30 %", "30-60 %", ">=60 %"]
    conv_names = ["<25 %", "25-50 %", "50-75 %", "75-100 %"]
    lines.append("| study | scaling | " + " | ".join(f"seen {b} of the run" for b in run_names) + " | "
                 + " | ".join(f"{b} of the way to convergence" for b in conv_names)
                 + " | median width, seen 10-30 % (share of run) |")
    lines.append("|---|---|" + "---|" * (len(run_names) + len(conv_names) + 1))
    groups = df.groupby(["family", "level", "scaling"], sort=False)
    for (fam, lvl, tag), g in groups:
        g = g[g["covered"].notna()].copy()
        g["covered"] = g["covered"].astype(bool)
        by_run = g.groupby(bins(g["cut"], run_edges), observed=False)["covered"].agg(["mean", "size"])
        way = [(st - f0) / (t - f0) if t is not None and not (isinstance(t, float) and math.isnan(t)) and t > f0 else np.nan
               for st, f0, t in zip(g["step"], g["first"], g["true"])]
        g["way"] = way
        by_conv = g.groupby(bins(g["way"], conv_edges), observed=False)["covered"].agg(["mean", "size"])
        cells = [f"{_pct(m if n else None)} ({n})" for m, n in zip(by_run["mean"], by_run["size"])]
        cells += [f"{_pct(m if n else None)} ({n})" for m, n in zip(by_conv["mean"], by_conv["size"])]
        w = g[(g["cut"] >= 0.1) & (g["cut"] < 0.3)]["width"].dropna()
        lines.append(f"| {fam} {lvl} | {tag} | " + " | ".join(cells) + f" | {_pct(w.median() if len(w) else None)} |")
    lines += ["", "Detour calls (risk >= 0.5 before entry; truth paths for planted studies, the whole run's "
              "decoding for modadd). Called early: entering runs called at a cut before their entry; lead: median "
              "share of the run between the first call and the entry; warned: entering runs whose current state "
              "is the detour at some cut, median lag after entry; false calls: non-entering runs called at any "
              "cut; Brier: mean squared error of the risk at the 10 % cut (a constant base rate scores its "
              "variance).", ""]
    lines.append("| study | scaling | risk from | runs entering / not | called early | lead | warned | lag | false calls | "
                 "Brier @10% (base-rate Brier) |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    for ((fam, lvl, tag), g), key in [(x, k) for x in groups for k in ("risk", "risk_hmm")]:
        if key not in g:
            continue
        ent, non, called, leads, warned, lags, false = 0, 0, 0, [], 0, [], 0
        briers, base = [], []
        for (src, draw, seed), r in g.groupby(["source", "draw", "seed"]):
            r = r.sort_values("cut")
            ds = set()
            for x in r["in"].dropna():
                ds |= set(x)
            for d in ds:
                entry = next((x[d] for x in r["entry_any"] if isinstance(x, dict)), None)
                pend = [(c, x[d]) for c, x in zip(r["cut"], r[key]) if isinstance(x, dict) and d in x]
                calls = [c for c, p in pend if p >= 0.5]
                ins = [c for c, x in zip(r["cut"], r["in"]) if x.get(d)]
                if entry is not None:
                    ent += 1
                    if calls:
                        called += 1
                        leads.append(entry - calls[0])
                    after = [c for c in ins if c >= entry]
                    if after:
                        warned += 1
                        lags.append(after[0] - entry)
                else:
                    non += 1
                    false += bool(calls)
                at10 = [(x[d], e[d]) for c, x, e in zip(r["cut"], r[key], r["enters"])
                        if np.isclose(c, 0.1) and isinstance(x, dict) and d in x]
                briers += [(p - float(e)) ** 2 for p, e in at10]
                base += [float(e) for _, e in at10]
        bb = float(np.var(base)) if base else None
        lines.append(f"| {fam} {lvl} | {tag} | {'analogs' if key == 'risk' else 'HMM (default)'} | {ent} / {non} | {_pct(called / ent if ent else None)} | "
                     f"{(f'{100 * np.median(leads):.0f} % of run') if leads else '–'} | {_pct(warned / ent if ent else None)} | "
                     f"{(f'{100 * np.median(lags):.0f} % of run') if lags else '–'} | {_pct(false / non if non else None)} | "
                     f"{(f'{np.mean(briers):.3f}') if briers else '–'} ({(f'{bb:.3f}') if bb is not None else '–'}) |")
    st = df[df["state_right"].notna()] if "state_right" in df else df.iloc[0:0]
    if len(st):
        lines += ["", "Current state right (planted standard medium draws; the truth state the fit's state overlaps "
                  "most): global scaling vs per-run scaling of the prefix seen so far.", ""]
        lines.append("| scaling | " + " | ".join(f"@{c:.0%}" for c in REPORT_CUTS) + " | all cuts |")
        lines.append("|---|" + "---|" * (len(REPORT_CUTS) + 1))
        sel = st[(st["family"] == "standard") & (st["level"] == "medium")]
        for tag, g in sel.groupby("scaling"):
            cells = [_pct(g[np.isclose(g["cut"], c)]["state_right"].mean()) for c in REPORT_CUTS]
            lines.append(f"| {tag} | " + " | ".join(cells) + f" | {_pct(g['state_right'].mean())} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=5, help="planted draws per family and level (default 5)")
    ap.add_argument("--modadd", default="modadd", help="the real 40-seed modadd study (name in ./data or a path)")
    ap.add_argument("--no-modadd", action="store_true")
    ap.add_argument("--level", type=float, default=0.8)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--from-raw", action="store_true", help="rebuild the tables from bench/results/predict.jsonl")
    args = ap.parse_args()
    t0 = time.perf_counter()
    if args.from_raw:
        with gzip.open(RAW, "rt") as fh:
            recs = [json.loads(line) for line in fh if line.strip()]
        print(summarise(recs, args.level))
        return
    recs = run_planted(args)
    if not args.no_modadd:
        recs += run_modadd(args)
    RAW.parent.mkdir(exist_ok=True)
    if not args.no_write:
        with gzip.open(RAW, "wt", compresslevel=9) as fh:
            for r in recs:
                fh.write(json.dumps(r, sort_keys=True) + "\n")
    text = summarise(recs, args.level)
    text += (f"\n\n{args.draws} planted draws per family and level (random structures of bench_recovery, 300 "
             f"checkpoints, 40 fitted + 20 held-out runs); modadd: 4 folds of 10 held-out seeds. Total "
             f"{time.perf_counter() - t0:.0f} s. Raw: bench/results/predict.jsonl.gz. Command: "
             f"`python bench/bench_predict.py --draws {args.draws}`.")
    print(text)
    if not args.no_write:
        write_block("predict", text, title="Forecasts on held-out runs (`bench/bench_predict.py`)")


if __name__ == "__main__":
    main()
