"""The reproduction table (docs/results.md): every shipped task and variant, collected and fitted
with the defaults, next to the paper's numbers (reference.md G1-G3).

Each row runs the two commands written beside it (``latent collect ...`` then ``latent fit``) in a
store of its own, reads the fit's ``analysis.json`` and records K, the detour states (delay rule),
R² and p of the occupancy regression, the convergence statistics and the wall time of each
command. Raw rows go to ``bench/results/reproduce.jsonl`` (resumable: a row already there is
not run again unless ``--redo``); the table is the ``reproduce`` block of docs/results.md.

    python bench/reproduce.py --list                  # the rows and their commands
    python bench/reproduce.py --only parity,mnist     # run some rows
    python bench/reproduce.py                         # every row that fits the time budget
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from results import write_block  # noqa: E402

RAW = Path(__file__).with_name("results") / "reproduce.jsonl"
DOC = ROOT / "docs" / "results.md"

#: row -> (collect arguments, study name, the paper's row: K, R², detours, note; None: not in the paper)
ROWS: dict[str, tuple[str, str, dict | None]] = {
    "modadd": ("--task modadd --seeds 40", "modadd",
               {"what": "no paper row: our default is an MLP, the paper's a transformer", "K": None}),
    "parity": ("--task parity --seeds 40", "parity", {"what": "Sparse parities", "K": 6, "r2": 0.961, "detours": "state 0"}),
    "mnist": ("--task mnist --seeds 40", "mnist", {"what": "MNIST", "K": 6, "r2": 0.049, "detours": "none"}),
    "mlm": ("--task mlm --seeds 40", "mlm", {"what": "MultiBERTs (5 released runs)", "K": 5, "r2": None, "detours": None}),
    "cifar": ("--task cifar --seeds 40", "cifar", {"what": "CIFAR-100", "K": 5, "r2": 0.094, "detours": "none"}),
    "cifar-destab": ("--task cifar --no-batchnorm --no-residual --seeds 40", "cifar-destab",
                     {"what": "CIFAR-100, destabilized", "K": 5, "r2": 0.905, "detours": "state 1"}),
    "modadd-paper": ("--task modadd --preset paper --seeds 40", "modadd-paper",
                     {"what": "Modular addition", "K": 6, "r2": 0.977, "detours": "states 2, 5"}),
    "modadd-paper-ln": ("--task modadd --preset paper --layernorm --seeds 40", "modadd-paper-ln",
                        {"what": "Modular, stabilized", "K": 3, "r2": 0.514, "detours": "none"}),
}
#: rows that take hours on 2 CPU cores: listed with their command, run only when asked by name
SLOW = {"modadd-paper": "≈ 5 h on 2 cores (10,000 epochs × 40 seeds at ~25 seed-epochs/s)"}


def run(cmd: str) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(shlex.split(cmd), cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"`{cmd}` exited {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}")
    return time.perf_counter() - t0


def conv_stats(times: dict) -> dict:
    y = np.array([t for t in times.values() if t is not None], dtype=float)
    q1, med, q3 = np.percentile(y, [25, 50, 75])
    return {"n": len(times), "median": float(med), "iqr": float(q3 - q1), "cv": float(y.std(ddof=1) / y.mean())}


def was_started(store: Path, study: str) -> bool:
    """Whether ``study`` already has some training done in ``store`` (collect will resume it, so its
    time is that of the last piece only)."""
    from latent.store import Study

    root = Path(store) / study
    if not (root / "study.json").is_file():
        return False
    st = Study(root).status()
    return st["done"] > 0 or any(r.status != "pending" for r in st["runs"].values())


def run_row(name: str, store: Path) -> dict:
    args, study, paper = ROWS[name]
    collect = f"latent collect {args} --store {store} --quiet"
    fit = f"latent fit --store {store} --study {study} -q"
    resumed = was_started(store, study)
    t_collect = run(collect)
    t_fit = run(fit)
    fits = store / study / "fits"
    fdir = max(fits.iterdir(), key=lambda p: (p / "model.json").stat().st_mtime)
    a = json.loads((fdir / "analysis.json").read_text())
    model = json.loads((fdir / "model.json").read_text())
    conv = a["convergence"]
    reg = a.get("regression") or {}
    bounds = a.get("boundaries") or {}
    return {
        "discrete": bounds.get("discrete_transitions"), "judged": bounds.get("judged_transitions"),
        "ppc_outside": (a.get("ppc") or {}).get("outside_names"),
        "row": name, "collect": f"latent collect {args}", "fit": "latent fit", "collect_s": t_collect, "fit_s": t_fit,
        "collect_resumed": resumed,
        "K": model["n_states"], "K_at_top": model["n_states"] == model["config"]["max_states"],
        "detours": [{"state": d["state"], "delay": d["delay"], "p": d["p_adjusted"],
                     "stability": (a["states"][d["state"]].get("stability") or {})} for d in a["detours"]],
        "r2": reg.get("r2"), "reg_p": reg.get("p_value"),
        "never": len(conv.get("never_converged") or []), "unit": conv["step_unit"],
        "conv": conv_stats(conv["times"]), "dissimilarity": (a.get("dissimilarity") or {}).get("value"),
        "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load": os.getloadavg(),
    }


def fmt(x, f):
    return "–" if x is None else format(x, f)


def table(done: dict) -> str:
    lines = ["| row | commands | ours: K | detours (delay, adj. p, resamples) | R² (p) | converged; median / IQR / CV "
             "| collect + fit | paper: K | paper: R² | paper: detours |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, (args, study, paper) in ROWS.items():
        r = done.get(name)
        cmd = f"`latent collect {args}`, `latent fit`"
        p = paper or {}
        ptxt = f"{fmt(p.get('K'), 'd')} | {fmt(p.get('r2'), '.3f')} | {p.get('detours') or '–'}"
        if r is None:
            why = SLOW.get(name, "not run yet (~9 min per 40-seed study on an idle 2-core machine)" if "cifar" in name
                           else "not run yet")
            lines.append(f"| {name} | {cmd} | not run: {why} | | | | | {ptxt} |")
            continue
        det = "; ".join(
            f"{d['state']} (+{d['delay']:.0f}, {d['p']:.2g}"
            + (f", again in {d['stability']['detour_found']}/{d['stability']['of']}" if d["stability"].get("of") else "")
            + ")" for d in r["detours"]) or "none"
        c = r["conv"]
        lines.append(
            f"| {name} | {cmd} | {r['K']}{' (top of range)' if r['K_at_top'] else ''} | {det} | "
            f"{fmt(r['r2'], '.3f')} ({fmt(r['reg_p'], '.2g')}) | {c['n'] - r['never']}/{c['n']}; "
            f"{c['median']:.0f} / {c['iqr']:.0f} / {c['cv']:.2f} {r['unit']}s | "
            f"{r['collect_s']:.0f}" + (" (resumed: its last piece only)" if r.get("collect_resumed") else "")
            + f" + {r['fit_s']:.0f} s | {ptxt} |")
    return "\n".join(lines)


README = ROOT / "README.md"
#: what the quick start's fit is compared on (tests/test_quickstart.py reads these from the README)
QUICKSTART_KEYS = ("K", "K_at_top", "detours", "discrete", "judged", "r2", "converged", "median")


def quickstart_values(r: dict) -> dict:
    """The numbers of the README's quick-start paragraph, from the reproduce row ``modadd``."""
    c = r["conv"]
    return {"K": r["K"], "K_at_top": r["K_at_top"], "detours": [d["state"] for d in r["detours"]],
            "discrete": r.get("discrete"), "judged": r.get("judged"),
            "r2": None if r["r2"] is None else round(r["r2"], 2), "converged": c["n"] - r["never"],
            "median": c["median"], "ppc_outside": r.get("ppc_outside")}


