"""Can the trial segment model choose K? (issue 20; the step after ``bench/bench_segment_trial.py``)

The trial model (``bench/segment_model.py``, with the move between places, visits on a grid of
``--stride`` checkpoints refined to the checkpoint near each boundary) is fitted at K = 1..8 by hard
EM from the segmentation start that `latent fit`'s first restart uses, on half of the runs (even
seeds, then odd), and each held-out run is scored by the segment forward algorithm (every
segmentation summed, offsets and trends integrated out). K is chosen two ways from the 40 held-out
runs' scores:

* ``best``: the K with the highest held-out total;
* ``paired 1-SE``: the smallest K whose per-run score is within one standard error of the best K's,
  the standard error of the per-run *differences* (a run's offset moves its score under every K alike,
  so differences do not carry it, the failure issue 20 measured for `latent fit`'s one-SE rule).

Draws: the ``realistic`` draws of ``family-start`` and ``segment-trial`` (true K 2-8), and the
``drift`` family (no states, meant as the negative control where K = 1 is "no discrete phases"; its
per-run sigmoid between two levels every run shares is better fitted by places and a move, docs/fit.md).
Beside every K, the continuous null (``bench/trend_model.py``: each run a smooth curve, a local linear
trend with AR(1) noise around it, no states) is fitted on the same training runs and scores the same
held-out runs. The call "discrete phases" needs the best K to beat it (by more than one standard error of
the per-run gains; not a sufficient condition, docs/fit.md);
K = 1 of the segment model is no such null, since one visit's offset, trend and AR(1) cannot follow a
curve. ``--study NAME`` runs the same on a real study of the store; ``--null-of NAME`` on draws from the
null itself, its variances fitted to that real study (the test's own calibration: no states, so the
null must not be beaten; ``--null-slowing`` draws from the slowing null instead). ``--slowing`` adds the
null whose curve calms down as training goes on (innovations scaled by (1 + t/t0)^−κ; minutes per fit).
``--clock`` adds that null with a clock of each held-out run's own: the schedule's t0 times a factor in
1/16..16, integrated out (a mixture; the null is still fitted with one clock). It asks whether places and
moves beat one shared curve that runs follow at their own pace.
``--features`` takes other features of a real study (`latent fit --features`, e.g. ``progress``).
``--family smooth``: continuous curves of another shape than the null's (:func:`smooth_draw`), a second
negative control.
This is cheaper than `latent fit`'s procedure (2 folds, one start, no restarts), so it measures the
model's held-out evidence, not a finished selection rule.

    python bench/bench_segment_k.py --family realistic --level medium --draws 5 --workers 2
    python bench/bench_segment_k.py --family realistic --level easy --draws 5 --workers 2
    python bench/bench_segment_k.py --family drift --level medium --draws 5 --workers 2
    latent collect --task modadd --seeds 40 && python bench/bench_segment_k.py --study modadd --workers 2
    python bench/bench_segment_k.py --null-of modadd --draws 5 --workers 2
    python bench/bench_segment_k.py --study modadd-contrast --features progress --slowing --workers 2

Raw lines (one per draw, K and fold, with every held-out run's score): bench/results/segment-k.jsonl;
the ``segment-k`` block of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from functools import lru_cache
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import run_records, write_block  # noqa: E402

RAW = Path(__file__).with_name("results") / "segment-k.jsonl"
KS = range(1, 9)
MIN_ROWS = 15  # a place with fewer decoded rows is not counted as used (as in bench_segment_trial.py)
FOLDS = 2
D_MIN = 5


def draw(family: str, level: str, i: int):
    """``(true K, X, lengths)`` of a draw, or of a real study (``family`` ``study:<name>``; true K 0 where
    there is no truth)."""
    if family.startswith("study:"):
        return (0,) + study_data(family.split(":", 1)[1], level)
    if family.startswith(("trend:", "trend-slowing:")):  # the null's own draws, its variances measured on a study
        import trend_model

        from latent.features import zscore

        kind, name = family.split(":", 1)
        null, lengths = _null_of(name, level, kind == "trend-slowing")
        rng = np.random.default_rng(np.random.SeedSequence(2026, spawn_key=(i,)))
        X = trend_model.simulate(null, len(lengths), int(lengths.max()), rng)
        return 0, zscore(X)[0], np.full(len(lengths), int(lengths.max()))
    if family == "smooth":
        return 0, smooth_draw(i), np.full(SMOOTH_RUNS, SMOOTH_T)
    from bench_family_start import realistic_draw

    _, truth, X, lengths, _ = realistic_draw(level, i, family)
    return (int(truth.n_states) if family != "drift" else 0), X, np.asarray(lengths)


@lru_cache(maxsize=None)
def _null_of(name: str, store: str, slowing: bool = False):
    """The continuous null (``slowing``: the one whose curve calms down) fitted to a real study, and the
    study's run lengths: fitted once per process, not once per task (a fit takes minutes)."""
    import trend_model

    X, lengths = study_data(name, store)
    return trend_model.fit(X, lengths, slowing=slowing), lengths


