"""``latent simulate``: write a study drawn from a known latent-state model, with its truth beside it.

The study looks like collected training runs (14 weight-statistic columns, a val_acc column that
crosses 0.9 when a run converges) and is fitted like one: ``latent fit --study NAME``, which then
compares what it found with the planted truth (``truth.json``). Models: see latent/simulate.py
and docs/fit.md ("Validation").
"""

from __future__ import annotations

from .shared import add_quiet, plain


def add_parser(sub) -> None:
    from ..simulate import FAMILIES, SimConfig

    d = SimConfig()
    p = sub.add_parser("simulate", help="write a simulated study with a planted truth (to validate `latent fit`)",
                       description=plain(__doc__))
    p.add_argument("--store", default="data", help="store directory (default: ./data)")
    p.add_argument("--study", default="simulated", help="study name (default: simulated)")
    p.add_argument("--family", default=d.family, help=f"{', '.join(FAMILIES)} (default {d.family})")
    p.add_argument("--n-main", type=int, default=d.n_main, help=f"states on the main chain (default {d.n_main})")
    p.add_argument("--detours", type=int, default=d.detours, help=f"planted detour states (default {d.detours})")
    p.add_argument("--forks", type=int, default=d.forks, help=f"symmetric forks, two states each (default {d.forks})")
    p.add_argument("--p-take", type=float, default=d.p_take,
                   help=f"share of runs taking a detour or a fork's first branch (default {d.p_take})")
    p.add_argument("--runs", type=int, default=d.n_runs, help=f"runs (default {d.n_runs})")
    p.add_argument("--checkpoints", type=int, default=d.n_checkpoints,
                   help=f"checkpoints per run (default {d.n_checkpoints})")
    p.add_argument("--separation", type=float, default=d.separation,
                   help=f"Mahalanobis distance between neighbouring states (default {d.separation})")
    p.add_argument("--ar", type=float, default=None,
                   help="autocorrelation of the noise in time (autocorrelated: default 0.5; realistic: 0.97)")
    p.add_argument("--offset", type=float, default=None,
                   help="realistic: sd of each run's offset of each state's mean, in noise sds (default 0.9)")
    p.add_argument("--persistence", type=float, default=None,
                   help="realistic: correlation of a run's offsets across its states, 0-1 (default 0.75)")
    p.add_argument("--drift", type=float, default=None,
                   help="realistic: sd of each state's drift velocity, noise sds per checkpoint (default 0.12)")
    p.add_argument("--ramp", type=int, default=None,
                   help="realistic: checkpoints a transition takes (default 5)")
    p.add_argument("--seed", type=int, default=d.seed, help=f"seeds everything (default {d.seed})")
    add_quiet(p, "the study directory")
    p.set_defaults(run=run)


def run(args) -> int:
    from pathlib import Path

    from ..errors import UserError
    from ..simulate import SimConfig, simulate, write_study
    from ..store import check_study_name

    root = Path(args.store) / check_study_name(args.study)
    if root.exists():
        raise UserError(f"{root} already exists; choose another --study or delete it")
    if args.runs < 1 or args.checkpoints < 2 or args.seed < 0:
        raise UserError("--runs must be at least 1, --checkpoints at least 2 and --seed non-negative")
    dynamics = _FAMILY_DYNAMICS.get(args.family, {})
    given = {k: getattr(args, k) for k in ("ar", "offset", "ramp", "persistence", "drift")
             if getattr(args, k) is not None}
    if set(given) - set(dynamics):
        flags = ", ".join(f"--{k}" for k in sorted(set(given) - set(dynamics)))
        raise UserError(f"{flags}: not a setting of --family {args.family}; --ar applies to autocorrelated and "
                        "realistic, --offset, --persistence, --drift and --ramp to realistic")
    dynamics = {**dynamics, **given}
    if (not 0 <= dynamics.get("ar", 0) < 1 or dynamics.get("offset", 0) < 0 or dynamics.get("ramp", 0) < 0
            or not 0 <= dynamics.get("persistence", 0) <= 1 or dynamics.get("drift", 0) < 0):
        raise UserError("--ar must be in [0, 1), --persistence in [0, 1], --offset, --drift and --ramp non-negative")
    cfg = SimConfig(family=args.family, n_main=args.n_main, detours=args.detours, forks=args.forks,
                    p_take=args.p_take, n_runs=args.runs, n_checkpoints=args.checkpoints,
                    separation=args.separation, seed=args.seed, **dynamics)
    table, truth = simulate(cfg)
    write_study(root, table, truth)
    if args.quiet:
        print(root)
        return 0
    if truth.n_states is None:
        print(f"wrote {root}: {cfg.n_runs} runs of smooth drift (no discrete states, no detours)")
    else:
        kinds = ", ".join(f"{k}: {kind}" for k, kind in enumerate(truth.kinds))
        delays = ", ".join(f"state {k}: {truth.delay[k]:+.4g} steps" for k in truth.detours) or "none"
        print(f"wrote {root}: {cfg.n_runs} runs × {cfg.n_checkpoints} checkpoints; planted K = {truth.n_states} "
              f"({kinds}); planted detours: {delays}")
    print(f"next: latent fit --store {args.store} --study {args.study}")
    return 0


#: per family, the dynamics settings it takes and their defaults (realistic: about the middle of the
#: ranges the recovery benchmark draws from, whose draws measure as the real studies do)
_FAMILY_DYNAMICS = {"autocorrelated": {"ar": 0.5},
                    "realistic": {"ar": 0.97, "offset": 0.9, "persistence": 0.75, "drift": 0.12, "ramp": 5}}
