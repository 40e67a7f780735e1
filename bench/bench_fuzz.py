"""How the store holds up against damaged artifacts: tests/test_store_fuzz.py at scale, counted.

Runs the property-based fuzz suite with ``LATENT_FUZZ_EXAMPLES`` times its CI case counts and
``LATENT_FUZZ_LOG`` set, then counts, per damaged artifact and reading command, how often the
command refused in one line (the damage broke the contract) and how often it accepted (the damage
left data the independent checks of tests/store_mutations.py accept, and the command's answer was
used). Any other outcome (a traceback, exit 0 on data the checks reject, another exit status) is a
defect and fails the suite; the block records the suite's own verdict.

    python bench/bench_fuzz.py                  # 10x the CI counts
    python bench/bench_fuzz.py --scale 40

Writes the ``fuzz`` block of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import write_block  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

#: what each fuzz target damages, for the table
TARGETS = {
    "study.json": "`study.json`",
    "run manifest": "a run manifest (`runs/seed-NNN.json`)",
    "run table": "a run table (`runs/seed-NNN.parquet`)",
    "fit files": "a fit's `model.json` or `analysis.json`",
    "truth.json": "`truth.json` (a fit must go on, ignoring it)",
    "import table": "a table given to `latent import table`",
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=10.0, help="multiple of the CI case counts (default 10: about 1,000 cases)")
    ap.add_argument("--slow", action="store_true", help="include the slow-marked report target")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="latent-bench-fuzz-") as tmp:
        log = Path(tmp) / "fuzz.jsonl"
        env = {**os.environ, "LATENT_FUZZ_EXAMPLES": str(args.scale), "LATENT_FUZZ_LOG": str(log)}
        cmd = [sys.executable, "-m", "pytest", "-q", "-rf", "-n", "0", "-p", "no:cacheprovider",
               "tests/test_store_fuzz.py", "-m", "" if args.slow else "not slow"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        summary = (proc.stdout.strip().splitlines() or ["(no output)"])[-1]
        cases = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    counts: dict[tuple[str, str], collections.Counter] = collections.defaultdict(collections.Counter)
    per_target = collections.Counter()
    for case in cases:
        per_target[case["target"]] += 1
        for command, outcome in case["outcomes"].items():
            counts[case["target"], command][outcome] += 1

    rows = ["| damaged artifact | command | cases | refused (one line) | accepted (checks agree) | defects |",
            "|---|---|---|---|---|---|"]
    for (target, command), c in sorted(counts.items(), key=lambda kv: (list(TARGETS).index(kv[0][0])
                                                                      if kv[0][0] in TARGETS else 99, kv[0][1])):
        rows.append(f"| {TARGETS.get(target, target)} | `latent {command}` | {sum(c.values())} | "
                    f"{c['refused']} | {c['accepted']} | {c['defect']} |")
    failed = [line for line in proc.stdout.splitlines() if line.startswith("FAILED")]
    total = sum(per_target.values())
    defects = sum(c["defect"] for c in counts.values())
    body = "\n".join([
        f"Machine: {os.cpu_count()} CPUs ({platform.machine()}, Python {platform.python_version()}); "
        f"`python bench/bench_fuzz.py --scale {args.scale:g}{' --slow' if args.slow else ''}`; "
        f"{total} damaged stores in {wall / 60:.1f} min. Suite: `{summary}`"
        + (f" ({'; '.join(failed)}: a case that ended in an exception is not counted above)" if failed else "") + ".",
        "",
        "Each case copies a valid store (a simulated 8-run study and its fit), damages one artifact "
        "(a JSON field removed, retyped or set to a strange value: NaN, ±inf, negatives, huge numbers, "
        "wrong types, empty containers; a table column dropped, renamed, retyped, set to NaN/inf or "
        "rows duplicated, shuffled or cut) and runs every command that reads it. *Refused*: exit 2 with "
        "exactly one `latent <command>: error:` line. *Accepted*: exit 0, and the damaged data passes "
        "independent checks written in numpy (tests/store_mutations.py), so the answer stands on valid "
        "data. A defect is anything else (a traceback, exit 0 on data the checks reject, another exit "
        "status).",
        "",
        *rows,
        "",
        f"Defects: {defects}. Hypothesis runs derandomised, so these are the same cases on every run.",
    ])
    write_block("fuzz", body, title="Damaged artifacts (`bench/bench_fuzz.py`)")
    print(body)
    if proc.returncode:
        print(proc.stdout[-6000:], file=sys.stderr)
    return 0 if proc.returncode == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
