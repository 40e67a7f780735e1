"""Random damage to a valid store, and what every command must make of it (tests/test_store_fuzz.py,
bench/bench_fuzz.py).

``make_base`` writes one small simulated study, fits it, and copies it as a second study, so every
command has something real to read. A *mutation* damages one artifact of the copy a command then
reads: a key of ``study.json``, a run manifest, ``model.json``, ``analysis.json`` or ``truth.json``
deleted or given a value of another type, NaN, infinity, a negative or huge number, an empty or
shortened list; or rows of a run table duplicated, shuffled, given another seed, negative or
repeated steps, non-finite values, a column dropped. ``run_case`` runs the commands that read the
damaged file and judges the outcome:

* **clean refusal**: exit 2 and exactly one line ``latent <command>: error: ...`` on stderr;
* **accepted**: exit 0, and the damaged artifact passes the *independent* checks below (written
  here with numpy, not with latent's schemas), so the answer rests on valid data;
* **defect**: anything else: an exception escaping the CLI, another exit code, several error lines,
  or an exit 0 on data the independent checks reject (a silently wrong answer).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

FAST_FIT = ["--max-states", "3", "--restarts", "2", "--n-iter", "8", "--n-boot", "20", "--resamples", "0",
            "--no-audit", "--jobs", "1", "-q"]
BASE, OTHER = "base", "other"

# --------------------------------------------------------------------------- the valid store


def make_base(store: Path) -> str:
    """A simulated study ``base`` (8 runs × 30 checkpoints), fitted, and its copy ``other`` (same fit).

    Returns the fit id.
    """
    from latent.cli import main

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(["simulate", "--store", str(store), "--study", BASE, "--runs", "8", "--checkpoints", "30",
                     "--seed", "3"]) == 0
        assert main(["fit", "--store", str(store), "--study", BASE, *FAST_FIT]) == 0
    shutil.copytree(store / BASE, store / OTHER)
    meta = json.loads((store / OTHER / "study.json").read_text())
    meta["name"] = OTHER
    (store / OTHER / "study.json").write_text(json.dumps(meta))
    return next(p.name for p in (store / BASE / "fits").iterdir())


# --------------------------------------------------------------------------- mutations


def json_paths(obj, prefix=(), depth=4) -> list[tuple]:
    """Every key path into ``obj`` (dict keys and list positions, lists sampled at 0, 1 and -1)."""
    out = []
    if depth == 0:
        return out
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.append(prefix + (k,))
            out += json_paths(v, prefix + (k,), depth - 1)
    elif isinstance(obj, list) and obj:
        for i in sorted({0, min(1, len(obj) - 1), len(obj) - 1}):
            out.append(prefix + (i,))
            out += json_paths(obj[i], prefix + (i,), depth - 1)
    return out


#: values a field is replaced by: every JSON type, and numbers that break arithmetic
STRANGE_VALUES = [None, True, False, 0, -1, 1, 2, 10**12, -10**12, 0.5, -0.5, 1e308, -1e308,
                  float("nan"), float("inf"), float("-inf"), "", "x", "1", "$x^2$ $", "../../etc", [], [1], ["a"],
                  [None], {}, {"a": 1}, [[1, 2], [3]]]
JSON_OPS = ("delete", "replace", "scale", "drop_item", "duplicate_item", "empty")


def mutate_json(obj, path: tuple, op: str, value) -> str:
    """Apply ``op`` at ``path`` of ``obj`` in place; returns a description."""
    parent = obj
    for key in path[:-1]:
        parent = parent[key]
    key = path[-1]
    target = parent[key]
    where = ".".join(map(str, path))
    if op == "delete":
        if isinstance(parent, list):
            del parent[key]
        else:
            del parent[key]
        return f"delete {where}"
    if op == "scale" and isinstance(target, (int, float)) and not isinstance(target, bool):
        parent[key] = target * value if isinstance(value, (int, float)) and not isinstance(value, bool) else -target
        return f"scale {where} by {value!r}"
    if op == "drop_item" and isinstance(target, list) and target:
        target.pop()
        return f"drop last item of {where}"
    if op == "duplicate_item" and isinstance(target, list) and target:
        target.append(json.loads(json.dumps(target[0], allow_nan=True)))
        return f"duplicate first item of {where}"
    if op == "empty" and isinstance(target, (list, dict, str)):
        parent[key] = type(target)()
        return f"empty {where}"
    parent[key] = value
    return f"set {where} = {value!r}"


TABLE_OPS = ("duplicate_row", "shuffle", "foreign_seed", "negative_step", "zero_steps", "nan_value", "inf_value",
             "drop_column", "drop_step", "empty", "text_column", "huge_value")


def mutate_table(frame: pd.DataFrame, op: str, rng: np.random.Generator, column: str) -> tuple[pd.DataFrame, str]:
    """A damaged copy of one run table."""
    f = frame.copy()
    i = int(rng.integers(0, len(f)))
    if op == "duplicate_row":
        f = pd.concat([f, f.iloc[[i]]], ignore_index=True)
    elif op == "shuffle":
        f = f.sample(frac=1.0, random_state=int(rng.integers(0, 2**31))).reset_index(drop=True)
    elif op == "foreign_seed":
        f["seed"] = f["seed"] + 1
    elif op == "negative_step":
        f.loc[i, "step"] = -5
    elif op == "zero_steps":
        f["step"] = 0
    elif op == "nan_value":
        f.loc[i, column] = np.nan
    elif op == "inf_value":
        f.loc[i, column] = np.inf
    elif op == "huge_value":
        f.loc[i, column] = 1e300
    elif op == "drop_column":
        f = f.drop(columns=[column])
    elif op == "drop_step":
        f = f.drop(columns=["step"])
    elif op == "empty":
        f = f.iloc[:0]
    elif op == "text_column":
        f[column] = "x"
    return f, f"{op} ({column}, row {i})"


# --------------------------------------------------------------------------- the independent checks


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def model_is_valid(model) -> bool:
    """What a fitted HMM must be, checked with numpy alone (not latent.schemas)."""
    try:
        k = model["n_states"]
        feats = model["features"]
        if not (isinstance(k, int) and not isinstance(k, bool) and k >= 1 and isinstance(feats, list)
                and feats and all(isinstance(f, str) and f for f in feats) and len(set(feats)) == len(feats)):
            return False
        d = len(feats)
        start = np.array(model["startprob"], dtype=float)
        trans = np.array(model["transmat"], dtype=float)
        means = np.array(model["means"], dtype=float)
        covars = np.array(model["covars"], dtype=float)
        if start.shape != (k,) or trans.shape != (k, k) or means.shape != (k, d) or covars.shape != (k, d, d):
            return False
        for a in (start, trans, means, covars):
            if not np.all(np.isfinite(a)):
                return False
        if np.any(start < 0) or np.any(trans < 0) or abs(start.sum() - 1) > 1e-6 or np.any(abs(trans.sum(1) - 1) > 1e-6):
            return False
        for cv in covars:
            if not np.allclose(cv, cv.T, rtol=0, atol=1e-9 * max(np.abs(cv).max(), 1e-300)):
                return False
            if np.linalg.eigvalsh(cv).min() <= 0:
                return False
        sc = model["scaling"]
        if sc["kind"] == "global":
            m, s = np.array(sc["mean"], dtype=float), np.array(sc["std"], dtype=float)
            if m.shape != (d,) or s.shape != (d,) or not np.all(np.isfinite(m)) or not np.all(s > 0) \
                    or not np.all(np.isfinite(s)):
                return False
        elif sc["kind"] != "per_run":
            return False
        seeds = model.get("seeds")
        if seeds is not None:
            used = seeds["used"]
            if not (isinstance(used, list) and used and all(type(x) is int and x >= 0 for x in used)
                    and len(set(used)) == len(used)):
                return False
            for name in ("train", "test"):
                part = seeds.get(name)
                if part is not None and not (isinstance(part, list) and all(type(x) is int and x in used for x in part)):
                    return False
            folds = seeds.get("folds")
            if folds is not None and not (isinstance(folds, list) and all(
                    isinstance(f, list) and all(type(x) is int and x in used for x in f) for f in folds)):
                return False
            excluded = seeds.get("excluded", {})
            if not (isinstance(excluded, dict) and all(k.isdigit() and isinstance(v, str) for k, v in excluded.items())):
                return False
        return model.get("covariance_type") in ("full", "diag", "spherical", "tied") \
            and model.get("family", "gaussian") in ("gaussian", "ar", "hamilton")
    except (KeyError, TypeError, ValueError, IndexError):
        return False


def analysis_is_valid(analysis, k: int) -> bool:
    """The parts of analysis.json every reader uses, checked with plain Python."""
    try:
        conv = analysis["convergence"]
        if not (isinstance(conv["metric"], str) and conv["metric"] and _finite(conv["threshold"])
                and conv.get("direction", "above") in ("above", "below")
                and isinstance(conv.get("step_unit", "step"), str) and conv.get("step_unit", "step")):
            return False
        if not all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in conv["times"].values()):
            return False
        if conv.get("tau") is not None and not (isinstance(conv["tau"], (int, float)) and not isinstance(conv["tau"], bool)):
            return False
        for d in analysis["detours"]:
            if not (isinstance(d["state"], int) and not isinstance(d["state"], bool) and 0 <= d["state"] < k):
                return False
            if not isinstance(d.get("significant", True), bool):
                return False
            if d.get("delay") is not None and (isinstance(d["delay"], bool) or not isinstance(d["delay"], (int, float))):
                return False
        for key in ("states",):
            rows = analysis.get(key)
            if rows is not None and sorted(r["state"] for r in rows) != list(range(k)):
                return False
        if any(len(v) != k for v in analysis["occupancy"].values()):
            return False
        if analysis.get("warnings") is not None and not all(isinstance(w, str) for w in analysis["warnings"]):
            return False
        nodes = analysis["map"]["nodes"]
        ids = [n["id"] for n in nodes]
        if not (isinstance(nodes, list) and all(type(i) is int and 0 <= i < k for i in ids) and len(set(ids)) == len(ids)):
            return False
        for e in analysis["map"].get("edges") or []:
            if not (type(e["source"]) is int and type(e["target"]) is int and e["source"] in ids and e["target"] in ids):
                return False
            if e.get("prob") is not None and not (_finite(e["prob"]) and 0 <= e["prob"] <= 1):
                return False
        phases = analysis.get("phases")
        if phases is not None:
            if phases.get("metrics") is not None and not (isinstance(phases["metrics"], list)
                                                          and all(isinstance(m, str) for m in phases["metrics"])):
                return False
            for row in phases["states"]:
                for key in ("metrics", "steps"):
                    if row.get(key) is not None and not (isinstance(row[key], dict) and all(
                            v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))
                            for v in row[key].values())):
                        return False
        selection = analysis.get("selection")
        if selection is not None:
            choice = selection.get("fold_choice")
            if choice is not None and not (isinstance(choice, dict) and all(
                    k.isdigit() and type(v) is int and v >= 0 for k, v in choice.items())):
                return False
        return isinstance(analysis["regression"]["coef"], list)
    except (KeyError, TypeError, ValueError, AttributeError):
        return False


def run_table_is_valid(frame: pd.DataFrame, seed: int) -> bool:
    """One run's rows: its own seed, distinct non-negative integer steps (in any order)."""
    if "step" not in frame.columns or len(frame) == 0:
        return False
    if "seed" in frame.columns and not (frame["seed"] == seed).all():
        return False
    # rows are keyed by step, so their order in the file does not matter; each step once
    steps = np.sort(frame["step"].to_numpy())
    return bool(np.all(steps >= 0) and np.all(np.diff(steps) > 0))


# --------------------------------------------------------------------------- running a case


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """``latent`` in this process: exit code, stdout, stderr. An exception escaping main propagates."""
    from latent.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def judge(command: str, rc: int, err: str, accepted_ok: bool) -> tuple[str, str]:
    """``("refused" | "accepted" | "defect", why)`` for one command's outcome."""
    if rc == 2:
        lines = [ln for ln in err.splitlines() if ln.startswith(f"latent {command}: error:")]
        if len(lines) == 1 and "Traceback" not in err:
            return "refused", lines[0]
        return "defect", f"exit 2 without exactly one error line: {err[-400:]!r}"
    if rc == 0:
        if "Traceback" in err:
            return "defect", "a traceback on stderr"
        return ("accepted", "") if accepted_ok else ("defect", "exit 0 on data the independent checks reject")
    return "defect", f"exit {rc}: {err[-400:]!r}"
