"""Recovery benchmark: does `latent fit` find the states and detours planted in simulated studies?

Each draw is a study from :mod:`latent.simulate` with a random structure (2-5 main states, 0-2
detours, 0-1 symmetric fork, K from 2 to 8, visit fractions 15-60 %, 3-15 % for ``rare``), fitted with one or more
option sets and scored against the truth (:func:`latent.simulate.score`). Families: exact HMM
(``standard``), gamma-shaped durations (``semi_markov``), AR(1) noise (``autocorrelated``),
per-run shifts and scales (``shifted``), smooth drift with no states (``drift``); difficulty
levels set the state separation. Every draw and every fit is seeded, so the same command gives
the same table.

    python bench/bench_recovery.py                                  # the table in bench/RESULTS.md
    python bench/bench_recovery.py --plan quick --no-write          # a few draws, a smoke test
    python bench/bench_recovery.py --family standard --options default,reference --draws 20

Raw per-draw results are appended to bench/results/recovery.jsonl (one JSON object per fit);
the table is recomputed from that file, so an interrupted run keeps what it finished and a rerun
skips the fits already there.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import write_block  # noqa: E402

from latent.fit import FitConfig, fit_study  # noqa: E402
from latent.simulate import LEVELS, SimConfig, random_config, score, simulate, write_study  # noqa: E402

draw_config = random_config
from latent.store import Study  # noqa: E402

RAW = Path(__file__).with_name("results") / "recovery.jsonl"
#: option sets: FitConfig overrides (``reference`` is FitConfig.reference())
OPTIONS = {
    "default": {},
    "stability": {"resamples": 20},
    "no_one_se": {"one_se": False},
    "bic": {"criterion": "bic"},
    "per_run": {"scaling": "per_run"},
    "kmeans_init": {"init": "kmeans"},
    "split": {"selection": "split", "criterion": "bic"},
    "reference": "reference",
    "ar": {"family": "ar"},
    "hamilton": {"family": "hamilton"},
}
#: what a record was computed with: records of other versions are ignored (rerun them). 2: detours
#: count only entries before convergence (immortal-time gate, converging states); boundaries and
#: posterior predictive checks recorded
VERSION = 2
#: families whose draws changed since: their records of an older draw are ignored too. realistic 2:
#: within-state drift, offsets shared across states, ranges measured to match the real studies
FAMILY_VERSIONS = {"realistic": 2}
#: what the default run measures: (family, level, options, draws, checkpoints, runs)
PLANS = {
    "full": [
        ("standard", "medium", "default", 100, 300, 40),
        ("standard", "medium", "reference,bic,no_one_se,per_run,kmeans_init,split", 20, 300, 40),
        ("drift", "medium", "default,no_one_se,reference", 20, 300, 40),
        ("standard", "medium", "stability", 20, 300, 40),
        ("rare", "medium", "default", 20, 300, 40),
        ("standard", "easy", "default,reference", 20, 300, 40),
        ("standard", "hard", "default,reference", 20, 300, 40),
        ("standard", "medium", "default", 20, 100, 40),
        ("standard", "medium", "default", 20, 600, 40),
        ("standard", "medium", "default", 20, 300, 10),
        ("standard", "medium", "default", 20, 300, 80),
        ("semi_markov", "medium", "default,reference", 20, 300, 40),
        ("autocorrelated", "medium", "default,reference", 20, 300, 40),
        ("shifted", "medium", "default,per_run,reference", 20, 300, 40),
        ("drift", "medium", "default", 20, 100, 20),
    ],
    # studies that move as real runs do (bench/measure_dynamics.py), the Gaussian HMM beside the
    # autoregressive family and Hamilton's switching mean; the exact Gaussian HMM and pure drift as
    # controls of both
    "realistic": [
        ("realistic", "medium", "default,ar,hamilton", 10, 300, 40),
        ("realistic", "easy", "default,ar,hamilton", 10, 300, 40),
        ("standard", "medium", "ar,hamilton", 10, 300, 40),
        ("drift", "medium", "default,ar,hamilton", 10, 300, 40),
    ],
    "quick": [("standard", "easy", "default,reference", 2, 120, 20), ("drift", "medium", "default", 1, 100, 20)],
    # the rows the README and docs/fit.md quote (the defaults on an exact HMM, and the drift control)
    "headline": [("standard", "medium", "default", 50, 300, 40), ("drift", "medium", "default", 20, 300, 40)],
}


def fit_config(option: str) -> FitConfig:
    spec = OPTIONS[option]
    if spec == "reference":
        return replace(FitConfig.reference(), resamples=0, n_boot=200)
    return FitConfig(**{"resamples": 0, "n_boot": 200, **spec})


def run_one(task: tuple) -> dict:
    family, level, option, i, T, n = task
    cfg = draw_config(family, level, i, T, n)
    table, truth = simulate(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        root = write_study(Path(tmp) / "sim", table, truth)
        t0 = time.perf_counter()
        try:
            result = fit_study(Study(root), fit_config(option), n_jobs=1)
        except Exception as exc:  # a failed fit is a result too
            return {"key": list(task), "error": f"{type(exc).__name__}: {exc}", "version": VERSION,
                    "family_version": FAMILY_VERSIONS.get(family, 1)}
        seconds = time.perf_counter() - t0
    s = score(truth, result.paths, result.analysis)
    states = result.analysis["states"]
    paper = {"detours": [{"state": r["state"]} for r in states if r["paper_rule"]], "states": states}
    sp = score(truth, result.paths, paper)
    return {"key": list(task), "seconds": seconds, "score": s, "paper_rule": {
        k: sp[k] for k in ("detours_found", "false_detours", "rare_flagged", "flagged")},
        "truth": {"n_states": truth.n_states, "detours": truth.detours, "kinds": truth.kinds,
                  "delay": {str(k): v for k, v in truth.delay.items()}},
        "warnings": result.warnings, "version": VERSION, "family_version": FAMILY_VERSIONS.get(family, 1),
        "boundaries": {"discrete": result.analysis["boundaries"]["discrete_transitions"],
                       "judged": result.analysis["boundaries"]["judged_transitions"],
                       # the test's setting (records before 2026-12-08 have none: a step at M 8)
                       **{k: result.analysis["boundaries"][k] for k in ("window", "ramps", "shift")}},
        "ppc_outside": result.analysis["ppc"]["outside_names"],
        # flagged detours the robustness audit calls fragile (None: not audited: no audit, or the
        # paper's detour rule, whose detours the audit does not judge)
        "fragile_detours": (None if result.analysis["audit"] is None or result.config.detour_rule != "delay"
                            else [int(r["state"]) for r in result.analysis["audit"]["detours"] if not r["robust"]]),
        "selection": {"fold_choice": result.analysis["selection"]["fold_choice"],
                      "fragile": result.analysis["selection"]["fragile"]},
        "stability": [{"true": j in s["true_flagged"], **(states[j]["stability"] or {})} for j in s["flagged"]]}


def load_raw() -> dict:
    done = {}
    if RAW.exists():
        for line in RAW.read_text().splitlines():
            rec = json.loads(line)
            family = rec["key"][0]
            if rec.get("version") == VERSION and rec.get("family_version", 1) == FAMILY_VERSIONS.get(family, 1):
                done[tuple(rec["key"])] = rec
    return done


def tasks_for(plan) -> list[tuple]:
    out = []
    for family, level, options, draws, T, n in plan:
        for option in options.split(","):
            out += [(family, level, option, i, T, n) for i in range(draws)]
    return list(dict.fromkeys(out))


def oracle(key) -> tuple[int, int]:
    """(found, testable) planted detours for the delay test run on the *true* paths: what a fit
    that recovered every state exactly would find (the power the planted effects allow)."""
    from latent.detours import converging_states, detour_tests, entry_steps, restricted_times

    family, level, _, i, T, n = key
    cfg = draw_config(family, level, i, T, n)
    _, truth = simulate(cfg)
    if truth.n_states is None:
        return 0, 0
    seeds = sorted(truth.paths)
    y, _ = restricted_times([truth.convergence[s] for s in seeds], [(T - 1) * cfg.step_every] * len(seeds))
    steps = np.arange(T) * cfg.step_every
    conv = np.array([truth.convergence[s] is not None for s in seeds])
    paths = [truth.paths[s] for s in seeds]
    entry = entry_steps(paths, [steps] * len(seeds), y, truth.n_states, conv)
    rows = detour_tests(entry, y, n_perm=2000, random_state=i,
                        converging_in=converging_states(paths, [steps] * len(seeds), y, conv))
    testable = [k for k in truth.detours if rows[k]["status"] == "tested"]
    return sum(rows[k]["detour"] for k in testable), len(testable)


def summarise(records: list[dict]) -> dict:
    ok = [r for r in records if "score" in r]
    s = [r["score"] for r in ok]
    n = len(s)
    det_true = sum(x["detours_true"] for x in s)
    det_found = sum(x["detours_found"] for x in s)
    flagged = sum(len(x["flagged"]) for x in s)
    false = sum(x["false_detours"] for x in s)
    nodet = [x for r, x in zip(ok, s) if not r["truth"]["detours"]]
    cov = [c for x in s for c in x["coverage"]]
    cov5 = [c[0] for c in cov]
    paper = [r["paper_rule"] for r in ok]
    p_flag = sum(len(p["flagged"]) for p in paper)
    p_false = sum(p["false_detours"] for p in paper)
    p_found = sum(p["detours_found"] for p in paper)
    return {
        "draws": len(records), "errors": len(records) - n,
        "k_right": sum(x["k_ok"] for x in s) / n if n else float("nan"),
        "k_over": sum(1 for x in s if x["k_true"] is not None and x["k_fit"] > x["k_true"]) / n if n else float("nan"),
        "k_hist": _hist([x["k_fit"] for x in s]),
        "acc": float(np.mean([x["state_accuracy"] for x in s if x["state_accuracy"] is not None]))
        if any(x["state_accuracy"] is not None for x in s) else float("nan"),
        "recall": det_found / det_true if det_true else float("nan"), "det_true": det_true,
        "precision": (flagged - false) / flagged if flagged else float("nan"), "flagged": flagged,
        "clean_nodetour": sum(1 for x in nodet if not x["flagged"]) / len(nodet) if nodet else float("nan"),
        "n_nodetour": len(nodet),
        "sign": sum(x["sign_ok"] for x in s) / det_true if det_true else float("nan"),
        "coverage": float(np.mean(cov5)) if cov5 else float("nan"), "n_cov": len(cov5),
        "rare_flagged": sum(x["rare_flagged"] for x in s),
        "paper_recall": p_found / det_true if det_true else float("nan"),
        "oracle_recall": _oracle_rate(ok),
        "paper_precision": (p_flag - p_false) / p_flag if p_flag else float("nan"),
        "paper_clean_nodetour": sum(1 for r, p in zip(ok, paper) if not r["truth"]["detours"] and not p["flagged"])
        / len(nodet) if nodet else float("nan"),
        "seconds": float(np.median([r["seconds"] for r in ok])) if ok else float("nan"),
        "continuous": _continuous(ok),
        "ppc_fail": float(np.mean([bool(r["ppc_outside"]) for r in ok])) if ok else float("nan"),
        "robust": _robust_detours(ok),
    }


#: the fit's warning for a flagged detour that the robustness audit calls fragile (latent/fit.py)
_FRAGILE = re.compile(r"^detour state (\d+) does not survive a change of method")


def _fragile(r: dict) -> set[int] | None:
    """The flagged detours the audit calls fragile, or None where the audit did not judge them:
    recorded since 2026-12-08, read from the fit's warnings before (every version-2 record ran the
    audit, on by default since 2026-12-02, but it judges only the delay rule's detours, not those of
    an option with the paper's rule, such as ``reference``)."""
    if "fragile_detours" in r:
        return None if r["fragile_detours"] is None else set(r["fragile_detours"])
    if fit_config(r["key"][2]).detour_rule != "delay":  # the option's own config, as run_one fitted it
        return None
    return {int(m.group(1)) for w in r["warnings"] for m in [_FRAGILE.match(w)] if m}


