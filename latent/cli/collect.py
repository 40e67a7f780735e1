"""``latent collect``: train many seeds of a task, batched, into a study in the store."""

from __future__ import annotations

import logging

from .shared import add_dask_options, add_quiet, run_logging_to_stderr


#: ``latent.collect.metrics.METRIC_VARIANTS``, spelled out so that building the parser imports no torch.
METRIC_VARIANTS = ("reference", "paper")
#: the task variants with a flag of their own (``--layernorm`` is ``--variant layernorm``)
VARIANT_FLAGS = ("layernorm", "no-batchnorm", "no-residual")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "collect",
        help="train many seeds of a task and log weight statistics at every checkpoint",
        description="Train many seeds of a task as one batched model and log the reference's weight "
        "statistics, losses and accuracies at every checkpoint into <store>/<study>/. Rerunning "
        "resumes an interrupted study, adds new seeds, or says it is already complete.",
    )
    p.add_argument("--task", required=True, help="task to train: modadd, parity, mnist, cifar or mlm")
    p.add_argument("--seeds", default="40", help="a count (40 = seeds 0..39), a range (0-39) or a list (1,5,9); default 40")
    p.add_argument("--preset", default="default", help="named config preset: default (laptop CPU), paper (the reference's setup), contrast (modadd: the LayerNorm contrast on a CPU budget) or cogrok (modadd: addition and subtraction trained together)")
    p.add_argument("--epochs", type=int, help="training epochs (overrides the preset)")
    p.add_argument("--log-every", type=int, help="checkpoint interval in the task's step unit: epochs (modadd, parity) or optimiser steps (mnist, cifar, mlm)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config field, typed (repeatable); an unknown key lists the valid ones")
    # the tasks declare their variants (Task.variants, collect/tasks/); the names are spelled out here so
    # that building the parser imports no torch, and tests/test_collect.py checks them against the tasks
    p.add_argument("--variant", dest="variants", action="append", default=[], metavar="NAME",
                   help="a named variant the task declares, repeatable: modadd: layernorm (post-LayerNorm; with "
                        "--preset paper also batch 256 and 290 epochs, the paper's stabilised variant; with --preset "
                        "contrast batch 256 and 400 epochs); cifar: no-batchnorm, no-residual (both: the paper's "
                        "destabilised ResNet, threshold 0.4); the study name gets a suffix (-ln, -nobn, -nores, "
                        "-destab)")
    for name in VARIANT_FLAGS:
        p.add_argument(f"--{name}", dest="variants", action="append_const", const=name,
                       help=f"the same as --variant {name}")
    p.add_argument("--data-dir", help="read the task's real data set from this directory (tasks with a data loader)")
    p.add_argument("--study", help="study name (default: the task, plus -<preset> for other presets)")
    p.add_argument("--store", default="data", help="store directory (default: ./data)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--threads", type=int,
                   help="CPU threads (default: $OMP_NUM_THREADS when set, else all cores; 1 for cifar, where a "
                        "second thread is slower)")
    p.add_argument("--seed-batch", type=int, default=0, help="most seeds trained together in one batched model (default: all)")
    p.add_argument("--save-every", type=float, default=30.0, help="seconds between resume save points (default: 30)")
    p.add_argument("--metric-variant", choices=METRIC_VARIANTS, default="reference",
                   help="weight statistics as the reference code computes them (reference, the default) or as the "
                        "paper words them (paper: population variances, mean and variance of the pooled singular "
                        "values); recorded in study.json, and a study resumes only with its own")
    p.add_argument("--metric-groups", default=None, metavar="GROUPS",
                   help="optional metric groups to record besides the 14 weight statistics and losses: progress "
                        "(Fourier progress measures, modadd), function (prediction entropy, logit scale, effective "
                        "dimension, loss quantiles on a probe set), comma-separated, or all / none (default: all for "
                        "a new study, what an existing study records when resuming it; docs/collect.md); llc "
                        "(the local learning coefficient, the [devinterp] extra) only when named")
    p.add_argument("--llc", action="append", default=None, metavar="KEY=VALUE",
                   help="settings of the llc group, repeatable: every (checkpoints between estimates, default 20), "
                        "chains (2), draws (40), burnin (20), lr (1e-3), localization (100), nbeta (0: n/log n for n "
                        "training rows), batch_size (256); recorded in study.json (docs/collect.md)")
    p.add_argument("--snapshots", type=int, default=None, metavar="N",
                   help="store every run's token embedding and unembedding at N checkpoints, evenly spread over "
                        "the schedule with the first and the last among them (modadd, every model and variant), in "
                        "<study>/snapshots/seed-NNN.npz (plain arrays; read them with latent.snapshots.read_snapshots); "
                        "N above the number of checkpoints stores them all (with a warning). 0 for none, else at least 2 (default: 0 "
                        "for a new study, what an existing study records when resuming it; recorded in study.json; "
                        "docs/collect.md)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing study of the same name whose config, metric variant, metric groups or snapshots differ")
    add_quiet(p, "the study directory")
    p.add_argument("--no-progress", dest="no_progress", action="store_true",
                   help="no progress bar (off a terminal it already prints only a line a minute); the summary "
                        "still prints")
    add_dask_options(p, "train the seed batches (--seed-batch seeds each) as tasks on this Dask scheduler "
                        "(tcp://host:8786); the store must be on a file system every worker sees (docs/cluster.md)",
                     "collection")
    p.set_defaults(run=run)


