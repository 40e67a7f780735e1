"""Search for a fast modadd preset that shows the paper's LayerNorm contrast (issue 9).

The paper's headline (reference.md G2, Table 1): a transformer on modular addition *without*
LayerNorm has a forking training map with detour states (R² 0.977), the stabilised variant
*with* LayerNorm a near-linear one (R² 0.514) with faster, less variable convergence. This
script trains each candidate config in both variants on a budget, fits each study with
`latent fit`'s defaults, and records what a user would see:

* per variant: wall time and seed-epochs/s, runs converged, median / IQR / coefficient of
  variation of the convergence epoch, K, detour states (delay rule: delay, adjusted p), R²;
* per candidate: whether it shows the contrast: without LN at least one detour and R² ≥ 0.8;
  with LN no detour and a smaller convergence-time variance.

Every run is appended to ``bench/results/contrast.jsonl`` (resumable: a finished
(candidate, variant, seeds) is not trained again); the table goes into the ``contrast`` block of
``bench/RESULTS.md``. Screening uses few seeds (``--seeds 12``); ``--confirm NAME`` reruns one
candidate with 40 seeds and stability resamples.

    python bench/search_contrast.py --list                 # the candidates
    python bench/search_contrast.py --seeds 12             # screen every candidate
    python bench/search_contrast.py --only t59a,t59b       # some of them
    python bench/search_contrast.py --confirm t59a         # 40 seeds, 20 resamples
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from results import write_block  # noqa: E402

from latent.collect.study import collect_study  # noqa: E402
from latent.errors import UserError  # noqa: E402
from latent.fit import FitConfig, fit_study  # noqa: E402
from latent.store import Study  # noqa: E402

RAW = Path(__file__).with_name("results") / "contrast.jsonl"

#: shared by every candidate: the paper's 1-layer transformer, AdamW
BASE = dict(model="transformer", n_heads=4, beta1=0.9, beta2=0.999, log_every=10)

#: name -> (overrides shared by both variants, batch size without LN, batch size with LN, epochs
#: with LN or None for the same as without). Without LN the paper trains near full batch (2048 of
#: 3830); with LN at batch 256, and its stabilised runs last ~300 epochs (reference.md A1).
CANDIDATES: dict[str, tuple[dict, int, int, int | None]] = {
    "t59a": (dict(p=59, train_frac=0.4, d_model=64, d_mlp=256, lr=1e-3, weight_decay=1.0, epochs=1500), 0, 256, None),
    "t59b": (dict(p=59, train_frac=0.5, d_model=64, d_mlp=256, lr=1e-3, weight_decay=1.0, epochs=1200), 0, 256, None),
    "t59c": (dict(p=59, train_frac=0.4, d_model=64, d_mlp=256, lr=3e-3, weight_decay=1.0, epochs=1000), 0, 256, None),
    "t43a": (dict(p=43, train_frac=0.5, d_model=64, d_mlp=256, lr=1e-3, weight_decay=1.0, epochs=1500), 0, 128, None),
    "t59d": (dict(p=59, train_frac=0.4, d_model=128, d_mlp=512, lr=1e-3, weight_decay=1.0, epochs=1200), 0, 256, None),
    "t59e": (dict(p=59, train_frac=0.3, d_model=64, d_mlp=256, lr=1e-3, weight_decay=1.0, epochs=2500), 0, 256, None),
    # after the first screen: without LN 2-5 of 12 runs grokked within 1,000-1,500 epochs, with LN
    # all by ~100-200; so faster grokking without LN (more data, more decay), shorter LN runs
    "t59f": (dict(p=59, train_frac=0.5, d_model=64, d_mlp=256, lr=1e-3, weight_decay=2.0, epochs=2000), 0, 256, 400),
    "t43b": (dict(p=43, train_frac=0.6, d_model=64, d_mlp=256, lr=1e-3, weight_decay=1.0, epochs=2000), 0, 128, 400),
    # t59f gives a linear 3-state chain without LN: every run takes the same road, only the
    # plateau's length varies. Noise that could send runs down different roads: minibatches
    # without LN (the reference's default batch is 256), and a larger initialisation
    "t59g": (dict(p=59, train_frac=0.5, d_model=64, d_mlp=256, lr=1e-3, weight_decay=2.0, epochs=2000), 256, 256, 400),
    "t59h": (dict(p=59, train_frac=0.5, d_model=64, d_mlp=256, lr=1e-3, weight_decay=2.0, epochs=2000,
                  init_scaling=2.0), 0, 256, 400),
    # t59g at 12 seeds: 11/12 generalise, median epoch 150 but CV 0.86 (LN: 0.16); shorter, to confirm at 40
    "t59i": (dict(p=59, train_frac=0.5, d_model=64, d_mlp=256, lr=1e-3, weight_decay=2.0, epochs=800), 256, 256, 400),
    # the paper's base runs take 2 steps per epoch (batch 2048 of 3,830 pairs, reshuffled each
    # epoch): the same fraction here is batch 931 of 1,740. With weight decay 1 (the paper's) at
    # full batch, 5 of 12 runs grokked by epoch ~1,100 and 7 had not (t59b): a fork in the making
    "t59j": (dict(p=59, train_frac=0.5, d_model=64, d_mlp=256, lr=1e-3, weight_decay=1.0, epochs=2000), 931, 256, 400),
    "t59k": (dict(p=59, train_frac=0.5, d_model=64, d_mlp=256, lr=1e-3, weight_decay=1.0, epochs=3000), 0, 256, 400),
    # t59j and t59k: R² 0.98 and 0.92 without LN but a linear 3-state chain (one unimodal spread of
    # plateau lengths). A larger learning rate (1e-2) makes Adam without LN unstable: loss spikes
    # that throw a run back (slingshots), and at 8 seeds one run in eight lingered memorised 2.5x longer
    "t59l": (dict(p=59, train_frac=0.5, d_model=64, d_mlp=256, lr=1e-2, weight_decay=1.0, epochs=500), 931, 256, 400),
    "t59m": (dict(p=59, train_frac=0.5, d_model=64, d_mlp=256, lr=1e-2, weight_decay=0.5, epochs=800), 931, 256, 400),
    # the paper's runs sit near the critical data fraction (30 % of p = 113 takes 3,500-7,000
    # epochs to grok); fewer training pairs here too, with the paper's optimiser (t59j's)
    "t59n": (dict(p=59, train_frac=0.4, d_model=64, d_mlp=256, lr=1e-3, weight_decay=1.0, epochs=3000), 745, 256, 400),
}


def variant_overrides(name: str, variant: str) -> dict:
    shared, batch_plain, batch_ln, ln_epochs = CANDIDATES[name]
    ln = variant == "ln"
    out = {**BASE, **shared, "layernorm": ln, "batch_size": batch_ln if ln else batch_plain}
    if ln and ln_epochs:
        out["epochs"] = ln_epochs
    return out


def conv_stats(times: list) -> dict:
    y = np.array([t for t in times if t is not None], dtype=float)
    if not len(y):
        return {"converged": 0}
    q1, med, q3 = np.percentile(y, [25, 50, 75])
    return {"converged": int(len(y)), "median": float(med), "iqr": float(q3 - q1),
            "cv": float(y.std(ddof=1) / y.mean()) if len(y) > 1 and y.mean() else None,
            "var": float(y.var(ddof=1)) if len(y) > 1 else None}


def run_variant(name: str, variant: str, seeds: int, resamples: int, store: Path) -> dict:
    overrides = variant_overrides(name, variant)
    t0 = time.perf_counter()
    res = collect_study("modadd", seeds, overrides=overrides, study=f"{name}-{variant}", store=store,
                        threads=os.cpu_count(), progress=False)
    collect_s = time.perf_counter() - t0
    out = {"key": [name, variant, seeds], "overrides": overrides, "collect_s": collect_s,
           "seed_epochs_per_s": seeds * overrides["epochs"] / collect_s}
    try:
        t1 = time.perf_counter()
        fit = fit_study(Study(res.study), FitConfig(resamples=resamples), n_jobs=os.cpu_count())
        out["fit_s"] = time.perf_counter() - t1
    except UserError as exc:  # e.g. no run converged: a result, not a crash
        out["fit_error"] = str(exc)
        return out
    a = fit.analysis
    out["conv"] = conv_stats(list(a["convergence"]["times"].values()))
    out["K"] = int(fit.selector.n_states_)
    out["detours"] = [{"state": d["state"], "delay": d.get("delay"), "p": d.get("p_adjusted"),
                       "stability": a["states"][d["state"]].get("stability")} for d in a["detours"]]
    reg = a.get("regression") or {}
    out["r2"], out["reg_p"] = reg.get("r2"), reg.get("p_value")
    out["warnings"] = fit.warnings
    return out


def load_raw() -> dict:
    done = {}
    if RAW.exists():
        for line in RAW.read_text().splitlines():
            r = json.loads(line)
            done[tuple(r["key"])] = r
    return done


def verdict(plain: dict, ln: dict) -> str:
    if "K" not in plain or "K" not in ln:
        return "no fit"
    c1 = bool(plain["detours"]) and (plain["r2"] or 0) >= 0.8
    v1, v2 = plain["conv"].get("var"), ln["conv"].get("var")
    c2 = not ln["detours"] and v1 is not None and v2 is not None and v2 < v1
    return "**contrast**" if c1 and c2 else ("no-LN side only" if c1 else ("LN side only" if c2 else "no"))


def table(done: dict) -> str:
    rows = ["| candidate | seeds | variant | seed-epochs/s | collect s | converged | median epoch | IQR | CV | K | "
            "detours (delay, adj. p) | R² | verdict |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    keys = sorted({(k[0], k[2]) for k in done})
    for name, seeds in keys:
        pair = {v: done.get((name, v, seeds)) for v in ("plain", "ln")}
        for v, r in pair.items():
            if r is None:
                continue
            c = r.get("conv", {})
            det = ", ".join(f"{d['state']} (+{d['delay']:.0f}, {d['p']:.3g})" for d in r.get("detours", [])
                            if d.get("delay") is not None and d.get("p") is not None) or "none"
            fmt = (lambda x, f: "–" if x is None else format(x, f))
            rows.append(f"| {name} | {seeds} | {'no LN' if v == 'plain' else 'LN'} | {r['seed_epochs_per_s']:.0f} | "
                        f"{r['collect_s']:.0f} | {c.get('converged', 0)}/{seeds} | {fmt(c.get('median'), '.0f')} | "
                        f"{fmt(c.get('iqr'), '.0f')} | {fmt(c.get('cv'), '.2f')} | {r.get('K', '–')} | "
                        f"{det if 'K' in r else r.get('fit_error', '')[:60]} | {fmt(r.get('r2'), '.3f')} | "
                        f"{verdict(pair['plain'], pair['ln']) if v == 'ln' and all(pair.values()) else ''} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=12)
    ap.add_argument("--only", help="comma-separated candidate names")
    ap.add_argument("--confirm", help="one candidate: 40 seeds, 20 stability resamples")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--store", help="keep the studies in this store (default: a temporary directory)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    if args.list:
        for name in CANDIDATES:
            print(name, variant_overrides(name, "plain"), "| LN batch", CANDIDATES[name][2])
        return 0
    names = [args.confirm] if args.confirm else (args.only.split(",") if args.only else list(CANDIDATES))
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        print(f"search_contrast: unknown candidate(s) {unknown}; see --list", file=sys.stderr)
        return 2
    seeds, resamples = (40, 20) if args.confirm else (args.seeds, 0)
    RAW.parent.mkdir(exist_ok=True)
    done = load_raw()
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(args.store) if args.store else Path(tmp)
        for name in names:
            for variant in ("plain", "ln"):
                if (name, variant, seeds) in done:
                    continue
                print(f"{name} {variant} {seeds} seeds ...", flush=True)
                r = run_variant(name, variant, seeds, resamples, store)
                done[(name, variant, seeds)] = r
                with RAW.open("a") as fh:
                    fh.write(json.dumps(r) + "\n")
                print(f"  {r['collect_s']:.0f} s collect, K {r.get('K')}, detours "
                      f"{[d['state'] for d in r.get('detours', [])]}, R² {r.get('r2')}, conv {r.get('conv')}", flush=True)
    text = ("Candidates trained without and with LayerNorm (`python bench/search_contrast.py --list` gives each "
            "config), fitted with `latent fit`'s defaults; raw rows in `bench/results/contrast.jsonl`. 12-seed rows "
            "are screening (no stability resamples): with 12 seeds the default fit often picks K = 1 on real runs "
            "(docs/fit.md, 'few runs'), so they judge convergence and its spread; 40-seed rows confirm (20 "
            "resamples) and judge K, detours and R². The machine (2 cores) was shared with other work while "
            "measured (load average 2-4), so seed-epochs/s are lower bounds. Verdict: *contrast* needs, without "
            "LN, a detour and R² ≥ 0.8 and, with LN, no detour and a smaller convergence-time variance.\n\n"
            f"{table(done)}")
    print(text)
    if not args.no_write:
        write_block("contrast", text, title="LayerNorm contrast search (`bench/search_contrast.py`)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