def _robust_detours(records) -> str:
    """Detour recall / precision / no-detour draws clean, counting only the flagged detours that
    survive the robustness audit (what the fit's summary and report call robust); "not audited"
    where the audit did not judge the detours."""
    found = true = flagged = hits = nodet = clean = 0
    for r in records:
        s = r["score"]
        fragile = _fragile(r)
        if fragile is None:
            return "– (not audited)"
        robust = set(s["flagged"]) - fragile
        hit = robust & set(s["true_flagged"])
        # recall counts the testable planted detours found (found_flagged, recorded since 2026-12-08);
        # older records: true_flagged can also hold flagged detours too rare to test (rare_flagged),
        # and min() is exact when there are none of those
        found += (len(robust & set(s["found_flagged"])) if "found_flagged" in s
                  else min(len(hit), s["detours_found"]))
        true += s["detours_true"]
        flagged += len(robust)
        hits += len(hit)
        if not r["truth"]["detours"]:
            nodet += 1
            clean += not robust
    recall = _pct(found / true) if true else "–"
    precision = f"{_pct(hits / flagged)} ({flagged})" if flagged else "– (0)"
    return f"{recall} / {precision} / {_pct(clean / nodet) if nodet else '–'}"


def _continuous(records) -> str:
    """The share of draws said to have no discrete transitions, per boundary test: records from before
    2026-12-08 (no ``ramps`` in their ``boundaries``) used a step at the boundary, later ones the ramp
    search, and a partial rerun must not pool the two."""
    kinds: dict[str, list[bool]] = {}
    for r in records:
        b = r["boundaries"]
        kinds.setdefault("ramps" if "ramps" in b else "step test", []).append(b["judged"] > 0 and b["discrete"] == 0)
    return " / ".join(f"{_pct(float(np.mean(v)))} ({name}{'' if len(kinds) == 1 else f', {len(v)}'})"
                      for name, v in sorted(kinds.items())) or "–"