def write_quickstart(r: dict) -> None:
    """The README's ``quickstart`` block: what `latent collect --task modadd --seeds 40` and
    `latent fit` find, in words, and the same numbers as a comment the test compares with."""
    v = quickstart_values(r)
    words = {"autocorrelation": "within-state autocorrelation", "run_spread": "run-to-run spread of state means",
             "dwell": "dwell times", "visits": "visits per run"}
    ppc = ", ".join(words.get(x, x) for x in (v["ppc_outside"] or [])) or "none"
    detours = ", ".join(map(str, v["detours"])) or "no detour"
    trans = (f"none of the {v['judged']} transitions it can judge is a discrete jump" if not v["discrete"] else
             f"{v['discrete']} of the {v['judged']} transitions it can judge are discrete jumps")
    body = (f"What the quick start finds (`python bench/reproduce.py --only modadd` regenerates this paragraph; "
            f"`tests/test_quickstart.py` reruns the two commands and fails if it drifts): {v['converged']} of 40 runs "
            f"grok, at a median epoch {v['median']:.0f}. `latent fit` chooses **K = {v['K']}**"
            + (" (the top of the range searched)" if v["K_at_top"] else "")
            + f", finds **{detours}**, and R² {v['r2']:.2f} for the occupancy regression. It also says what K is worth "
            f"here: {trans}"
            + (": at none of them do most boundaries jump more than the runs move anyway, so nothing shows its states "
               "to be phases rather than stretches cut out of the continuous change of the 14 weight statistics"
               if not v["discrete"] else "")
            + f". The posterior predictive checks the Gaussian HMM fails: {ppc}. The phases of grokking are in the "
            f"progress measures (`latent fit --features progress`), not in the weight statistics: "
            f"[docs/results.md](docs/results.md#the-phases-of-grokking-from-the-progress-measures)."
            f"\n\n<!-- quickstart-values: {json.dumps({k: v[k] for k in QUICKSTART_KEYS})} -->")
    text = README.read_text()
    begin, end = "<!-- quickstart:begin -->", "<!-- quickstart:end -->"
    block = f"{begin}\n{body}\n{end}"
    if begin in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        anchor = "## Test\n"
        text = text.replace(anchor, block + "\n\n" + anchor, 1)
    README.write_text(text)