def run(args) -> int:
    return run_logging_to_stderr(logging.getLogger("latent.collect"), "collect", _run, args)


def _run(args) -> int:
    from latent.errors import StoreError, UserError

    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be at least 1, got {args.threads}")
    if args.save_every < 0:
        raise UserError(f"--save-every must be >= 0 seconds, got {args.save_every}")
    if args.snapshots is not None and (args.snapshots < 0 or args.snapshots == 1):
        raise UserError(f"--snapshots must be 0 (none) or at least 2 (the first and the last checkpoint are always "
                        f"among them), got {args.snapshots}")
    import latent.collect  # noqa: F401  (process settings before torch loads)
    from latent.collect.config import parse_overrides
    from latent.collect.study import collect_study
    from latent.collect.tasks import get_task

    logger = logging.getLogger("latent.collect")
    # notes such as "resuming seed(s) ... from step ..." show too, unless --quiet
    logger.setLevel(logging.WARNING if args.quiet else logging.INFO)

    task = get_task(args.task)
    overrides = parse_overrides(task.config_class, args.overrides)
    for flag, key in ((args.epochs, "epochs"), (args.log_every, "log_every")):
        if flag is not None:
            overrides[key] = flag
    name = args.study
    if args.data_dir is not None:
        if "data_dir" not in task.config_class.__dataclass_fields__:
            raise UserError(f"--data-dir does not apply to task {args.task!r} (it generates its data)")
        overrides["data_dir"] = args.data_dir
    suffix = task.apply_variants(args.variants, args.preset, overrides)
    if suffix and name is None:
        name = args.task + ("" if args.preset == "default" else f"-{args.preset}") + suffix
    try:
        result = collect_study(
            args.task,
            args.seeds,
            preset=args.preset,
            overrides=overrides,
            study=name,
            store=args.store,
            device=args.device,
            threads=args.threads,
            overwrite=args.overwrite,
            seed_batch=args.seed_batch,
            save_every=args.save_every,
            progress=not (args.quiet or args.no_progress),
            command=args.command_line,
            scheduler=args.scheduler,
            cluster=args.cluster,
            metric_variant=args.metric_variant, metric_groups=args.metric_groups, llc=args.llc,
            snapshots=args.snapshots,
        )
    except StoreError as exc:
        raise UserError(f"{exc}; every run keeps its last save point, so rerun the same command to resume "
                        "once that is fixed") from None
    if args.quiet:
        print(result.study)
        return 0
    _print_summary(result)
    if result.seeds_done == result.seeds_total:
        print(f"next: latent fit --store {args.store} --study {result.study.name}")
    return 0


def _print_summary(result) -> None:
    from latent.collect.study import seed_label

    unit = result.convergence_unit
    done = f"{result.seeds_done}/{result.seeds_total} seeds done"
    others = (f"seed(s) {seed_label(result.seeds_elsewhere)} were trained by another collection meanwhile"
              if result.seeds_elsewhere else "")
    if result.nothing_to_do:
        what = "is complete" if result.seeds_done == result.seeds_total else "has every requested seed done"
        print(f"study {result.study} {what} ({done}); nothing to do")
    elif not result.seeds_trained:
        print(f"{others}; study {result.study} has {done}")
    else:
        print(f"trained {len(result.seeds_trained)} seeds in {result.wall_seconds:.1f} s" + (f"; {others}" if others else ""))
    med = f"{result.convergence_median:g}" if result.convergence_median is not None else "n/a"
    print(
        f"converged: {result.converged}/{result.seeds_total} seeds; median convergence {unit} {med}; "
        f"study: {result.study}"
    )