def _oracle_rate(records) -> float:
    found = testable = 0
    for r in records:
        if r["truth"]["detours"]:
            f, t = oracle(tuple(r["key"]))
            found, testable = found + f, testable + t
    return found / testable if testable else float("nan")


def _hist(values) -> str:
    vals, counts = np.unique(values, return_counts=True)
    return " ".join(f"{v}:{c}" for v, c in zip(vals, counts))


def _pct(x) -> str:
    return "–" if x != x else f"{100 * x:.0f} %"


def table(done: dict, plan) -> str:
    head = ("| family | level | checkpoints × runs | options | draws | K right | K too big | checkpoints labelled right "
            "| detour recall (oracle) | detour precision | no-detour draws clean | effect sign | 95 % CI coverage "
            "| paper rule: recall / precision / clean | detours surviving the audit: recall / precision / clean "
            "| said 'no discrete transitions' | a posterior predictive check failed | median s/fit |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for family, level, options, draws, T, n in plan:
        for option in options.split(","):
            recs = [done[k] for k in ((family, level, option, i, T, n) for i in range(draws)) if k in done]
            if not recs:
                continue
            m = summarise(recs)
            drift = family == "drift"
            lines.append(
                f"| {family} | {level} | {T} × {n} | {option} | {m['draws']}"
                f"{' (' + str(m['errors']) + ' failed)' if m['errors'] else ''} | "
                f"{'– (K found: ' + m['k_hist'] + ')' if drift else _pct(m['k_right'])} | "
                f"{'–' if drift else _pct(m['k_over'])} | {'–' if drift else _pct(m['acc'])} | "
                f"{_pct(m['recall'])} ({m['det_true']}; oracle {_pct(m['oracle_recall'])}) | "
                f"{_pct(m['precision'])} ({m['flagged']}) | "
                f"{_pct(m['clean_nodetour'])} ({m['n_nodetour']}) | {_pct(m['sign'])} | "
                f"{_pct(m['coverage'])} ({m['n_cov']}) | "
                f"{_pct(m['paper_recall'])} / {_pct(m['paper_precision'])} / {_pct(m['paper_clean_nodetour'])} | "
                f"{m['robust']} | {m['continuous']} | {_pct(m['ppc_fail'])} | {m['seconds']:.1f} |")
    return "\n".join(lines)


def interval_study(n_studies: int = 3000, seed: int = 0) -> str:
    """Coverage of the delay's 95 % interval by the size of the smaller group, on true paths.

    No HMM is fitted: the planted paths give each run's visits and restricted convergence time,
    so this isolates the interval (Welch t, the default) from state recovery, and compares it
    with a percentile bootstrap (visitors and skippers resampled separately, 1000 times).
    """
    from latent.detours import restricted_times, welch_interval

    rng = np.random.default_rng(seed)
    buckets = [(2, 2), (3, 3), (4, 4), (5, 6), (7, 9), (10, 40)]
    hits = {b: [0, 0, 0] for b in buckets}  # welch covered, bootstrap covered, count
    for i in range(n_studies):
        cfg = SimConfig(n_main=3, detours=1, forks=1, p_take=float(rng.uniform(0.02, 0.5)), n_runs=40,
                        n_checkpoints=300, n_features=1, n_uninformative=0, detour_scale=float(rng.uniform(0.5, 1.5)),
                        seed=int(rng.integers(2**31)))
        _, truth = simulate(cfg)
        seeds = sorted(truth.paths)
        y, _ = restricted_times([truth.convergence[s] for s in seeds], [(cfg.n_checkpoints - 1) * cfg.step_every] * 40)
        for k in truth.optional:
            v = np.array([bool(np.any(truth.paths[s] == k)) for s in seeds])
            m = int(min(v.sum(), (~v).sum()))
            bucket = next((b for b in buckets if b[0] <= m <= b[1]), None)
            if bucket is None:
                continue
            lo, hi = welch_interval(y[v], y[~v])
            a, b = y[v], y[~v]
            boots = (rng.choice(a, (1000, len(a))).mean(axis=1) - rng.choice(b, (1000, len(b))).mean(axis=1))
            blo, bhi = np.percentile(boots, [2.5, 97.5])
            true = truth.delay[k]
            hits[bucket][0] += lo <= true <= hi
            hits[bucket][1] += blo <= true <= bhi
            hits[bucket][2] += 1
    lines = ["| runs in the smaller group (visitors or skippers) | optional states | Welch t interval (default) "
             "| percentile bootstrap |", "|---|---|---|---|"]
    for b in buckets:
        w, bt, n = hits[b]
        label = str(b[0]) if b[0] == b[1] else f"{b[0]}-{b[1]}"
        lines.append(f"| {label} | {n} | {_pct(w / n) if n else '–'} | {_pct(bt / n) if n else '–'} |")
    return "\n".join(lines)


def stability_table(done: dict, plan) -> str:
    """How often flagged detours recur in 20 resamples, for true and false ones (option 'stability')."""
    recs = [r for k, r in done.items() if k[2] == "stability" and "stability" in r]
    rows = {True: [], False: []}
    for r in recs:
        for item in r["stability"]:
            if item.get("of"):
                rows[item["true"]].append(item["detour_found"] / item["of"])
    lines = ["| flagged detour | count | median share of resamples where it is again a detour | share found in ≥ 80 % |",
             "|---|---|---|---|"]
    for truth, label in ((True, "a planted detour"), (False, "not a planted detour")):
        v = np.array(rows[truth])
        lines.append(f"| {label} | {len(v)} | {_pct(np.median(v)) if len(v) else '–'} | "
                     f"{_pct(np.mean(v >= 0.8)) if len(v) else '–'} |")
    folds = [(r["score"]["k_ok"], r["selection"]["fold_choice"]) for r in done.values()
             if r.get("key", [None] * 3)[2] == "default" and "selection" in r and r["score"]["k_true"] is not None]
    agree = {True: [], False: []}
    for ok, choice in folds:
        total = sum(choice.values()) or 1
        agree[ok].append(max(choice.values(), default=0) / total)
    lines += ["", "| K chosen | draws | median share of folds choosing the same K on their own |", "|---|---|---|"]
    for ok, label in ((True, "right"), (False, "wrong")):
        v = agree[ok]
        lines.append(f"| {label} | {len(v)} | {_pct(np.median(v)) if v else '–'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plan", choices=sorted(PLANS), default="full")
    ap.add_argument("--family", help="run only this family (with --options, --draws)")
    ap.add_argument("--level", default="medium", choices=sorted(LEVELS))
    ap.add_argument("--options", default="default")
    ap.add_argument("--draws", type=int, default=10)
    ap.add_argument("--checkpoints", type=int, default=300)
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--jobs", type=int, default=os.cpu_count())
    ap.add_argument("--no-write", action="store_true", help="do not update bench/RESULTS.md")
    args = ap.parse_args(argv)
    plan = ([(args.family, args.level, args.options, args.draws, args.checkpoints, args.runs)]
            if args.family else PLANS[args.plan])
    done = load_raw()
    todo = [t for t in tasks_for(plan) if t not in done]
    print(f"{len(todo)} fits to run ({len(tasks_for(plan)) - len(todo)} already in {RAW})", flush=True)
    RAW.parent.mkdir(exist_ok=True)
    t0 = time.time()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool, RAW.open("a") as fh:
        for i, rec in enumerate(pool.map(run_one, todo)):
            fh.write(json.dumps(rec) + "\n")
            fh.flush()
            done[tuple(rec["key"])] = rec
            if (i + 1) % 10 == 0 or i + 1 == len(todo):
                print(f"  {i + 1}/{len(todo)} fits, {time.time() - t0:.0f} s", flush=True)
    text = table(done, plan)
    if not args.family and args.plan not in ("realistic", "headline"):
        print("interval coverage by group size (true paths, no fitting) ...", flush=True)
        text += ("\n\n**Delay intervals by group size** (why `--min-runs 5`): coverage of the true delay by "
                 "nominal 95 % intervals, on the planted paths (no HMM fitted), 40 runs per study.\n\n"
                 + interval_study(300 if args.plan == "quick" else 3000))
        text += ("\n\n**Stability** (option `stability`: 20 bootstrap refits per fit) and fold agreement "
                 "(`default` rows):\n\n" + stability_table(done, plan))
    print(text)
    # each plan that writes owns one block: (block, what its rows mean, heading)
    blocks = {
        "headline": ("recovery-headline", EXPLAIN, "Recovery with the current detour rules, headline rows"),
        "realistic": ("recovery-realistic", EXPLAIN_REALISTIC, "Recovery on studies that move as real runs do"),
    }
    if not args.no_write and not args.family:
        name, explain, heading = blocks.get(args.plan, ("recovery", EXPLAIN, "Recovery of planted states and detours"))
        script = "bench/bench_recovery.py" + (f" --plan {args.plan}" if args.plan in blocks else "")
        body = (f"Machine: {os.cpu_count()} CPUs ({platform.machine()}, Python {platform.python_version()}); "
                f"`python {script}`; raw results in `bench/results/recovery.jsonl`.\n\n" + explain + "\n\n" + text)
        # say which fits are new: the block is tabled today, its other fits are older
        planned = len(tasks_for(plan))
        label = ("Measured" if len(todo) == planned else
                 f"Tabled from the stored fits, {len(todo)} of {planned} run now" if todo else
                 "Tabled from the stored fits (none rerun)")
        write_block(name, body, title=f"{heading} (`{script}`)", stamp_label=label)
    return 0


EXPLAIN_REALISTIC = """Columns as in the recovery table above. Family `realistic` (`latent/simulate.py`): the \
random structures of that table, but runs move as the default studies' runs do, with settings drawn per study \
from ranges whose draws measure as the real studies do (block `dynamics`): smooth drift inside every state (each \
state a velocity every run follows while there, 0.05-0.3 noise sds per checkpoint per feature, log-uniform), \
one AR(1) noise process per run through all its states (autocorrelation 0.9-0.99, log-uniform in 1 − ρ), \
every run its own offset of every state's mean (sd 0.3-1.5 noise sds), correlated across the run's states \
(0.5-0.99), and transitions that take 5 checkpoints. Option `ar` is `latent fit --family ar` (each state a \
linear regime); option `hamilton` is `latent fit --family hamilton` (a state is a place the run wanders \
near: AR(1) deviations from the state's mean carried across switches); `default` is the Gaussian HMM. \
`standard` (an exact Gaussian HMM) and `drift` (no states) are the controls of the `ar` and `hamilton` \
families (`hamilton`'s since 2026-12-08). *Detours surviving the audit*: the same fits, counting only \
the flagged detours the robustness audit calls robust (docs/fit.md, "Robustness audit")."""


EXPLAIN = """Each row: simulated studies with a planted truth (`latent/simulate.py`), fitted with the named \
options (`default` = `latent fit`'s defaults; `reference` = `--reference`, the reference's procedure) \
and scored against the truth. Structures are random per draw: 2-5 main states, 0-2 detours (a detour \
adds 0.5-1.5x the main chain's time), 0-1 symmetric fork, K = 2..8, each optional state taken by \
15-60 % of runs (family `rare`: 3-15 %); 14 features, 2 of them uninformative, noise correlation 0.3. Level = Mahalanobis \
distance between neighbouring states' means (easy 4, medium 3, hard 2). *Detour recall* counts \
planted detours visited and skipped by at least 5 runs (*oracle*: the same test on the true paths, \
i.e. what a fit that recovered every state exactly would find: the power the planted effects allow); \
*precision* is the share of flagged states that are planted detours; *no-detour draws clean* is the share of draws without a planted detour \
(symmetric forks included) where nothing is flagged; *effect sign*: estimated delay > 0 for planted \
detours; *CI coverage*: the 95 % Welch interval of the delay contains the true delay, over every \
optional state visited and skipped by ≥ 5 runs. The paper-rule columns score the paper's detour rule \
(optional state, positive regression coefficient) on the same fits; *detours surviving the audit* count only \
the flagged detours the robustness audit calls robust. Numbers in brackets are counts. \
Families: `standard` is an exact Gaussian HMM (geometric durations); `semi_markov` has gamma-shaped \
durations; `autocorrelated` adds AR(1) noise in time (0.5) within states; `shifted` gives every run \
its own offset (1 noise sd) and scale (log-sd 0.1) of every feature, as seeds differ; `drift` is a \
negative control with no discrete states (each feature a run-specific sigmoid plus a slow trend), \
where every flagged state is false and K has no right answer."""


if __name__ == "__main__":
    sys.exit(main())

