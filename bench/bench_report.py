"""Time ``latent report`` on a generated fit of 40 runs × 1,000 checkpoints (target: ≤ 15 s).

Usage::

    .venv/bin/python bench/bench_report.py [--runs 40] [--checkpoints 1000] [--repeats 3]

Builds the fit with ``tests/report_fixtures.make_big_fit`` in a temporary store, then times
(a) the whole command in a fresh process, imports included, as a user would run it, and
(b) the stages in-process: loading the artifacts, drawing, encoding PNG+SVG, writing. The
numbers replace the block between ``<!-- report:begin -->`` and ``<!-- report:end -->`` in
``bench/RESULTS.md`` (the file is created if absent; the rest of it is left alone).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from results import write_block  # noqa: E402



def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--checkpoints", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--results", default=str(ROOT / "bench" / "RESULTS.md"))
    args = ap.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    from report_fixtures import make_big_fit

    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp)
        make_big_fit(store, n_seeds=args.runs, n_steps=args.checkpoints)
        # the page with its interactive view and the --static page, alternated so that load drifts
        # hit both alike; the ratio is the view's cost
        cli, static, pages = [], [], {}
        for _ in range(args.repeats):
            for flags, times in (([], cli), (["--static"], static)):
                t0 = time.perf_counter()
                subprocess.run([sys.executable, "-m", "latent", "report", "--store", str(store), *flags], check=True,
                               capture_output=True, cwd=ROOT)
                times.append(time.perf_counter() - t0)
                pages[bool(flags)] = next(store.glob("*/reports/*/index.html")).stat().st_size / 1e6

        from latent.reports import html as H
        from latent.reports.artifacts import load_fit

        t0 = time.perf_counter()
        fit = load_fit(store)
        t_load = time.perf_counter() - t0
        t0 = time.perf_counter()
        figs = H.build_figures(fit)
        t_draw = time.perf_counter() - t0
        t_png = t_svg = 0.0
        for _, _, _, fig, _ in figs:
            t0 = time.perf_counter()
            H._save(fig, "png")
            t_png += time.perf_counter() - t0
            t0 = time.perf_counter()
            H._save(fig, "svg")
            t_svg += time.perf_counter() - t0
        size_mb = sum(p.stat().st_size for p in fit.report_dir.iterdir()) / 1e6

    lines = [
        f"Generated fit: {args.runs} runs × {args.checkpoints} checkpoints, K = 6, 4 features "
        "(`tests/report_fixtures.make_big_fit`). Target: ≤ 15 s for the whole command.",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs (shared), Python {platform.python_version()}, "
        f"matplotlib {matplotlib.__version__}; measured with `python bench/bench_report.py`.",
        "",
        "| what | seconds |",
        "|---|---|",
        f"| `latent report`, fresh process, median of {args.repeats} (min, max) | "
        f"{statistics.median(cli):.2f} ({min(cli):.2f}, {max(cli):.2f}) |",
        f"| `latent report --static` (no interactive view), alternated with the above | "
        f"{statistics.median(static):.2f} ({min(static):.2f}, {max(static):.2f}) |",
        f"| ratio, with the view / static (medians) | {statistics.median(cli) / statistics.median(static):.2f} |",
        f"| load artifacts + run tables | {t_load:.2f} |",
        f"| draw all figures | {t_draw:.2f} |",
        f"| encode PNG (150 dpi), all figures | {t_png:.2f} |",
        f"| encode SVG, all figures | {t_svg:.2f} |",
        "",
        f"Output: index.html {pages[False]:.1f} MB with the interactive view ({pages[True]:.1f} MB static); "
        f"report directory {size_mb:.1f} MB in all (static).",
    ]
    block = "\n".join(lines)
    write_block("report", block, path=Path(args.results), title="`latent report`")
    print(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
