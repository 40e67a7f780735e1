"""Packaging: three folders install under one import namespace (latent, latent.collect,
latent.reports), nothing is installed under a generic top-level name, and the distribution's name
is not the import name other projects own on the public index."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _installed_name(folder: Path) -> str:
    rel = folder.relative_to(ROOT).parts
    return ".".join(rel if rel[0] == "latent" else ("latent", *rel))


def test_every_package_folder_is_installed_under_latent():
    pyproject = _pyproject()
    tool = pyproject["tool"]["setuptools"]
    folders = sorted(p.parent for top in ("latent", "collect", "reports") for p in (ROOT / top).rglob("__init__.py"))
    assert sorted(tool["packages"]) == sorted(_installed_name(f) for f in folders)
    assert all(name == "latent" or name.startswith("latent.") for name in tool["packages"])
    assert tool["package-dir"] == {"latent": "latent", "latent.collect": "collect", "latent.reports": "reports"}
    assert pyproject["project"]["name"] not in {"latent", "collect", "reports"}
    assert pyproject["project"]["scripts"] == {"latent": "latent.cli:main"}


def test_the_installed_packages_are_the_folders_and_the_old_names_are_not_installed(tmp_path, monkeypatch):
    # outside the checkout, so the current directory cannot lend the folders their old names
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if Path(p or ".").resolve() != ROOT])
    for name, folder in (("latent.collect", "collect"), ("latent.reports", "reports")):
        spec = importlib.util.find_spec(name)
        assert spec is not None and Path(spec.origin).resolve() == ROOT / folder / "__init__.py"
    for old in ("collect", "reports"):
        spec = importlib.util.find_spec(old)
        assert spec is None or Path(spec.origin).resolve().parent.parent != ROOT, f"{old!r} is installed from this checkout"
