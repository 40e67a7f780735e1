"""bench/bench_recovery.py's "detours surviving the audit" column, on hand-made records: only the
flagged detours the audit calls robust count, read from the record or, for older records, from the
fit's own warning (whose wording latent/fit.py's _warn_audit writes)."""

import importlib.util
import logging
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_recovery.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_recovery_under_test", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _record(flagged, true_flagged, found, true, planted, warnings=(), fragile=None):
    rec = {"score": {"flagged": flagged, "true_flagged": true_flagged, "detours_found": found, "detours_true": true},
           "truth": {"detours": planted}, "warnings": list(warnings)}
    if fragile is not None:
        rec["fragile_detours"] = fragile
    return rec


def test_the_fits_own_warning_names_the_fragile_detour(bench, caplog):
    from latent.fit import _warn_audit

    audit = {"detours": [{"state": 7, "robust": False, "survived": 1, "of": 4,
                          "survives": {"K-1": False, "K+1": True, "family ar": False, "family hamilton": False}},
                         {"state": 2, "robust": True, "survived": 4, "of": 4, "survives": {}}],
             "states": [{"state": s, "robust": True} for s in range(8)]}
    with caplog.at_level(logging.WARNING, logger="latent"):
        _warn_audit(audit)
    assert bench._fragile({"warnings": [r.getMessage() for r in caplog.records]}) == {7}


def test_robust_column_counts_only_detours_the_audit_keeps(bench):
    records = [
        # two planted detours (testable), both flagged, one of them fragile (old record: from the warning)
        _record([1, 2], [1, 2], 2, 2, [5, 6], [
            "detour state 2 does not survive a change of method: it is a detour in only 1 of 4 alternative fits "
            "(not: K-1); read it as fragile"]),
        # no planted detour, one false detour that the audit calls fragile (new record: the field)
        _record([3], [], 0, 0, [], fragile=[3]),
        # no planted detour, one false detour that survives
        _record([0], [], 0, 0, [], fragile=[]),
    ]
    # robust: {1} (true), {} and {0} (false) -> recall 1 of 2, precision 1 of 2, clean 1 of 2
    assert bench._robust_detours(records) == "50 % / 50 % (2) / 50 %"
    assert bench._robust_detours(records[1:2]) == "– / – (0) / 100 %"