SMOOTH_RUNS, SMOOTH_T, SMOOTH_D = 40, 300, 14
#: the progress measures with the two Fourier losses on a log scale (the `segment-k` rows that use them)
LOG_PROGRESS = ("embed_gini,unembed_gini,embed_top_share,unembed_top_share,log:restricted_loss,log:excluded_loss,"
                "sum_sq_weights")
#: factors a held-out run's clock may multiply the slowing null's t0 by (``--clock``)
CLOCKS = tuple(2.0 ** np.arange(-4, 5))


def smooth_draw(i: int) -> np.ndarray:
    """A continuous study of another shape than the null's: every feature approaches its end value along
    ``a_j (1 − exp(−t/τ_r)) + c_j t/T``, one time scale τ_r per run (5-50 % of the run), with the
    realistic family's AR(1) noise (φ 0.9-0.99) and run offsets (0.3-1.5 noise sds). No plateaus and no
    jumps: the negative control a loss curve looks like. Globally z-scored, (runs * T, D)."""
    from latent.features import zscore

    rng = np.random.default_rng(np.random.SeedSequence(2027, spawn_key=(i,)))
    T, D = SMOOTH_T, SMOOTH_D
    phi, offset, sd = rng.uniform(0.9, 0.99), rng.uniform(0.3, 1.5), 0.3
    a, c = rng.normal(0, 2, D), rng.normal(0, 0.5, D)
    t = np.arange(T)[:, None]
    runs = []
    for _ in range(SMOOTH_RUNS):
        tau = T * np.exp(rng.uniform(np.log(0.05), np.log(0.5)))
        eps = np.empty((T, D))
        eps[0] = rng.normal(0, sd, D)
        for s in range(1, T):
            eps[s] = phi * eps[s - 1] + rng.normal(0, sd * np.sqrt(1 - phi**2), D)
        runs.append(a * (1 - np.exp(-t / tau)) + c * t / T + rng.normal(0, offset * sd, D) + eps)
    return zscore(np.vstack(runs))[0]


