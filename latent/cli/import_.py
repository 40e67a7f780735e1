"""``latent import``: make a study of runs logged elsewhere, for latent fit, report and compare.

Sources:

  table        CSV, TSV or parquet tables of per-checkpoint metrics: one column per metric
               (wide) or rows of run, step, metric, value (long); one file per run (the run is
               named after the file) or one file for all runs (a run or seed column).
  tensorboard  TensorBoard event files: one subdirectory per run (or event files); scalars only,
               each tag a column ("eval/acc" becomes eval_acc). Needs pip install -e ".[tensorboard]".
  checkpoints  saved checkpoints (state_dict .pt/.bin, safetensors, HF trainer folders): the 14
               weight statistics at every checkpoint (--metric-variant paper: the paper's
               definitions), plus the trainer_state.json scalars; join per-step metrics such as
               val_acc with --metrics-table. Needs torch.

Every run gets a seed: numeric run names are the seeds (seed-003 is seed 3), other names are
numbered in name order and study.json records the names ("runs"). The features are the 14
weight statistics when every one is there, else every numeric column but the step-like ones
and the convergence metric (--features chooses). Nothing is written unless every run is
sound: each problem is one line naming the file, run, step and column. See docs/import.md.

Examples:

  latent import table logs/*.csv --study mine --convergence "val_acc>0.9"
  latent import table all_runs.parquet --run-col run_name --step-col global_step --study mine
  latent import table metrics_long.csv --long --metric-col tag --study mine --convergence "val_loss<0.1"
  latent import tensorboard tb_logs/ --study tb --tags "train/*" --tags eval/acc --convergence "eval/acc>0.9"
  latent import checkpoints ckpts/ --study ck --metrics-table val.csv --convergence "val_acc>0.9"
  latent fit --study mine
"""

from __future__ import annotations

import argparse
import sys

from .shared import add_quiet, plain
from .collect import METRIC_VARIANTS

SOURCES = ("table", "tensorboard", "checkpoints")