def load_raw() -> dict:
    done = {}
    if RAW.exists():
        for line in RAW.read_text().splitlines():
            r = json.loads(line)
            done[r["row"]] = r
    return done


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="comma-separated rows (default: every row but the slow paper presets)")
    ap.add_argument("--store", default="/tmp/latent-reproduce", help="where the studies go")
    ap.add_argument("--redo", action="store_true", help="run rows again even if recorded")
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args(argv)
    if args.list:
        for name, (a, _, _) in ROWS.items():
            print(f"{name:16s} latent collect {a}; latent fit" + (f"   [{SLOW[name]}]" if name in SLOW else ""))
        return 0
    names = args.only.split(",") if args.only else [n for n in ROWS if n not in SLOW]
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        print(f"reproduce: unknown row(s) {unknown}; see --list", file=sys.stderr)
        return 2
    done = load_raw()
    RAW.parent.mkdir(exist_ok=True)
    for name in names:
        if name in done and not args.redo:
            continue
        print(f"{name} ...", flush=True)
        r = run_row(name, Path(args.store) / name)
        done[name] = r
        with RAW.open("a") as fh:
            fh.write(json.dumps(r) + "\n")
        print(f"  K {r['K']}, detours {[d['state'] for d in r['detours']]}, R² {r['r2']}, "
              f"{r['collect_s']:.0f} + {r['fit_s']:.0f} s", flush=True)
    text = table(done)
    print(text)
    if "modadd" in done:
        write_quickstart(done["modadd"])
    write_block("reproduce", "Rows run by `python bench/reproduce.py` on this machine (2 CPU cores, shared with other "
                "work while measured: wall times are upper bounds); raw rows with load averages in "
                "`bench/results/reproduce.jsonl`.\n\n" + text, path=DOC, title="Reproduction table")
    return 0


if __name__ == "__main__":
    sys.exit(main())