def study_data(name: str, store: str):
    """A real study's rows as the default `latent fit` reads and scales them: ``(X, lengths)``. ``name`` is
    the study's name or path, or ``NAME/FEATURES`` for `latent fit --features FEATURES` (comma-separated).
    A feature written ``log:COLUMN`` is this bench's own transform, not `latent fit`'s: the column's natural
    log before scaling (a loss that falls by orders of magnitude)."""
    from latent.features import GROUP_NAMES, build_features, measured_rows
    from latent.fit import FitConfig, _read_runs
    from latent.store import resolve_study

    spec = ""
    if "/" in name and not any((path / "study.json").is_file() for path in (Path(store) / name, Path(name))):
        name, _, spec = name.rpartition("/")  # a study's path may hold "/"; its features never do
    features = [f for f in spec.split(",") if f]
    logged = [f.removeprefix("log:") for f in features if f.startswith("log:")]
    groups = sorted(set(logged) & set(GROUP_NAMES + ("all",)))
    if groups:
        raise SystemExit(f"log: takes a column, not a group: {', '.join(groups)}")
    study = resolve_study(store, name)
    cfg = FitConfig(features=tuple(f.removeprefix("log:") for f in features) if features else None)
    cfg = cfg.resolve(json.loads((study.root / "study.json").read_text()))
    table = measured_rows(_read_runs(study, cfg, None), cfg.features)  # as `latent fit` reads it
    for column in logged:
        values = table[column].to_numpy(float)
        if np.any(values[np.isfinite(values)] <= 0):  # missing values go on to be handled as `latent fit` does
            raise SystemExit(f"log:{column}: the column has values <= 0; leave out the log: prefix")
        table[column] = np.log(values)
    fm = build_features(table, cfg.features, cfg.first_n, cfg.scaling)
    return fm.X, np.asarray(fm.lengths)


def one(task: tuple) -> dict:
    """Fit K places (+ the move) to one fold's training runs from ``starts`` starts, keep the best training
    score, and score the other runs; K = 0 is the continuous null (``bench/trend_model.py``)."""
    family, level, i, K, fold, stride, starts, move_start = task
    from bench_family_start import plain_starts
    from segment_model import fit, score_runs

    from latent.segments import labels_from_segments, run_segments

    true_k, X, lengths = draw(family, level, i)
    runs = np.split(X, np.cumsum(lengths)[:-1])
    train = [r for r in range(len(runs)) if r % FOLDS != fold]
    test = [r for r in range(len(runs)) if r % FOLDS == fold]
    Xtr, ltr = np.vstack([runs[r] for r in train]), lengths[train]
    Xte, lte = np.vstack([runs[r] for r in test]), lengths[test]
    out = {"family": family, "level": level, "draw": i, "k": K, "fold": fold, "stride": stride, "true_k": true_k,
           "runs": test, "starts": starts, "move_start": move_start, "values_per_run": Xte.size / len(lte)}
    t0 = time.perf_counter()
    if K <= 0:  # 0: the continuous null; -1: the same with innovations that shrink with training time;
        # -2: that fit, each held-out run scored with a clock of its own (trend_model.score_runs)
        import trend_model

        trend = trend_model.fit(Xtr, ltr, slowing=K < 0)
        clocks = CLOCKS if K == -2 else None
        return out | {"model": {0: "trend", -1: "trend-slowing", -2: "trend-clock"}[K],
                      "held_out": trend_model.score_runs(Xte, lte, trend, clocks).tolist(),
                      "train_score": float(trend_model.score_runs(Xtr, ltr, trend).sum()),
                      "seconds": time.perf_counter() - t0}
    if K == 1:
        tries = [np.zeros(len(Xtr), int)]
    else:  # the segmentation start (`latent fit`'s first restart), equal time pieces, then other KMeans seeds
        segs = run_segments(Xtr, ltr)
        plain = plain_starts(Xtr, ltr, K, segs)
        tries = [plain["segments"], plain["time"]] + [labels_from_segments(Xtr, ltr, segs, K, seed, 0.5)
                                                      for seed in range(1, starts - 1)]
        tries = tries[:starts]
    fits = [fit(Xtr, ltr, lab, K, d_min=D_MIN, moves=True, stride=stride, move_start=move_start) for lab in tries]
    f = max(fits, key=lambda g: g.score)
    held = score_runs(Xte, lte, f.params, stride)
    return out | {"held_out": held.tolist(), "train_score": f.score, "train_scores": [g.score for g in fits],
                  "place_rows": np.bincount(f.labels[f.labels >= 0], minlength=K).tolist(),
                  "iterations": f.iterations, "seconds": time.perf_counter() - t0}


