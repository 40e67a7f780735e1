"""The fit artifact: the one reader, writer and resolver of ``<study>/fits/<fit-id>/``.

A fit directory holds three files, each plain data checked against its schema on read
(:mod:`latent.schemas`, which owns the format constants; never a pickle):

- ``model.json`` (format ``latent.fit/1``): the fitted model, its settings and the runs used;
- ``analysis.json`` (``latent.analysis/1``): convergence, map, phases, detours, checks;
- ``paths.parquet``: every checkpoint's decoded state and state probabilities.

:func:`write_fit` installs all three atomically; :func:`read_fit` and :func:`load_fit` read and
check them (each against its schema and against each other); :func:`choose_fit` and
:func:`resolve_fit` say which fit a name means. ``latent fit``, ``predict``, ``compare``,
``report`` and the tests all go through here.

>>> from latent.artifacts import resolve_fit, load_fit
>>> model, paths, analysis = load_fit(resolve_fit("modadd", store="data"))   # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import pandas as pd

from .errors import UserError
from .schemas import ANALYSIS_FORMAT, MODEL_FORMAT  # noqa: F401 - the formats, re-exported for readers
from .store import Study, atomic_write_json, atomic_write_parquet

log = logging.getLogger("latent")

#: the files of a fit directory
FIT_FILES = ("model.json", "analysis.json", "paths.parquet")


# --------------------------------------------------------------------------- write


def write_fit(study: Study, result) -> Path:
    """Write ``fits/<fit-id>/`` atomically: build it in a temporary directory, then rename over.

    Parameters
    ----------
    study : Study
    result : FitResult
        What :func:`latent.fit.fit_study` returned (``fit_id``, ``model``, ``analysis``, ``paths``).

    Returns
    -------
    Path
        The fit directory.
    """
    from . import locks
    from .store import replace_lock_path, tidy_replaced

    fits = study.fits_dir
    fits.mkdir(parents=True, exist_ok=True)
    with locks.acquire(replace_lock_path(fits, result.fit_id)):
        for line in tidy_replaced(fits, result.fit_id, f".tmp-{result.fit_id}-*", f".old-{result.fit_id}-*", "fit"):
            log.info("fits of %s: %s (left by a killed fit)", study.name, line)
        return _install_fit(fits, result)


def _install_fit(fits: Path, result) -> Path:
    final = fits / result.fit_id
    tmp = Path(tempfile.mkdtemp(dir=fits, prefix=f".tmp-{result.fit_id}-"))
    old = None
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; a fit directory is not
        atomic_write_parquet(tmp / "paths.parquet", result.paths)
        atomic_write_json(tmp / "analysis.json", result.analysis)
        atomic_write_json(tmp / "model.json", result.model)
        if final.exists():
            old = Path(tempfile.mkdtemp(dir=fits, prefix=f".old-{result.fit_id}-"))
            os.rename(final, old / "fit")
        os.rename(tmp, final)
    except BaseException:
        if old is not None and (old / "fit").exists() and not final.exists():
            os.rename(old / "fit", final)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return final


# --------------------------------------------------------------------------- read


def load_fit(fit_dir: str | os.PathLike) -> tuple[dict, pd.DataFrame, dict]:
    """``model.json``, ``paths.parquet`` and ``analysis.json`` of a fit, each checked against its
    schema and against each other (latent.schemas; no pickle)."""
    from .schemas import check_fit
    from .store import read_parquet

    fit_dir = Path(fit_dir)
    model, analysis = read_fit(fit_dir)
    paths = read_parquet(fit_dir / "paths.parquet", "fit paths", hint="rerun `latent fit`")
    check_fit(model, analysis, paths, where=fit_dir)
    return model, paths, analysis


def read_fit(fit_dir: str | os.PathLike) -> tuple[dict, dict]:
    """``(model, analysis)`` of a fit directory, each checked against its schema and the two
    against each other (no pickle)."""
    from .schemas import check_fit, read_artifact

    fit_dir = Path(fit_dir)
    if not (fit_dir / "model.json").is_file():
        raise UserError(f"no fit at {fit_dir} (no model.json); `latent ls` lists the fits")
    model = read_artifact("model", fit_dir / "model.json", hint="rerun `latent fit`")
    analysis = read_artifact("analysis", fit_dir / "analysis.json", hint="rerun `latent fit`")
    check_fit(model, analysis, where=fit_dir)
    return model, analysis


# --------------------------------------------------------------------------- which fit


def choose_fit(study: Study, fit: str | None = None) -> str:
    """The fit id to use: ``fit`` if given (checked), else the most recent fit of ``study``.

    Raises
    ------
    UserError
        ``fit`` is not a fit id of the study (a path, empty, or absent), or the study has no fit.
    """
    fits = study.fit_ids()
    if fit is not None:
        if os.sep in fit or "/" in fit or fit in ("", ".", ".."):
            raise UserError(f"invalid fit id {fit!r}: pass the name of a directory under {study.fits_dir}")
        if not (study.fits_dir / fit).is_dir():
            have = ", ".join(fits) if fits else "none"
            raise UserError(f"fit {fit!r} not found in {study.fits_dir} (fits: {have}); `latent ls` lists them")
        return fit
    if not fits:
        raise UserError(f"study {study.name!r} has no fit yet; run `latent fit --study {study.name}` first")
    return fits[-1]


def resolve_fit(fit: str | os.PathLike, store: str | os.PathLike = "data") -> Path:
    """A fit directory from a path to one, ``STUDY/FIT_ID``, or a study name (its most recent fit).

    Raises
    ------
    UserError
        Nothing by that name: no such directory, study or fit.
    """
    from .store import resolve_study

    text = str(fit)
    p = Path(text)
    if (p / "model.json").is_file():
        return p
    parts = text.rstrip("/").split("/")
    if len(parts) == 2 and (Path(store) / parts[0] / "fits" / parts[1] / "model.json").is_file():
        return Path(store) / parts[0] / "fits" / parts[1]
    if len(parts) >= 2 and parts[-2] == "fits":
        raise UserError(f"no fit at {text} (no model.json); `latent ls` lists the fits")
    study = resolve_study(store, text)
    return study.fits_dir / choose_fit(study)
