"""Do a family's states survive EM when EM starts from the truth, and what does EM make of them?

The recovery benchmark (block ``recovery-realistic``) finds ``--family hamilton`` choosing too
small a K on realistic studies, and its fits' warnings say how: most restarts at the true K and
above end with a state EM has emptied (fewer expected rows than its covariance needs), and such
restarts are skipped, so those K are never scored. Is that the start (a poor segmentation) or the
model (a higher likelihood without the planted states)? Here EM runs at the true K of ``realistic``
draws with the fit's own settings (global z-scores, full covariances, 32 iterations, tolerance
0.01) from three starts: the *true* state of every checkpoint, the segmentation `latent fit`
starts its first restart from, and each run cut into K equal pieces of time (a plain
left-to-right start). Per family and start the table says:

* in how many draws some state ends below what its covariance needs (d + 1 = 15 expected rows,
  the rule that skips a restart);
* the adjusted Rand index of the fitted Viterbi states against the truth;
* **transition states**: fitted states (15 or more decoded rows) whose rows lie at least 80 % in
  the planted transitions (a switch and the ``ramp`` checkpoints after it, over which the
  ``realistic`` family moves linearly from one state's level to the next): a state spent on the
  moves between places rather than on a place;
* in how many draws EM from the segmentation (or the time pieces) reached a training
  log-likelihood more than 1 nat *above* EM from the truth's (the model prefers another structure
  to the planted one), and in how many it came within 1 nat of it or above (the likelihood does
  not prefer the planted structure);
* for ``hamilton``, the median over features of its AR coefficient φ after EM; the variant
  ``hamilton-phi0.9`` caps φ at 0.9 (the deviation forgets within ~10 checkpoints, so a run's
  level has to be carried by its state), to see whether the transition states come from φ ≈ 1;
* how many stretches the segmentation cuts a run into (its noise scale is the checkpoint-to-
  checkpoint change, which slow wander makes small).

    python bench/bench_family_start.py                  # 10 medium draws, every family and variant
    python bench/bench_family_start.py --draws 10 --level easy

Raw lines: bench/results/family-start.jsonl; the ``family-start`` block of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import write_block  # noqa: E402

from latent import switching  # noqa: E402
from latent.family import get_family  # noqa: E402
from latent.features import zscore  # noqa: E402
from latent.hmm import min_state_rows  # noqa: E402
from latent.segments import labels_from_segments, run_segments  # noqa: E402
from latent.simulate import random_config, simulate  # noqa: E402

RAW = Path(__file__).with_name("results") / "family-start.jsonl"
FAMILIES = ("gaussian", "ar", "hamilton", "hamilton-phi0.9")
#: variants: a family with a setting changed (hamilton with its AR coefficient capped at 0.9)
VARIANTS = {"hamilton-phi0.9": ("hamilton", 0.9)}
N_ITER, TOL = 32, 1e-2
#: nats within which two training log-likelihoods count as equal (EM stops at changes below 0.01)
TIE = 1.0
#: a fitted state is a transition state when this share of its decoded rows lies in planted transitions
TRANSITION_SHARE = 0.8


def transition_rows(paths: list[np.ndarray], ramp: int) -> np.ndarray:
    """True for every checkpoint from a planted switch to ``ramp`` checkpoints after it."""
    out = []
    for p in paths:
        mask = np.zeros(len(p), bool)
        for s in np.flatnonzero(p[1:] != p[:-1]) + 1:
            mask[s : s + ramp + 1] = True
        out.append(mask)
    return np.concatenate(out)


def realistic_draw(level: str, i: int, family: str = "realistic"):
    """The i-th draw of a level (of ``family``, ``realistic`` unless named) as a fit sees it: ``(cfg, truth,
    X, lengths, paths)``, X the globally z-scored features, ``paths`` each run's true states (none for ``drift``)."""
    return prepared(random_config(family, level, i))


def prepared(cfg):
    """A simulated study of ``cfg`` as a fit sees it: ``(cfg, truth, X, lengths, paths)`` (see
    :func:`realistic_draw`)."""
    table, truth = simulate(cfg)
    feats = [c for c in table.columns if c not in ("seed", "step", "epoch", "val_acc")]
    X, *_ = zscore(table[feats].to_numpy(float))
    seeds = table["seed"].unique()
    lengths = table.groupby("seed", sort=False).size().loc[seeds].to_numpy()
    return cfg, truth, X, lengths, [np.asarray(truth.paths[s]) for s in seeds] if truth.paths else []


