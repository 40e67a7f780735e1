"""Shared helper: each benchmark owns one marked block of bench/RESULTS.md and rewrites only it."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADER = "# Benchmark results\n\nWritten by the scripts in `bench/`; each owns one block below.\n"


def run_records(raw: Path, one, tasks: list, workers: int, shown=lambda rec: rec) -> list[dict]:
    """``one(task)`` for every task, ``workers`` at a time: each record appended to the JSON-lines file
    ``raw`` as it arrives (a killed run keeps what it finished) and printed (``shown(record)``); the new
    records, in task order."""
    import json
    from concurrent.futures import ProcessPoolExecutor

    raw.parent.mkdir(exist_ok=True)
    out = []
    with raw.open("a") as fh, ProcessPoolExecutor(max_workers=workers) as pool:
        for rec in pool.map(one, tasks):
            print(json.dumps(shown(rec)), flush=True)
            fh.write(json.dumps(rec) + "\n")
            fh.flush()
            out.append(rec)
    return out


def write_block(name: str, body: str, path: Path = RESULTS, title: str | None = None,
                stamp_label: str = "Measured") -> None:
    """Replace the ``<!-- name:begin -->`` … ``<!-- name:end -->`` block of ``path`` (appending it if absent).

    The block gets the heading ``title`` (default ``name``) and the UTC time, labelled
    ``stamp_label`` ("Measured"; a block rebuilt from stored results says so instead).
    """
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    block = f"{begin}\n## {title or name}\n\n_{stamp_label} {stamp}._\n\n{body.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else HEADER
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


#: every task's default study, as `latent collect --task T --seeds 40` names it (+ the contrast pair)
DEFAULT_STUDIES = ("modadd", "parity", "mnist", "modadd-contrast", "modadd-contrast-ln")


def present_studies(store: str, names: str) -> list[str]:
    """The comma-separated study ``names`` that are in ``store``, saying on stderr which are skipped."""
    import sys

    out = []
    for name in names.split(","):
        if (Path(store) / name / "study.json").is_file():
            out.append(name)
        else:
            print(f"skip {name}: not in {store}", file=sys.stderr)
    return out
