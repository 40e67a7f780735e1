"""The suite survives a native crash or hang in one test: that test fails by name, the rest run,
and the closing summary line is printed (the pytest settings in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CRASHING = '''
import ctypes, time

def test_before():
    pass

def test_segfaults():
    ctypes.string_at(0)  # a read of address 0: SIGSEGV, as a faulting native kernel

def test_hangs():
    time.sleep(60)  # as a kernel spinning forever

def test_after():
    pass
'''


def test_a_crash_and_a_hang_fail_by_name_and_the_summary_is_printed(tmp_path):
    (tmp_path / "test_native.py").write_text(CRASHING)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(tmp_path),
         "-p", "no:cacheprovider", "--timeout", "5", str(tmp_path / "test_native.py")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    out = proc.stdout
    assert proc.returncode == 1, out[-2000:]
    assert "crashed while running 'test_native.py::test_segfaults'" in out
    assert "crashed while running 'test_native.py::test_hangs'" in out
    assert "Segmentation fault" in proc.stderr + out  # faulthandler's report names the fault
    assert out.rstrip().splitlines()[-1].strip("= ").startswith("2 failed, 2 passed"), out[-500:]
