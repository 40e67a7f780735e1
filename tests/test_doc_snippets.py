"""Every Python snippet in the README and docs/ runs (or, where it needs what a test machine does not
have, at least compiles and imports what it names), so no snippet can keep an import path or a
call that the code no longer has.

Each snippet is claimed by exactly one entry of ``SNIPPETS`` (by a line only it contains), which says
how to run it: names it leaves to the reader (``model``, ``table``) are given small real values, and
placeholders (``data/<study>/fits/<fit-id>``, ``...``) are filled in. A new snippet without an entry
fails ``test_every_snippet_is_claimed``.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _snippets() -> list[tuple[str, int, str]]:
    out = []
    for page in PAGES:
        text = page.read_text()
        for m in re.finditer(r"```python\n(.*?)```", text, flags=re.S):
            out.append((str(page.relative_to(ROOT)), text[: m.start()].count("\n") + 1, m.group(1)))
    return out


# how each snippet runs: "run" executes it in a prepared store; "compile" checks its syntax and every
# import it names (with the reason it cannot run here); "elsewhere" names the test that runs it whole
SNIPPETS = {
    'rec = Recorder("data", study="my-exp"': ("run", "recorder"),
    "cluster = SLURMCluster(": ("compile", "needs a SLURM cluster (tests/test_cluster.py runs dask_jobqueue's local path)"),
    'with connect(scheduler="tcp://10.1.2.3:41234")': ("compile", "needs a running Dask scheduler; tests/test_cluster.py runs "
                                                                  "collect_study and fit_study on a LocalCluster"),
    'res = collect_study("modadd", 8, overrides={"epochs": 500}': ("run", "collect"),
    'runs = read_snapshots("data/modadd-snap")': ("run", "snapshots"),
    "comparison = compare_studies(summaries)": ("run", "compare"),
    'model, paths, analysis = load_fit("data/<study>/fits/<fit-id>")': ("run", "load_fit"),
    "result = fit_study(study, FitConfig(max_states=6))": ("run", "fit_api"),
    "for seed in SEEDS:": ("elsewhere", "tests/test_own_runs_doc.py runs the tutorial script as written"),
    'Recorder("data", study="bert-encoder"': ("run", "patterns"),
    "from latent.collect.integrations.hf import LatentCallback": ("compile", "needs a Hugging Face model and data set; "
                                                                  "tests/test_integrations.py trains one"),
    "from latent.collect.integrations.lightning import LatentCallback": ("compile", "needs a LightningModule and loaders; "
                                                                         "tests/test_integrations.py trains one"),
    'results = predict("data/modadd/fits/full-loglik-1a2b3c4d", table)': ("run", "predict"),
    'fit = load_fit(store="data", study="modadd")': ("run", "report"),
}


def _claim(code: str) -> str:
    keys = [k for k in SNIPPETS if k in code]
    assert len(keys) == 1, f"snippet claimed by {keys or 'no entry'}:\n{code[:300]}"
    return keys[0]


def test_every_snippet_is_claimed():
    snippets = _snippets()
    assert len(snippets) >= 10
    claimed = [_claim(code) for _, _, code in snippets]
    assert sorted(claimed) == sorted(SNIPPETS), "an entry of SNIPPETS matches no snippet any more"


def _check_imports(code: str) -> None:
    """Import every module a snippet imports and look up every name it takes from one."""
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                importlib.import_module(alias.name)
        elif isinstance(node, ast.ImportFrom):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name) or importlib.util.find_spec(f"{node.module}.{alias.name}"), \
                    f"{node.module} has no {alias.name}"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """``data/`` with two small simulated studies, ``modadd`` (fitted) and ``modadd-ln``."""
    from latent.fit import FitConfig, fit_study, write_fit
    from latent.simulate import SimConfig, simulate, write_study
    from latent.store import Study

    root = tmp_path_factory.mktemp("snippets")
    for name, seed in (("modadd", 1), ("modadd-ln", 2)):
        write_study(root / "data" / name, *simulate(SimConfig(n_runs=10, n_checkpoints=60, seed=seed)))
    study = Study(root / "data" / "modadd")
    write_fit(study, fit_study(study, FitConfig(max_states=3, restarts=1, resamples=0, audit=False, folds=3)))
    return root


def _fit_dir(root: Path) -> Path:
    return next((root / "data" / "modadd" / "fits").glob("full-*"))


def _prepare(kind: str, code: str, root: Path) -> tuple[str, dict]:
    """The snippet with its placeholders filled, and the names it leaves to the reader."""
    ns: dict = {"__name__": "__main__"}
    if kind == "recorder":
        from torch import nn

        code = re.sub(r"(?m)^\.\.\.\s*", "", code)  # the loop body it stands for, run once
        ns.update(seed=0, step=0, model=nn.Linear(4, 2), acc=0.5, loss=0.7)
    elif kind == "patterns":
        from latent.collect.recorder import Recorder

        ns["Recorder"] = Recorder  # the snippet continues the one above it
    elif kind == "load_fit":
        code = code.replace("data/<study>/fits/<fit-id>", str(_fit_dir(root)))
    elif kind == "fit_api":
        from latent.features import build_features
        from latent.simulate import SimConfig, simulate

        table, _ = simulate(SimConfig(n_runs=8, n_checkpoints=30, seed=3))
        fm = build_features(table, ["l1", "l2", "trace", "spectral"])
        X, lengths = fm.X, fm.lengths
        rng = np.random.default_rng(0)
        visited = rng.random((8, 3)) < 0.5
        ns.update(X=X, lengths=lengths, visited=visited, y=rng.normal(100, 10, 8),
                  occupancy=rng.random((8, 3)))
        code = code.replace("FitConfig(max_states=6)", "FitConfig(max_states=3, resamples=2, folds=3)")
        code = code.replace("HMMSelector(max_states=8, restarts=5", "HMMSelector(max_states=3, restarts=1")
        code = code.replace("OccupancyRegression(n_boot=1000)", "OccupancyRegression(n_boot=50)")
    elif kind == "predict":
        from latent.store import Study

        table = Study(root / "data" / "modadd").read_runs()
        code = code.replace("data/modadd/fits/full-loglik-1a2b3c4d", str(_fit_dir(root)))
        ns.update(table=table[table.seed == 0], fit_dir=_fit_dir(root), finished_table=table)
    elif kind == "compare":
        code = code.replace("FitConfig(max_states=6)", "FitConfig(max_states=3, restarts=1, resamples=0, audit=False, folds=3)")
    elif kind == "collect":
        code = code.replace('overrides={"epochs": 500}', 'overrides={"epochs": 20, "log_every": 10}')
    elif kind == "snapshots":
        code = code.replace('overrides={"epochs": 2000}', 'overrides={"epochs": 20, "log_every": 5}')
    elif kind == "report":
        import matplotlib

        matplotlib.use("Agg")
    return code, ns


@pytest.mark.parametrize("page,line,code", _snippets(), ids=lambda v: v if isinstance(v, str) and "\n" not in v else None)
def test_the_snippet_runs(page, line, code, store, monkeypatch, tmp_path):
    how, what = SNIPPETS[_claim(code)]
    if how == "elsewhere":
        assert (ROOT / what.split()[0]).is_file()
        return
    if how == "compile":
        code = re.sub(r",\s*\.\.\.\)", ")", code)  # `f(a=1, ...)`: the arguments left to the reader
        _check_imports(code)
        return
    # collect_study writes a real modadd study: beside the simulated one, not over it
    monkeypatch.chdir(tmp_path if what in ("collect", "snapshots") else store)
    code, ns = _prepare(what, code, store)
    exec(compile(code, f"{page}:{line}", "exec"), ns)
    if what == "recorder":
        assert ns["rec"].table()["seed"].tolist() == [0]
    if what == "collect":
        assert ns["res"].seeds_done == 8
    if what == "snapshots":  # epochs 0, 5, …, 20: five checkpoints, all five kept
        assert ns["run"].complete and ns["run"].steps.tolist() == [0, 5, 10, 15, 20]
        assert ns["embed"].shape == (59, 32) and ns["unembed"].shape == (59, 128) and ns["pcs"].shape == (59, 2)
    if what == "fit_api":
        assert ns["sel"].n_states_ >= 1 and ns["result"].analysis["phases"]["states"]
    if what == "report":
        assert (store / "my_figure.pdf").stat().st_size > 0