def choose(records: list[dict]) -> dict:
    """One draw's choices from its records: ``best`` and ``paired 1-SE`` (None when a K is missing), and,
    where the continuous null was scored, whether the best K fails to beat it: ``flat`` (the null's
    held-out total is at least the best K's) and ``flat_1se`` (the best K's per-run gain over the null is
    within one standard error of the per-run differences)."""
    per_run = {}
    for r in records:
        for run, s in zip(r["runs"], r["held_out"]):
            per_run.setdefault(r["k"], {})[run] = s
    ks = sorted(k for k in per_run if k > 0)
    nulls = sorted(k for k in per_run if k <= 0)
    if ks != list(KS) or len({len(per_run[k]) for k in ks}) != 1:
        return {}
    runs = sorted(per_run[ks[0]])
    S = np.array([[per_run[k][r] for r in runs] for k in ks])  # (K, runs)
    best = int(np.argmax(S.sum(1)))
    diff = S - S[best]
    se = diff.std(1, ddof=1) / np.sqrt(len(runs))
    within = [j for j in range(len(ks)) if diff[j].mean() >= -se[j]]
    used = [sum(n >= MIN_ROWS for n in r["place_rows"]) for r in records if r["k"] == ks[best] and "place_rows" in r]
    sizes = [r["values_per_run"] for r in records if "values_per_run" in r]
    out = {"best": ks[best], "one_se": ks[min(within)], "used": min(used) if used else None,
           "values_per_run": float(np.mean(sizes)) if sizes else None}
    for k in nulls:
        if sorted(per_run[k]) != runs:
            continue
        gain = S[best] - np.array([per_run[k][r] for r in runs])
        tag = {0: "", -1: "_slowing", -2: "_clock"}[k]
        out |= {"flat" + tag: bool(gain.sum() <= 0),
                "flat_1se" + tag: bool(gain.mean() <= gain.std(ddof=1) / np.sqrt(len(runs))),
                "gain" + tag: float(gain.mean()), "gain_se" + tag: float(gain.std(ddof=1) / np.sqrt(len(runs))),
                "runs_better" + tag: int((gain > 0).sum()), "n_runs": len(runs)}
    return out


RECOVERY = Path(__file__).with_name("results") / "recovery.jsonl"
PEERS = {"default": "Gaussian HMM", "ar": "`ar`", "hamilton": "`hamilton`"}


def _peer_k() -> dict:
    """(family, level, option, draw) → the K `latent fit` chose on the same 300 × 40 draw
    (bench/results/recovery.jsonl; its latest record of each)."""
    out = {}
    if RECOVERY.exists():
        for line in RECOVERY.read_text().splitlines():
            r = json.loads(line)
            fam, level, option, i, T, n = r["key"]
            if (T, n) == (300, 40) and option in PEERS:
                out[(fam, level, option, i)] = r["score"]["k_fit"]
    return out


def _gain(choice: dict, key: str) -> str:
    """A gain in nats per held-out run, and per value (checkpoint × feature) in brackets: runs of other
    lengths and feature counts compare by the latter."""
    size = choice.get("values_per_run")
    return f"{choice[key]:.0f}" + ("" if not size else f" ({choice[key] / size:.3f})")


def _against(nulls: list, tag: str) -> tuple[str, str]:
    """The cells of one null (``tag``: ``_slowing``, ``_clock``): the gains of each draw, then their standard
    errors and the held-out runs the segment model scores higher; "not run" where it was not scored."""
    if None in nulls or not any("gain" + tag in c for c in nulls):
        return "not run", "not run"
    gains = ", ".join(_gain(c, "gain" + tag) if "gain" + tag in c else "not run" for c in nulls)
    spread = ", ".join(f"{c['gain_se' + tag]:.0f}; {c['runs_better' + tag]}/{c['n_runs']}" if "gain" + tag in c
                       else "not run" for c in nulls)
    return gains, spread


