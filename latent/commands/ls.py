"""``latent ls``: list the studies in a store with their task, seeds done/total, status and fits."""

from __future__ import annotations

from pathlib import Path

from ..store import list_studies


def add_parser(sub) -> None:
    p = sub.add_parser("ls", help="list studies in the store", description=__doc__)
    p.add_argument("--store", default="data", help="store directory (default: ./data)")
    p.set_defaults(run=run)


def run(args) -> int:
    store = Path(args.store)
    studies = list_studies(store)
    if not studies:
        print(f"no studies in {store}")
        return 0
    rows = [("STUDY", "TASK", "PRESET", "SEEDS", "STATUS", "FITS")]
    for study in studies:
        meta = study.read_meta()
        st = study.status()
        fits = study.fit_ids()
        rows.append(
            (
                study.name,
                str(meta.get("task", "?")),
                str(meta.get("preset", "-")),
                f"{st['done']}/{st['total']}",
                st["status"],
                ", ".join(fits) if fits else "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1])
    return 0