def add_parser(sub) -> None:
    p = sub.add_parser("import", help="make a study of runs logged elsewhere (tables, TensorBoard, checkpoints)",
                       description=plain(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    sources = p.add_subparsers(dest="source", metavar="SOURCE", parser_class=type(p))
    sources.required = True
    helps = {"table": "CSV, TSV or parquet tables of per-checkpoint metrics",
             "tensorboard": "TensorBoard event files (scalars)",
             "checkpoints": "saved checkpoints: weight statistics per checkpoint (needs torch)"}
    for name in SOURCES:
        q = sources.add_parser(name, help=helps[name], description=plain(__doc__),
                               formatter_class=argparse.RawDescriptionHelpFormatter)
        q.add_argument("paths", nargs="+", metavar="PATH", help=_path_help(name))
        q.add_argument("--study", required=True, help="name of the new study in the store")
        q.add_argument("--store", default="data", help="store directory (default: ./data)")
        q.add_argument("--convergence", default=None, metavar="RULE",
                       help='when a run has converged, e.g. "val_acc>0.9" or "val_loss<0.1" (>= and <= too); '
                            "without it, latent fit needs --metric and --threshold")
        q.add_argument("--features", default=None,
                       help="comma-separated feature columns for the HMM (default: the 14 weight statistics if "
                            "present, else every numeric column but step-like ones and the convergence metric)")
        q.add_argument("--drop-incomplete", action="store_true",
                       help="drop checkpoints where a feature has no value (default: refuse them)")
        q.add_argument("--overwrite", action="store_true", help="replace a study of that name (atomically)")
        if name in ("table", "checkpoints"):
            g = q.add_argument_group("table columns" if name == "table" else "columns of --metrics-table")
            g.add_argument("--step-col", default=None,
                           help="step column (default: the first of step, global_step, epoch, iteration)")
            g.add_argument("--run-col", default=None,
                           help="column naming the runs (default: the first of seed, run, run_id; "
                                "none: one run per file, named after the file)")
            g.add_argument("--seed-col", default=None, help="column of whole-number seeds telling runs apart")
            g.add_argument("--long", action="store_true", default=None,
                           help="rows of run, step, metric, value (default: detected from the columns)")
            g.add_argument("--metric-col", default=None,
                           help="long layout: the metric-name column (default: metric, tag, name or key)")
            g.add_argument("--value-col", default=None, help="long layout: the value column (default: value)")
        if name == "tensorboard":
            q.add_argument("--tags", action="append", default=None, metavar="TAG",
                           help='tag or shell pattern to import (repeatable, e.g. --tags "eval/*"); default all')
        if name == "checkpoints":
            q.add_argument("--step-pattern", default=None, metavar="REGEX",
                           help="regex whose first group is the step in a checkpoint's path "
                                "(default: checkpoint-N, step_N, epochN, … names)")
            q.add_argument("--include", action="append", default=[], metavar="PAT",
                           help="only parameters whose names match this pattern (repeatable)")
            q.add_argument("--exclude", action="append", default=[], metavar="PAT",
                           help="leave out parameters whose names match this pattern (repeatable)")
            q.add_argument("--workers", type=int, default=1, help="processes reading checkpoints (default 1)")
            q.add_argument("--heads", type=int, default=None,
                           help="attention heads of in_proj_weight tensors, to split them per head")
            q.add_argument("--metrics-table", default=None, metavar="FILE",
                           help="CSV/parquet of per-step metrics (e.g. val_acc) joined on run and step")
            q.add_argument("--metric-variant", choices=METRIC_VARIANTS, default="reference",
                           help="weight statistics as the reference code computes them (reference, the default) or "
                                "as the paper words them (paper: population variances, mean and variance of the "
                                "pooled singular values); recorded in study.json")
        add_quiet(q, "the study directory")
        q.set_defaults(run=run)


def _path_help(name: str) -> str:
    return {"table": "table files (.csv, .tsv, .parquet, .pq) or directories of them",
            "tensorboard": "event files, a run directory, or a directory with one subdirectory per run",
            "checkpoints": "checkpoint files or run directories of checkpoints"}[name]


def run(args) -> int:
    from pathlib import Path

    from ..errors import UserError
    from ..external import write_external_study
    from ..importers import prepare
    from ..store import check_study_name

    store = Path(args.store)
    name = check_study_name(args.study)
    target = store / name
    if (target.exists() or target.is_symlink()) and not args.overwrite:
        raise UserError(f"study {name!r} already exists in {store}; choose another --study or pass --overwrite "
                        "to replace it")
    features = None
    if args.features is not None:
        features = [f.strip() for f in args.features.split(",") if f.strip()]
        if not features:
            raise UserError("--features is empty; name at least one column")
    notes: list[str] = []
    if args.source == "table":
        runs, info = _read_tables(args, notes)
        source = {"kind": "table", **{k: v for k, v in info.items() if k not in ("renamed", "step_unit")}}
    elif args.source == "tensorboard":
        from ..importers.tensorboard import read_tensorboard

        runs, info = read_tensorboard(args.paths, tags=args.tags, progress=not args.quiet and sys.stderr.isatty())
        info["step_unit"] = "step"
        source = {"kind": "tensorboard", "paths": info["paths"], "runs": info["runs"], "tags": info["tags"]}
    else:
        runs, info = _read_checkpoints(args, notes)
        source = {"kind": "checkpoints", **{k: v for k, v in info.items() if k not in ("renamed", "step_unit")}}
    if info.get("renamed"):
        source["renamed"] = info["renamed"]
    # only weight statistics latent computed itself have a metric variant
    variant = args.metric_variant if args.source == "checkpoints" else None
    prepared = prepare(runs, study=name, convergence=args.convergence, features=features,
                       drop_incomplete=args.drop_incomplete, source=source, step_unit=info.get("step_unit", "step"),
                       renamed=info.get("renamed"), metric_variant=variant)
    for line in notes:
        print(f"latent import: note: {line}", file=sys.stderr)
    for line in prepared.warnings:
        print(f"latent import: warning: {line}", file=sys.stderr)
    study = write_external_study(store, name, prepared.tables, prepared.meta, overwrite=args.overwrite,
                                 progress=not args.quiet and sys.stderr.isatty())
    if args.quiet:
        print(study.root)
    else:
        _summary(study, prepared, args)
    return 0


def _table_options(args) -> dict:
    return dict(long=args.long, step_col=args.step_col, run_col=args.run_col, seed_col=args.seed_col,
                metric_col=args.metric_col, value_col=args.value_col)


def _read_tables(args, notes):
    from ..importers.tables import read_tables

    return read_tables(args.paths, notes=notes, **_table_options(args))


def _read_checkpoints(args, notes):
    """Weight statistics of saved checkpoints (latent.collect.checkpoints, torch), optionally joined with a metrics table."""
    from pathlib import Path

    from ..errors import UserError
    from ..importers import join_metrics, runs_from_frames

    if args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    try:
        from latent.collect.checkpoints import checkpoint_runs
    except ImportError as exc:
        raise UserError(f"latent import checkpoints needs torch and latent.collect.checkpoints, which did not load ({exc}); "
                        "install latent with torch (see README.md)") from None
    extra = {"heads": args.heads} if args.heads is not None else {}
    tables = checkpoint_runs(list(args.paths), step_pattern=args.step_pattern, include=tuple(args.include),
                             exclude=tuple(args.exclude), workers=args.workers, progress=not args.quiet and sys.stderr.isatty(),
                             metric_variant=args.metric_variant, **extra)
    where = str(args.paths[0]) if len(args.paths) == 1 else f"the checkpoints under {', '.join(args.paths)}"
    runs, renamed = runs_from_frames(tables, where, notes)
    info = {"paths": [str(p) for p in args.paths], "step_pattern": args.step_pattern,
            "include": list(args.include), "exclude": list(args.exclude), "heads": args.heads,
            "metrics_table": args.metrics_table,
            "step_unit": "step", "renamed": renamed}
    if args.metrics_table is not None:
        from ..importers.tables import read_tables

        joined, extra_info = read_tables([Path(args.metrics_table)], notes=notes, **_table_options(args))
        runs = join_metrics(runs, joined, args.metrics_table, notes)
        info["renamed"].update(extra_info["renamed"])
    return runs, info


def _summary(study, prepared, args) -> None:
    from ..external import converged_runs

    meta = prepared.meta
    seeds = sorted(prepared.tables)
    rows = sum(len(t) for t in prepared.tables.values())
    lengths = sorted({len(t) for t in prepared.tables.values()})
    per_run = f"{lengths[0]}" if len(lengths) == 1 else f"{lengths[0]}-{lengths[-1]}"
    print(f"imported {len(seeds)} runs into {study.root}: {rows} rows ({per_run} checkpoints per run), "
          f"{len(meta['metrics'])} metric columns")
    if meta.get("runs"):
        pairs = [f"{s}={prepared.names[s]}" for s in seeds]
        print(f"seeds: {', '.join(pairs[:8])}{', …' if len(pairs) > 8 else ''} (recorded in study.json 'runs')")
    feats = meta["features"]
    shown = ", ".join(feats[:20]) + (f", … ({len(feats) - 20} more, listed in study.json)" if len(feats) > 20 else "")
    print(f"features ({len(feats)}): {shown}")
    conv = meta.get("convergence")
    if conv:
        op = ">" if conv["direction"] == "above" else "<"
        hit = len(converged_runs(prepared.tables, conv))
        print(f"convergence: {conv['metric']} {op} {conv['threshold']:g} ({hit} of {len(seeds)} runs converge)")
        print(f"next: latent fit --store {args.store} --study {args.study}")
    else:
        print('convergence: none recorded (pass --convergence "METRIC>THRESHOLD" to import, or '
              "--metric and --threshold to latent fit)")
        from ..external import TIME_COLUMNS

        candidates = [m for m in meta["metrics"] if m not in meta["features"] and m not in TIME_COLUMNS]
        example = (candidates or meta["features"] or ["METRIC"])[0]
        print(f"next: latent fit --store {args.store} --study {args.study} --metric {example} --threshold T")