def table(done: list[dict]) -> str:
    peers = _peer_k()
    lines = ["| family | level | starts per K | move's start | draws | true K | K (best held-out) | "
             f"places the best K's fits use (≥ {MIN_ROWS} rows; fewer of the two folds) | K (paired 1-SE) | "
             "right (best; 1-SE) | "
             "mean distance from the true K (best; 1-SE) | no discrete phases (K = 1; best; 1-SE) | "
             "continuous null not beaten (best; paired 1-SE) | "
             "best K's gain over the null (nats per held-out run; per value) | "
             "gain over the slowing null (nats per held-out run; per value) | "
             "over the slowing null: standard error of the gain; held-out runs better under the segment model | "
             "gain over the slowing null with a run's own clock (per run; per value) | "
             "over it: standard error; runs better | "
             + " | ".join(f"{name}'s K, same draws (`latent fit`)" for name in PEERS.values()) + " |",
             "|---" * 18 + "|" + "---|" * len(PEERS)]
    groups = sorted({(r["family"], r["level"], r.get("starts", 1), r.get("move_start", 0)) for r in done if r["k"] > 0})
    for fam, level, starts, move_start in groups:
        mine = [r for r in done if r["k"] > 0 and (r["family"], r["level"], r.get("starts", 1), r.get("move_start", 0))
                == (fam, level, starts, move_start)]
        mine += [r for r in done if r["k"] <= 0 and (r["family"], r["level"]) == (fam, level)]
        picks, chosen, used, nulls = [], [], [], []
        for d in sorted({r["draw"] for r in mine}):
            c = choose([r for r in mine if r["draw"] == d])
            if c:
                picks.append((next(r["true_k"] for r in mine if r["draw"] == d), c["best"], c["one_se"]))
                chosen.append(d)
                used.append("–" if c["used"] is None else str(c["used"]))
                nulls.append(c if "flat" in c else None)
        if not picks:
            continue
        n = len(picks)
        truth = ", ".join(str(t) if t else "–" for t, _, _ in picks)
        real = fam.startswith(("study:", "trend:", "trend-slowing:"))  # a real study, or drawn from a fit to one
        drift = fam in ("drift", "smooth") or real  # no true K
        right = "–" if drift else f"{sum(b == t for t, b, _ in picks)}/{n}; {sum(o == t for t, _, o in picks)}/{n}"
        off = ("–" if drift else f"{np.mean([abs(b - t) for t, b, _ in picks]):.1f}; "
               f"{np.mean([abs(o - t) for t, _, o in picks]):.1f}")
        flat = f"{sum(b == 1 for _, b, _ in picks)}/{n}; {sum(o == 1 for _, _, o in picks)}/{n}"
        if None in nulls:
            null, gain = "not run", "not run"
        else:
            null = f"{sum(c['flat'] for c in nulls)}/{n}; {sum(c['flat_1se'] for c in nulls)}/{n}"
            gain = ", ".join(_gain(c, "gain") for c in nulls)
        slowing, spread = _against(nulls, "_slowing")
        clock, clock_spread = _against(nulls, "_clock")
        peer_cells = []
        for option in PEERS:
            ks = [peers.get((fam, level, option, d)) for d in chosen]
            if fam == "smooth" or real:
                peer_cells.append("–")
                continue
            peer_cells.append(", ".join("not run" if k is None else str(k) for k in ks)
                              + ("" if drift or None in ks else
                                 f" (mean distance {np.mean([abs(k - t) for k, (t, _, _) in zip(ks, picks)]):.1f})"))
        start_of_move = f"{move_start} rows" if move_start else "broad"
        lines.append(f"| {fam} | {'–' if real else level} | {starts} | {start_of_move} | {n} | {truth} | "
                     f"{', '.join(str(b) for _, b, _ in picks)} | "
                     f"{', '.join(used)} | "
                     f"{', '.join(str(o) for _, _, o in picks)} | {right} | {off} | {flat} | {null} | {gain} | "
                     f"{slowing} | {spread} | {clock} | {clock_spread} | "
                     + " | ".join(peer_cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", default="realistic", choices=("realistic", "drift", "smooth"))
    ap.add_argument("--level", default="medium")
    ap.add_argument("--study", help="a real study of the store instead of simulated draws (the default fit's rows)")
    ap.add_argument("--null-of", metavar="STUDY", help="draws from the continuous null (bench/trend_model.py) "
                    "fitted to this real study of the store: the null's own calibration, no states")
    ap.add_argument("--features", help="with --study or --null-of: the features `latent fit --features` takes "
                    "(comma-separated names or groups, e.g. progress); default: the study's own")
    ap.add_argument("--null-slowing", action="store_true",
                    help="with --null-of: draws from the slowing null fitted to the study, not the constant one")
    ap.add_argument("--store", default="data")
    ap.add_argument("--draws", type=int, default=5)
    ap.add_argument("--stride", type=int, default=6, help="grid of the visits' boundaries (refined near each)")
    ap.add_argument("--starts", type=int, default=1, help="starts per K and fold (the best training score is kept): "
                    "the segmentation, equal time pieces, then KMeans of the segments with other seeds")
    ap.add_argument("--move-start", type=int, default=0,
                    help="the move first estimated from the N rows after every switch of each start (0: broad)")
    ap.add_argument("--clock", action="store_true", help="also the slowing null with a clock of each held-out "
                    "run's own (its t0 times a factor in 1/16..16, integrated out; fitted with one clock)")
    ap.add_argument("--slowing", action="store_true", help="also the null whose innovations shrink with training "
                    "time, (1 + t/t0)^-κ (bench/trend_model.py; minutes per fit)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    if args.features and not (args.study or args.null_of):
        ap.error("--features goes with --study or --null-of")
    if args.null_slowing and not args.null_of:
        ap.error("--null-slowing goes with --null-of")
    suffix = f"/{args.features}" if args.features else ""
    if args.study:  # one draw: the study itself; its level names the store
        args.family, args.level, args.draws = f"study:{args.study}{suffix}", args.store, 1
    elif args.null_of:
        kind = "trend-slowing" if args.null_slowing else "trend"
        args.family, args.level = f"{kind}:{args.null_of}{suffix}", args.store
    done = [json.loads(line) for line in RAW.read_text().splitlines()] if RAW.exists() else []
    have = {(r["family"], r["level"], r["draw"], r["k"], r["fold"], r["stride"], r.get("starts", 1),
             r.get("move_start", 0)) for r in done}
    # the largest K first: the slowest fits start while the others fill in around them
    # (the null, K = 0, does not depend on the segment fits' settings: one record per draw and fold serves all)
    todo = [(args.family, args.level, i, K, fold, args.stride) + ((args.starts, args.move_start) if K else (1, 0))
            for i in range(args.draws) for K in [-2] * args.clock + [-1] * args.slowing + sorted(KS, reverse=True) + [0]
            for fold in range(FOLDS)]
    todo = [t for t in todo if t not in have]
    for name in filter(None, (args.study, args.null_of)) if todo else ():  # fits to run: one line, not a traceback
        from latent.errors import UserError
        from latent.store import resolve_study

        try:
            resolve_study(args.store, name)
        except UserError as exc:
            ap.error(str(exc))
    done += run_records(RAW, one, todo, args.workers,
                        shown=lambda rec: {k: v for k, v in rec.items() if k not in ("held_out", "runs")})
    done = [r for r in done if r["stride"] == args.stride]
    text = table(done)
    secs = [r["seconds"] for r in done]
    print(text)
    if not args.no_write and done:
        write_block("segment-k", (
            "The trial segment model with the move (`bench/segment_model.py`; visits of at least "
            f"{D_MIN} checkpoints on a grid of {args.stride} refined near each boundary) fitted at K = "
            f"{min(KS)}..{max(KS)} on half the runs (even seeds, then odd) from the segmentation start (or the best of "
            "3 starts), every "
            "held-out run scored by the segment forward algorithm. `best`: the K with the highest held-out total; "
            "`paired 1-SE`: the smallest K within one standard error of the best, the error of per-run differences. "
            "`drift` draws have no states (the negative control: K = 1 is \"no discrete phases\"). Two folds and 1 "
            "or 3 starts: cheaper than `latent fit`'s selection (5 folds, 5 restarts). The peers' K are "
            "`latent fit`'s on the same draws (bench/results/recovery.jsonl, its latest record of each). "
            "The continuous null (`bench/trend_model.py`: every run a local linear trend, no states; its variances "
            "fitted on the same training runs) is scored on the same held-out runs: \"not beaten\" when its total "
            "is at least the best K's (`best`) or the best K's mean per-run gain over it is within one standard "
            "error (`paired 1-SE`); that is the call \"no discrete phases\". `study:` rows are real studies of the "
            "store (the default fit's rows); `trend:` rows are draws from the null itself, its variances measured "
            "on that real study (the null's own calibration: no states); `smooth` draws are continuous curves of "
            "another shape (each feature approaching its end value as 1 - exp(-t/tau), tau per run, with AR(1) noise "
            "and run offsets). The slowing null (`--slowing`) lets the curve's innovations shrink with training "
            "time, (1 + t/t0)^-kappa; its fits take minutes, so it was run on fewer draws. `trend-slowing:` rows are "
            "draws from the slowing null fitted to the real study (its own calibration). A study name `NAME/FEATURES` "
            "is the study fitted on those features (`latent fit --features`). Gains are per held-out run and, in "
            "brackets, per value (a checkpoint of a feature): runs of other lengths and feature counts differ in size. "
            "Beside the gain over the slowing null: its standard error (per-run gains) and the held-out runs the "
            "segment model scores higher than the slowing null. `--clock`: the slowing null with a clock of each "
            "held-out run's own (t0 times a factor in 1/16..16, the factors integrated out with equal weights; the "
            "null still fitted with one clock)."
            f"\n\n{text}\n\nRaw: bench/results/segment-k.jsonl (per draw, K and fold; seconds per fit and "
            f"held-out scoring {min(secs):.0f}-{max(secs):.0f}, median {np.median(secs):.0f}, on {os.cpu_count()} "
            "cores). Commands: `python bench/bench_segment_k.py --family realistic --level medium --draws 5 "
            "--workers 2`, then `--level easy`, then `--family drift --level medium`; the rows of 3 starts per K "
            "with `--starts 3` (the segmentation, equal time pieces, KMeans with another seed; the best training "
            "score kept); the rows whose move starts from 3 rows with `--move-start 3` (the move first estimated "
            "from the 3 rows after every switch of each start); the real studies with `--study modadd` and "
            "`--study parity` after `latent collect --task modadd --seeds 40` and `--task parity --seeds 40`; the "
            "null's own draws with `--null-of modadd --draws 5`; the smooth draws with `--family smooth`; the "
            "slowing null with `--slowing`: `--family smooth --draws 2`, `--family drift --draws 1`, `--level easy "
            "--draws 1`, `--level medium --draws 3`, `--study modadd`, `--study parity`; the slowing null's own "
            "draws with `--null-of modadd --null-slowing --slowing --draws 3`; the contrast preset's runs "
            "(`latent collect --task modadd --preset contrast --seeds 40`) with `--study modadd-contrast --slowing`, "
            "the same with `--features progress`, with `--features embed_gini,unembed_gini,embed_top_share,"
            "unembed_top_share,sum_sq_weights` and with `--features " + LOG_PROGRESS + "`; the null's own draws "
            "with `--null-of modadd-contrast --null-slowing --slowing --draws 3` and the same with `--features "
            "progress` and `--features " + LOG_PROGRESS + "`; the run's own clock with `--clock` on the same draws "
            "and studies. `log:COLUMN` is this bench's transform (the column's log before scaling), not "
            "`latent fit`'s."),
            title="Choosing K with the trial segment model (`bench/bench_segment_k.py`)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