def plain_starts(X, lengths, K: int, segments=None) -> dict[str, np.ndarray]:
    """The two starts that know nothing of the truth: the segmentation `latent fit`'s first restart
    starts from (from ``segments``, :func:`latent.segments.run_segments`'s, when given), and K equal
    pieces of each run's time."""
    segments = run_segments(X, lengths) if segments is None else segments
    return {"segments": labels_from_segments(X, lengths, segments, K, 0, 0.5),
            "time": np.concatenate([np.arange(T) * K // T for T in lengths])}


def transition_states(labels: np.ndarray, in_transition: np.ndarray, K: int, need: int) -> int:
    """States with at least ``need`` decoded rows, ``TRANSITION_SHARE`` of them in planted transitions."""
    return sum(1 for k in range(K) if (labels == k).sum() >= need
               and in_transition[labels == k].mean() >= TRANSITION_SHARE)


def em(fam, X, lengths, labels, K):
    """EM at K from a hard labelling, as `latent fit` runs a restart; the fitted model."""
    model = fam.new_model(K, "full", n_iter=N_ITER, tol=TOL, random_state=0)
    fam.set_params(model, fam.start_params(X, lengths, labels, K), "full")
    model.init_params = ""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(X, lengths)
    return model


def describe(model, X, lengths, truth_labels, in_transition, need) -> dict:
    from sklearn.metrics import adjusted_rand_score

    with np.errstate(all="ignore"):
        ll, post = model.score_samples(X, lengths)
        fitted = model.predict(X, lengths)
    rows = post.sum(axis=0)
    moves = transition_states(fitted, in_transition, model.n_components, need)
    out = {"thinnest": float(rows.min()), "thin": bool(rows.min() < need), "loglik": float(ll),
           "ari": float(adjusted_rand_score(truth_labels, fitted)), "transition_states": moves}
    if hasattr(model, "phi_"):
        out["phi"] = float(np.median(model.phi_))
    return out


def one(level: str, i: int, families) -> list[dict]:
    cfg, truth, X, lengths, paths = realistic_draw(level, i)
    labels = np.concatenate(paths)
    in_transition = transition_rows(paths, cfg.ramp)
    K, d = truth.n_states, X.shape[1]
    need = min_state_rows("full", d)
    segments = run_segments(X, lengths)
    plain = plain_starts(X, lengths, K, segments)
    out = []
    for family in families:
        base, phi_max = VARIANTS.get(family, (family, None))
        fam = get_family(base)
        t0 = time.perf_counter()
        rec = {"level": level, "draw": i, "family": family, "k": K, "n": int(len(X)),
               "transition_rows": float(in_transition.mean()),
               "segments_per_run": float(np.median([len(s) for s in segments]))}
        saved = switching.PHI_MAX
        switching.PHI_MAX = phi_max if phi_max is not None else saved
        try:
            for start, lab in (("truth", labels), ("segments", plain["segments"]), ("time", plain["time"])):
                rec[start] = describe(em(fam, X, lengths, lab, K), X, lengths, labels, in_transition, need)
        finally:
            switching.PHI_MAX = saved
        rec["seconds"] = time.perf_counter() - t0
        out.append(rec)
    return out


def table(records: list[dict]) -> str:
    lines = ["| level | family | draws | start | draws ending with a state below 15 rows | adjusted Rand vs truth "
             "(median, min) | transition states (draws with any; total) | φ after EM (median) | "
             "log-likelihood above the truth's by more than 1 nat; within 1 nat of it or above | stretches per run in the segmentation (median) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for level in sorted({r["level"] for r in records}):
        for fam in FAMILIES:
            rs = [r for r in records if r["level"] == level and r["family"] == fam]
            if not rs:
                continue
            for start in ("truth", "segments", "time"):
                s = [r[start] for r in rs]
                phi = [x["phi"] for x in s if "phi" in x]
                lines.append(
                    f"| {level} | {fam} | {len(rs)} | {start} | {sum(x['thin'] for x in s)} of {len(s)} | "
                    f"{np.median([x['ari'] for x in s]):.2f}, {min(x['ari'] for x in s):.2f} | "
                    f"{sum(x['transition_states'] > 0 for x in s)}; {sum(x['transition_states'] for x in s)} | "
                    + (f"{np.median(phi):.3f}" if phi else "–") + " | "
                    + (f"{sum(r[start]['loglik'] > r['truth']['loglik'] + TIE for r in rs)} of {len(rs)}; "
                       f"{sum(r[start]['loglik'] >= r['truth']['loglik'] - TIE for r in rs)}"
                       if start != "truth" else "") + " | "
                    + (f"{np.median([r['segments_per_run'] for r in rs]):.0f}" if start == "segments" else "") + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=10)
    ap.add_argument("--level", default="medium")
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    logging.getLogger("latent").setLevel(logging.ERROR)
    logging.getLogger("hmmlearn").setLevel(logging.ERROR)
    families = args.families.split(",")
    done = [json.loads(line) for line in RAW.read_text().splitlines()] if RAW.exists() else []
    have = {(r["level"], r["draw"], r["family"]) for r in done}
    RAW.parent.mkdir(exist_ok=True)
    with RAW.open("a") as fh:
        for i in range(args.draws):
            todo = [f for f in families if (args.level, i, f) not in have]
            for rec in one(args.level, i, todo) if todo else []:
                print(json.dumps(rec), flush=True)
                fh.write(json.dumps(rec) + "\n")
                fh.flush()
                done.append(rec)
    text = table(done)  # every record measured, whatever this run's --draws and --families
    print(text)
    if not args.no_write:
        write_block("family-start", (
            "EM at the true K of `realistic` draws (`latent.simulate.random_config(\"realistic\", level, i)`, "
            "40 runs × 300 checkpoints, 14 features, transitions ramped over 5 checkpoints) with the fit's settings "
            "(global z-scores, full covariances, 32 iterations, tolerance 0.01), started from the true states and "
            "from the segmentation of `latent fit`'s first restart and from K equal pieces of each run's time. A restart ending with a state below d + 1 = 15 "
            "expected rows is skipped by `latent fit` as degenerate. A transition state holds ≥ 15 decoded rows, "
            f"≥ {TRANSITION_SHARE:.0%} of them in planted transitions (a switch and the 5 checkpoints after it).\n\n"
            + text + "\n\nRaw: bench/results/family-start.jsonl (the table holds every record in it). Command: "
            "`python bench/bench_family_start.py --draws 10 --level medium`, then `--level easy`."),
            title="Families started from the truth and from the segmentation (`bench/bench_family_start.py`)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
