"""Is a segment model with per-visit offsets and trends worth building into `latent fit`? (issue 20)

The trial model (``bench/segment_model.py``) is fitted by hard EM at the true K of the same
``realistic`` draws as ``bench/bench_family_start.py``, from the same three starts: the true
states, the segmentation `latent fit` starts its first restart from, and K equal pieces of each
run's time. Per start the table gives the adjusted Rand index of the decoded states against the
truth, beside the Gaussian HMM's and ``hamilton``'s on the same draws and starts (read from
bench/results/family-start.jsonl); transition states (≥ 15 decoded rows, ≥ 80 % of them in
planted transitions), beside the truth's own count (short planted visits can lie mostly in a
ramp); and in how many draws hard EM from another start ended with a higher score than from the
truth (more than 1 nat: the model prefers another structure).

What this does not test: the choice of K (every fit is at the true K), detours, the drift-only
negative control, or real studies. Those come only if this trial says the model is worth a family.

    python bench/bench_segment_trial.py --draws 5 --level medium --workers 2
    python bench/bench_segment_trial.py --draws 5 --level easy --workers 2

Raw lines: bench/results/segment-trial.jsonl; the ``segment-trial`` block of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import run_records, write_block  # noqa: E402

RAW = Path(__file__).with_name("results") / "segment-trial.jsonl"
FAMILY_START = Path(__file__).with_name("results") / "family-start.jsonl"
STARTS = ("truth", "segments", "time")
TIE = 1.0
D_MIN = 5
MAX_ITER = 15  # segment_model.fit's default
MIN_ROWS = 15


def one(task: tuple) -> dict:
    """Fit the trial model (``segment``, or ``segment+moves``) to one draw from one start."""
    level, i, start, model, workers, stride, move_start = task
    from sklearn.metrics import adjusted_rand_score

    from bench_family_start import plain_starts, realistic_draw, transition_rows, transition_states
    from segment_model import fit

    cfg, truth, X, lengths, paths = realistic_draw(level, i)
    labels = np.concatenate(paths)
    K = truth.n_states
    in_transition = transition_rows(paths, cfg.ramp)
    lab = labels if start == "truth" else plain_starts(X, lengths, K)[start]

    def moves(lab):
        return transition_states(lab, in_transition, K, MIN_ROWS)

    t0 = time.perf_counter()
    f = fit(X, lengths, lab, K, d_min=D_MIN, max_iter=MAX_ITER, moves="+moves" in model, stride=stride,
            move_start=move_start)
    return {"level": level, "draw": i, "start": start, "model": model, "workers": workers, "stride": stride,
            "move_start": move_start, "k": K, "in_move": float(f.in_move.mean()),
            "true_in_transition": float(in_transition.mean()), "ari": float(adjusted_rand_score(labels, f.labels)),
            "score": f.score, "iterations": f.iterations, "transition_states": moves(f.labels),
            "truth_transition_states": moves(labels), "states_used": int(len(np.unique(f.labels))),
            "visits_per_run": float(np.median([len(np.flatnonzero(np.diff(p)) ) + 1 for p in
                                               np.split(f.labels, np.cumsum(lengths)[:-1])])),
            "true_visits_per_run": float(np.median([len(np.flatnonzero(np.diff(p))) + 1 for p in paths])),
            "seconds": time.perf_counter() - t0}


def _peers() -> dict:
    """(level, draw, family, start) → adjusted Rand, from the family-start records."""
    out = {}
    if FAMILY_START.exists():
        for line in FAMILY_START.read_text().splitlines():
            r = json.loads(line)
            for start in STARTS:
                out[(r["level"], r["draw"], r["family"], start)] = r[start]["ari"]
    return out


def short_visits(level: str, i: int) -> int:
    """Planted visits shorter than the model's shortest (``D_MIN``), but for a run's last: it cannot
    decode them as they are."""
    from latent.simulate import random_config, simulate

    _, truth = simulate(random_config("realistic", level, i))
    n = 0
    for path in truth.paths.values():
        path = np.asarray(path)
        cut = np.flatnonzero(np.r_[True, path[1:] != path[:-1], True])
        n += int(np.sum(np.diff(cut)[:-1] < D_MIN))
    return n


def table(records: list[dict]) -> str:
    peers = _peers()
    short = {key: short_visits(*key) for key in sorted({(r["level"], r["draw"]) for r in records})}
    lines = ["| model | level | start | draws | adjusted Rand vs truth (median, min) | Gaussian HMM, same draws (median) | "
             "`hamilton`, same draws (median) | transition states: draws with any; total (the truth's own) | "
             "score above the truth start's by > 1 nat | visits per run (median; truth) | fits at the "
             f"{MAX_ITER}-iteration cap | planted visits shorter than {D_MIN} (all draws) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for model, level in sorted({(r.get("model", "segment"), r["level"]) for r in records}):
        by = {(r["draw"], r["start"]): r for r in records if r["level"] == level and r.get("model", "segment") == model}
        for start in STARTS:
            rs = [r for (d, s), r in sorted(by.items()) if s == start]
            if not rs:
                continue
            ari = [r["ari"] for r in rs]
            peer = {fam: [peers[(level, r["draw"], fam, start)] for r in rs if (level, r["draw"], fam, start) in peers]
                    for fam in ("gaussian", "hamilton")}
            above = [r for r in rs if (r["draw"], "truth") in by and start != "truth"]
            lines.append(
                f"| {model} | {level} | {start} | {len(rs)} | {np.median(ari):.2f}, {min(ari):.2f} | "
                + " | ".join(f"{np.median(v):.2f} ({len(v)})" if v else "–" for v in peer.values()) + " | "
                f"{sum(r['transition_states'] > 0 for r in rs)}; {sum(r['transition_states'] for r in rs)} "
                f"({sum(r['truth_transition_states'] for r in rs)}) | "
                + (f"{sum(r['score'] > by[(r['draw'], 'truth')]['score'] + TIE for r in above)} of {len(above)}"
                   if start != "truth" else "") + " | "
                f"{np.median([r['visits_per_run'] for r in rs]):.0f}; {np.median([r['true_visits_per_run'] for r in rs]):.0f} | "
                f"{sum(r['iterations'] >= MAX_ITER for r in rs)} | {sum(short[(level, r['draw'])] for r in rs)} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=5)
    ap.add_argument("--level", default="medium")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--moves", action="store_true", help="the model with a move between places")
    ap.add_argument("--stride", type=int, default=1,
                    help="visits on a grid of STRIDE checkpoints, refined near each boundary (1: every checkpoint)")
    ap.add_argument("--move-start", type=int, default=0,
                    help="with --moves: the move first estimated from the N rows after every switch of the start")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    done = [json.loads(line) for line in RAW.read_text().splitlines()] if RAW.exists() else []
    model = (("segment+moves" if args.moves else "segment") + (f" (grid {args.stride})" if args.stride > 1 else "")
             + (f" (move from {args.move_start} rows)" if args.moves and args.move_start else ""))
    have = {(r["level"], r["draw"], r["start"], r.get("model", "segment")) for r in done}
    todo = [(args.level, i, s, model, args.workers, args.stride, args.move_start)
            for i in range(args.draws) for s in STARTS
            if (args.level, i, s, model) not in have]
    done += run_records(RAW, one, todo, args.workers)
    text = table(done)
    secs = [r["seconds"] for r in done if r.get("stride", 1) == 1]
    grid_secs = [r["seconds"] for r in done if r.get("stride", 1) > 1]
    print(text)
    if not args.no_write:
        write_block("segment-trial", (
            "The trial segment model (`bench/segment_model.py`: visits of at least "
            f"{D_MIN} checkpoints, each with its own offset and trend integrated out, AR(1) residuals; hard EM; "
            "`segment+moves`: also a move between places, a segment of any length with a broad level and trend that is "
            "not a place, its checkpoints given to the place it leads to) "
            "at the true K of the `realistic` draws of `family-start`, from the same three starts. The Gaussian HMM "
            "and `hamilton` columns are those draws' and starts' adjusted Rand in bench/results/family-start.jsonl "
            "(EM with the fit's settings). Not tested here: choosing K, detours, the drift-only control, real studies."
            f"\n\n{text}\n\nRaw: bench/results/segment-trial.jsonl (every record in it; seconds per fit "
            f"{min(secs):.0f}-{max(secs):.0f}, median {np.median(secs):.0f}"
            + (f"; on the grid {min(grid_secs):.0f}-{max(grid_secs):.0f}, median {np.median(grid_secs):.0f}"
               if grid_secs else "") + ", with "
            f"{'/'.join(str(w) for w in sorted({r.get('workers', 2) for r in done}))} fits at a time on "
            f"{os.cpu_count()} cores). Command: "
            "`python bench/bench_segment_trial.py --draws 5 --level medium --workers 2`, then `--level easy`, and "
            "both again with `--moves`; the grid rows with `--moves --stride 6`, and `--move-start 3` (the move "
            "first estimated from the 3 rows after every switch of the start, not broad)."),
            title="A segment model with per-visit offsets and trends, on trial (`bench/bench_segment_trial.py`)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
