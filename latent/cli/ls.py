"""``latent ls``: list the studies in a store with their task, seeds done/total, status and fits,
then the studies that hold weight snapshots (``latent collect --snapshots``) and the comparison
pages ``latent compare`` wrote.

A study's status is ``done``, ``partial`` (unfinished runs that ``latent collect`` resumes),
``running`` (a collection holds some of its seeds right now), ``damaged`` (a run whose files are
unreadable or disagree; one line per such run follows the table) or ``empty``.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..store import list_studies
from .shared import plain


def add_parser(sub) -> None:
    p = sub.add_parser("ls", help="list studies in the store", description=plain(__doc__))
    p.add_argument("--store", default="data", help="store directory (default: ./data)")
    p.set_defaults(run=run)


def _status_text(st: dict) -> str:
    runs = st["runs"]
    if st["status"] == "damaged":
        bad = [s for s, r in runs.items() if r.status == "damaged"]
        return f"damaged: seed{'s' if len(bad) > 1 else ''} {', '.join(map(str, bad[:8]))}" + (" …" if len(bad) > 8 else "")
    if st["status"] == "running":
        return f"running: {sum(r.status == 'running' for r in runs.values())} in progress"
    if st["status"] == "partial":
        return f"partial: {sum(r.status in ('partial', 'pending') for r in runs.values())} unfinished"
    return st["status"]


def comparison_pages(store: Path) -> list[Path]:
    """``<store>/comparisons/<A>-vs-<B>/<fit-id>/index.html`` pages written by ``latent compare``."""
    root = store / "comparisons"
    return sorted(root.glob("*/*/index.html")) if root.is_dir() else []


def run(args) -> int:
    store = Path(args.store)
    studies = list_studies(store)
    pages = comparison_pages(store)
    if not studies:
        print(f"no studies in {store}")
        return 0
    rows = [("STUDY", "TASK", "PRESET", "SEEDS", "STATUS", "FITS")]
    notes = []
    snapshots = []
    for study in studies:
        try:
            meta = study.read_meta()
            st = study.status()
        except UserError as exc:  # an unreadable study.json is listed, not fatal
            rows.append((study.name, "?", "?", "?", "damaged: study.json", "-"))
            notes.append(f"  {study.name}: {exc}")
            continue
        notes += [f"  {study.name}: {line} (left by a killed fit or report)" for line in study.tidy()]
        plan = meta.get("snapshots") or {}
        if plan.get("steps"):
            snapshots.append(f"  {study.name}: {len(plan['steps'])} per finished run, in {study.root / 'snapshots'}")
        fits = study.fit_ids()
        rows.append(
            (
                study.name,
                str(meta.get("task", "?")),
                str(meta.get("preset", "-")),
                f"{st['done']}/{st['total']}",
                _status_text(st),
                ", ".join(fits) if fits else "-",
            )
        )
        notes += [f"  {study.name} seed {s}: {r.detail}" for s, r in st["runs"].items() if r.status == "damaged"]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1])
    if notes:
        print("damaged studies and runs (`latent collect` trains a run marked done with a missing or short "
              "table again; files that fail their checks must be fixed or removed as said):")
        for line in notes:
            print(line)
    if snapshots:
        print("weight snapshots (latent collect --snapshots; `latent report` draws them):")
        for line in snapshots:
            print(line)
    if pages:
        print("comparisons (latent compare):")
        for page in pages:
            print(f"  {page.parent.parent.name} ({page.parent.name}): {page}")
    return 0
