"""Benchmark `latent fit`: the EM engine before/after, and the default fit end to end.

Workload: a simulated study (latent.simulate: exact 7-state HMM with a detour and a fork) of 40
runs × 1,000 checkpoints × 14 features, the size of the default modadd study; or a real study
with ``--study PATH``. Measured in one process, one after the other:

1. the EM engine: K = 1..8, one restart each (KMeans start, 32 iterations, full covariance) on 32
   runs, with hmmlearn's ``GaussianHMM`` and with ``latent.gaussian.FastGaussianHMM``: seconds,
   ratio, and the largest relative log-likelihood difference after one EM step from one start;
2. ``fit_study`` with the defaults (5-fold CV, K = 1..8 × 5 restarts per fold, refit, 20 stability
   resamples) over 2 processes, with its time per stage (target: ≤ 60 s on 2 cores);
3. the same with 1 process (same model? speed-up of the pool);
4. ``fit_study`` with ``FitConfig.reference()`` (one split, 5 restarts, KMeans start).

The script prints the numbers and writes them into bench/RESULTS.md between
``<!-- fit:begin -->`` and ``<!-- fit:end -->`` (only that block is replaced).

    python bench/bench_fit.py                       # simulated 40 × 1000 study
    python bench/bench_fit.py --study data/modadd   # a real study (not modified: fits go to a copy)
    python bench/bench_fit.py --quick --no-write    # 10 runs × 200 checkpoints
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import write_block  # noqa: E402

from latent.features import build_features  # noqa: E402
from latent.fit import FitConfig, fit_study  # noqa: E402
from latent.simulate import SimConfig, simulate, write_study  # noqa: E402
from latent.store import Study  # noqa: E402


def load() -> str:
    try:
        return "/".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover
        return "n/a"


def engine(fm, n_runs_fit: int) -> tuple[float, float, float]:
    """Seconds for K = 1..8 (one KMeans-started restart each) with hmmlearn and with ours."""
    import logging

    from hmmlearn.hmm import GaussianHMM
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    from latent.gaussian import FastGaussianHMM

    logging.getLogger("hmmlearn").setLevel(logging.ERROR)
    X, lengths = fm.subset(range(n_runs_fit))
    inits = {k: KMeans(k, n_init=1, random_state=k).fit(X).cluster_centers_ for k in range(1, 9)}
    seconds, scores = {}, {}
    with threadpool_limits(1):
        for cls in (GaussianHMM, FastGaussianHMM):
            t0 = time.perf_counter()
            ll = []
            for k in range(1, 9):
                m = cls(k, covariance_type="full", n_iter=32, random_state=k, init_params="stc",
                        implementation="scaling")
                m.means_ = inits[k].copy()
                m.fit(X, lengths)
                ll.append(m.score(X, lengths))
            seconds[cls.__name__] = time.perf_counter() - t0
            scores[cls.__name__] = np.array(ll)
    # the same arithmetic up to rounding: one EM step from the same start gives the same model
    # (over 32 steps rounding can move a near-degenerate fit to another optimum)
    one = []
    with threadpool_limits(1):
        for k in range(1, 9):
            ll = []
            for cls in (GaussianHMM, FastGaussianHMM):
                m = cls(k, covariance_type="full", n_iter=1, random_state=k, init_params="stc",
                        implementation="scaling")
                m.means_ = inits[k].copy()
                ll.append(m.fit(X, lengths).score(X, lengths))
            one.append(abs(ll[0] - ll[1]) / abs(ll[0]))
    return seconds["GaussianHMM"], seconds["FastGaussianHMM"], float(max(one))


def timed_fit(study: Study, cfg: FitConfig, n_jobs: int):
    t0 = time.perf_counter()
    result = fit_study(study, cfg, n_jobs=n_jobs)
    return time.perf_counter() - t0, result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", help="a real study directory to time instead of the simulated one")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--jobs", type=int, default=os.cpu_count())
    ap.add_argument("--no-write", action="store_true", help="do not update bench/RESULTS.md")
    args = ap.parse_args(argv)
    n_runs, T = (10, 200) if args.quick else (40, 1000)
    with tempfile.TemporaryDirectory() as tmp:
        if args.study:
            src = Path(args.study)
            root = Path(tmp) / src.name
            shutil.copytree(src, root, ignore=shutil.ignore_patterns("fits", "reports", "state"))
            what = f"study `{src.name}` ({Study(root).read_meta().get('task')})"
        else:
            table, truth = simulate(SimConfig(n_main=4, detours=1, forks=1, p_take=0.4, n_runs=n_runs,
                                              n_checkpoints=T, seed=1))
            root = write_study(Path(tmp) / "sim", table, truth)
            what = f"simulated exact HMM (K = {truth.n_states}, one detour, one fork)"
        study = Study(root)
        fm = build_features(study.read_runs(), study.read_meta().get("features"), 1000, "global")
        shape = f"{len(fm.seeds)} runs × {int(fm.lengths.max())} checkpoints × {fm.X.shape[1]} features"
        print(f"workload: {what}, {shape}", flush=True)
        lines = [f"Workload: {what}, {shape}.",
                 f"Machine: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}; "
                 f"load average before: {load()}.", ""]

        stock, fast, diff = engine(fm, max(2, int(0.8 * len(fm.seeds))))
        print(f"engine: hmmlearn {stock:.1f} s, ours {fast:.1f} s ({stock / fast:.2f}x), one-step rel. diff {diff:.1e}",
              flush=True)
        lines += ["| EM engine: K = 1..8, one restart each, 32 iterations, 80 % of the runs | seconds |",
                  "|---|---|",
                  f"| hmmlearn `GaussianHMM` | {stock:.1f} |",
                  f"| `latent.gaussian.FastGaussianHMM` | {fast:.1f} |",
                  f"| speed-up | **{stock / fast:.2f}×** (after one EM step from the same start the log-likelihoods "
                  f"agree to {diff:.0e}, relative) |", ""]

        rows = []
        for label, cfg, jobs in (("defaults, 2 processes", FitConfig(), args.jobs),
                                 ("defaults, 1 process", FitConfig(), 1),
                                 ("`--reference`, 2 processes", FitConfig.reference(), args.jobs)):
            seconds, result = timed_fit(study, cfg, jobs)
            t = result.timings
            rows.append((label, seconds, t, result))
            print(f"{label}: {seconds:.1f} s (selection {t['selection']:.1f}, stability {t['stability']:.1f}), "
                  f"K = {result.selector.n_states_}, detours {[d['state'] for d in result.analysis['detours']]}",
                  flush=True)
        same = all(np.array_equal(rows[0][3].selector.params_[k], rows[1][3].selector.params_[k])
                   for k in ("means", "covars", "transmat"))
        lines += ["| `fit_study` | wall s | model selection | stability (20 resamples) | rest | K | detours |",
                  "|---|---|---|---|---|---|---|"]
        for label, seconds, t, result in rows:
            lines.append(f"| {label} | **{seconds:.1f}** | {t['selection']:.1f} | {t['stability']:.1f} | "
                         f"{seconds - t['selection'] - t['stability']:.1f} | {result.selector.n_states_} | "
                         f"{[d['state'] for d in result.analysis['detours']] or 'none'} |")
        lines += ["", f"Pool speed-up: {rows[1][1] / rows[0][1]:.2f}× with {args.jobs} processes; the same model "
                      f"both ways: {same}. Target for the defaults on a 40-seed study: ≤ 60 s on 2 cores.",
                  f"Load average after: {load()} (the machine may be shared; ratios are the signal)."]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_block("fit", text, title="`latent fit` (`bench/bench_fit.py`)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
