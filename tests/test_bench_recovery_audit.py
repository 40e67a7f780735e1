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


_UNSET = object()


def _record(flagged, true_flagged, found, true, planted, warnings=(), fragile=_UNSET, option="default",
            found_flagged=None):
    rec = {"key": ["realistic", "medium", option, 0, 300, 40], "warnings": list(warnings),
           "score": {"flagged": flagged, "true_flagged": true_flagged, "detours_found": found, "detours_true": true},
           "truth": {"detours": planted}}
    if fragile is not _UNSET:
        rec["fragile_detours"] = fragile
    if found_flagged is not None:
        rec["score"]["found_flagged"] = found_flagged
    return rec


def test_the_fits_own_warning_names_the_fragile_detour(bench, caplog):
    from latent.fit import _warn_audit

    audit = {"detours": [{"state": 7, "robust": False, "survived": 1, "of": 4,
                          "survives": {"K-1": False, "K+1": True, "family ar": False, "family hamilton": False}},
                         {"state": 2, "robust": True, "survived": 4, "of": 4, "survives": {}}],
             "states": [{"state": s, "robust": True} for s in range(8)]}
    with caplog.at_level(logging.WARNING, logger="latent"):
        _warn_audit(audit)
    rec = _record([2, 7], [], 0, 0, [], [r.getMessage() for r in caplog.records])
    assert bench._fragile(rec) == {7}


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


def test_a_rare_robust_detour_does_not_stand_in_for_a_fragile_testable_one(bench):
    # state 1 found a testable planted detour but is fragile; state 2 matched a planted detour too
    # rare to test and is robust: recall is 0 of 1, precision 1 of 1 (a planted detour all the same)
    rec = _record([1, 2], [1, 2], 1, 1, [5, 6], fragile=[1], found_flagged=[1])
    assert bench._robust_detours([rec]) == "0 % / 100 % (1) / –"


def test_detours_the_audit_does_not_judge_are_not_counted_as_surviving(bench):
    # the paper's detour rule (option reference): the audit judges only the delay rule's detours
    old = _record([4], [], 0, 0, [])  # no field: an older record
    new = _record([4], [], 0, 0, [], fragile=None)
    assert bench._robust_detours([_record([4], [], 0, 0, [], option="reference")]) == "– (not audited)"
    assert bench._robust_detours([new]) == "– (not audited)"
    assert bench._robust_detours([old]) == "– / 0 % (1) / 0 %"  # audited, and state 4 survived
