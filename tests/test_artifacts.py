"""The fit artifact's contract (latent.artifacts): what `latent fit` writes is what every reader gets
back, one resolver says which fit a name means, and the core never imports the layers above it."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pandas as pd
import pytest

from latent import artifacts
from latent.errors import UserError
from latent.fit import FitConfig, fit_study
from latent.simulate import SimConfig, simulate, write_study
from latent.store import Study

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    store = tmp_path_factory.mktemp("store")
    table, truth = simulate(SimConfig(n_runs=8, n_checkpoints=40, seed=4))
    study = Study(write_study(store / "sim", table, truth))
    result = fit_study(study, FitConfig(max_states=3, restarts=1, resamples=0, audit=False, folds=3))
    return store, study, result, artifacts.write_fit(study, result)


def test_what_is_written_is_what_every_reader_gets(fitted):
    store, study, result, fit_dir = fitted
    assert sorted(p.name for p in fit_dir.iterdir()) == sorted(artifacts.FIT_FILES)
    model, paths, analysis = artifacts.load_fit(fit_dir)
    # the JSON files hold exactly the result's dicts (through JSON: tuples become lists)
    assert model == json.loads(json.dumps(result.model))
    assert analysis == json.loads(json.dumps(result.analysis, allow_nan=True))
    pd.testing.assert_frame_equal(paths.reset_index(drop=True), result.paths.reset_index(drop=True))
    assert artifacts.read_fit(fit_dir) == (model, analysis)
    # the readers above the core are the same functions, not copies
    import latent.compare
    import latent.fit
    import latent.predict
    import latent.reports.artifacts

    assert latent.fit.write_fit is artifacts.write_fit and latent.fit.load_fit is artifacts.load_fit
    assert latent.compare.read_fit is artifacts.read_fit and latent.predict.resolve_fit is artifacts.resolve_fit
    assert latent.reports.artifacts.choose_fit is artifacts.choose_fit
    assert latent.reports.artifacts.load_fit_files is artifacts.load_fit
    # the report reads the same three files
    art = latent.reports.artifacts.load_fit(store, "sim", result.fit_id)
    assert art.model == model and art.analysis == analysis


def test_a_rewrite_replaces_the_fit_whole(fitted):
    store, study, result, fit_dir = fitted
    (fit_dir / "stray.json").write_text("{}")  # e.g. a cache beside the fit: gone with the old fit
    again = artifacts.write_fit(study, result)
    assert again == fit_dir and not (fit_dir / "stray.json").exists()
    assert not [p for p in study.fits_dir.iterdir() if p.name.startswith(".")]  # no temporary left


def test_one_resolver_for_every_way_of_naming_a_fit(fitted, tmp_path):
    store, study, result, fit_dir = fitted
    assert artifacts.resolve_fit(fit_dir) == fit_dir
    assert artifacts.resolve_fit(f"sim/{result.fit_id}", store) == store / "sim" / "fits" / result.fit_id
    assert artifacts.resolve_fit("sim", store) == study.fits_dir / result.fit_id  # the most recent fit
    assert artifacts.choose_fit(study) == result.fit_id == artifacts.choose_fit(study, result.fit_id)
    for bad, words in (("sim/fits/nope", "no fit at"), ("nope", "nope")):
        with pytest.raises(UserError, match=words):
            artifacts.resolve_fit(bad, store)
    with pytest.raises(UserError, match="invalid fit id"):
        artifacts.choose_fit(study, "../x")
    with pytest.raises(UserError, match="not found"):
        artifacts.choose_fit(study, "nope")
    empty = Study(write_study(tmp_path / "bare", *simulate(SimConfig(n_runs=2, n_checkpoints=10, seed=1))))
    with pytest.raises(UserError, match="has no fit yet"):
        artifacts.resolve_fit("bare", tmp_path)
    assert isinstance(empty, Study)


def _module_name(path: Path) -> str:
    """The module a source file installs as (pyproject: collect/ is latent.collect, reports/ latent.reports)."""
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
    return ".".join(parts if parts[0] == "latent" else ["latent", *parts])


def _imports(path: Path) -> set[str]:
    """Full names of every module a file imports, at any depth (function-level imports too), relative
    imports resolved against the file's own package."""
    names = set()
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names.add(base)
            names |= {f"{base}.{a.name}" for a in node.names}  # `from latent import cli` imports latent.cli
    return names


def _under(names: set[str], roots: set[str]) -> set[str]:
    return {n for n in names if any(n == r or n.startswith(r + ".") for r in roots)}


def test_the_core_imports_neither_torch_nor_the_layers_above_it():
    # latent/__main__.py is `python -m latent`, the command line's other door
    core = [p for p in (ROOT / "latent").rglob("*.py")
            if "cli" not in p.relative_to(ROOT / "latent").parts and p.name != "__main__.py"]
    assert len(core) > 20 and _module_name(ROOT / "collect" / "tasks" / "base.py") == "latent.collect.tasks.base"
    above = {"torch", "matplotlib", "bokeh", "tornado", "latent.collect", "latent.reports", "latent.cli", "collect",
             "reports"}
    offenders = {str(p.relative_to(ROOT)): sorted(_under(_imports(p), above)) for p in core if _under(_imports(p), above)}
    assert not offenders, offenders
    # the check sees what it should: the CLI does import the layers above (it is above the core),
    # relative imports included
    cli = set().union(*(_imports(p) for p in (ROOT / "latent" / "cli").glob("*.py")))
    assert {"latent.collect.study", "latent.reports.html", "latent.fit", "latent.cli.shared"} <= cli
    # the report never imports the collector or torch (it reads the store, never the trainer), and
    # the collector never imports the report or the CLI
    rep = set().union(*(_imports(p) for p in (ROOT / "reports").rglob("*.py")))
    assert not _under(rep, {"latent.collect", "collect", "torch", "latent.cli"})
    col = set().union(*(_imports(p) for p in (ROOT / "collect").rglob("*.py")))
    assert "torch" in col and not _under(col, {"latent.reports", "reports", "latent.cli", "bokeh"})
    # Bokeh (the serve extra) is imported only by the interactive view and the server, and there
    # only inside functions, so the static report works without it
    for p in (ROOT / "reports").rglob("*.py"):
        top = {n for node in ast.parse(p.read_text()).body if isinstance(node, (ast.Import, ast.ImportFrom))
               for n in ([a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""])}
        assert not _under(top, {"bokeh", "tornado"}), p
