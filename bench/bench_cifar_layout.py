"""What running the CIFAR ResNet in NCHW costs: training steps of this tree against a baseline revision.

Run from the repository root:

    python bench/bench_cifar_layout.py                    # baseline: the commit before the NCHW fix
    python bench/bench_cifar_layout.py --baseline HEAD~3  # any other revision

Until the fix, a one-seed network trained on channels-last crops (the augmentation's gather), which
on CPUs without AVX-512 reaches a oneDNN kernel that corrupts memory (tests/test_cifar_native.py).
With several seeds the reshape into grouped channels already copied to NCHW, so those steps compute
the same thing either way. This script checks that claim (the parameters after the timed steps are
bit-identical for 40 seeds) and times the default configuration's training step (width 4, batch
16) in child processes, this tree and the baseline (a temporary git worktree) taking turns, so the
ratio is paired against drift. On a CPU without AVX-512 the baseline's one-seed child crashes;
the script says so. Rewrites the ``cifar-layout`` block of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from results import write_block  # noqa: E402

BEFORE_FIX = "f4851a0"

CHILD = """
import hashlib, json, sys, time
sys.path.insert(0, sys.argv[1])
import torch
from latent.collect.seeds import RunSeeds
from latent.collect.tasks.cifar import CifarConfig, CifarProblem
torch.set_num_threads(1)
seeds, steps = int(sys.argv[2]), int(sys.argv[3])
cfg = CifarConfig()
pr = CifarProblem(cfg, [RunSeeds.derive(s, cfg.split_seed) for s in range(seeds)], torch.device("cpu"))
for _ in range(3):
    pr.train_step()
t0 = time.perf_counter()
for _ in range(steps):
    pr.train_step()
dt = (time.perf_counter() - t0) / steps
digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in pr.params.values())).hexdigest()
print(json.dumps({"s_per_step": dt, "params_sha256": digest}))
"""


def child(tree: Path, seeds: int, steps: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tree), str(seeds), str(steps)], capture_output=True,
                          text=True, env=env, timeout=1800)
    if proc.returncode != 0:
        return {"crashed": proc.returncode, "stderr": proc.stderr.strip().splitlines()[-1:] or [""]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline", default=BEFORE_FIX, help="git revision to compare with (default: before the fix)")
    ap.add_argument("--repeats", type=int, default=5, help="paired runs per seed count")
    ap.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args = ap.parse_args()
    rev = subprocess.run(["git", "rev-parse", "--short", args.baseline], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.strip()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    if subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                      text=True).stdout.strip():
        head += " with uncommitted changes"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "baseline"
        subprocess.run(["git", "worktree", "add", "-q", "--detach", str(base), rev], cwd=ROOT, check=True)
        try:
            for seeds, steps in ((1, 60), (40, 8)):
                new, old = [], []
                for _ in range(args.repeats):
                    new.append(child(ROOT, seeds, steps))
                    old.append(child(base, seeds, steps))
                crashed = [r for r in old if "crashed" in r]
                t_new = statistics.median(r["s_per_step"] for r in new)
                if crashed:
                    rows.append((seeds, t_new, None, None, f"baseline crashed ({crashed[0]['crashed']}) "
                                 f"in {len(crashed)} of {len(old)} runs"))
                    continue
                t_old = statistics.median(r["s_per_step"] for r in old)
                ratio = statistics.median(a["s_per_step"] / b["s_per_step"] for a, b in zip(new, old))
                same = all(a["params_sha256"] == b["params_sha256"] for a, b in zip(new, old))
                note = ("parameters bit-identical: the same arithmetic (only the image copies read other strides)" if same else
                        "parameters differ in rounding: other conv kernels")
                rows.append((seeds, t_new, t_old, ratio, note))
                print(f"S={seeds}: {t_new * 1e3:.1f} ms/step vs {t_old * 1e3:.1f} (x{ratio:.3f}); "
                      f"{rows[-1][-1]}", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, check=False)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    avx512 = "avx512f" in Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else False
    lines = [
        f"Default cifar config (width 4, batch 16), one thread, {args.repeats} paired child runs per row, "
        f"{head} against {rev}; median seconds per training step after 3 warm-up steps. CPU: {cpu} "
        f"({'with' if avx512 else 'without'} AVX-512), load {os.getloadavg()[0]:.2f} at the end.",
        "",
        "| seeds | NCHW (this tree) | before | ratio (paired median) | check |",
        "|---|---|---|---|---|",
    ]
    for seeds, t_new, t_old, ratio, note in rows:
        old = f"{t_old * 1e3:.1f} ms" if t_old is not None else "—"
        rat = f"{ratio:.3f}" if ratio is not None else "—"
        lines.append(f"| {seeds} | {t_new * 1e3:.1f} ms | {old} | {rat} | {note} |")
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_block("cifar-layout", body, title="CIFAR ResNet in NCHW, against channels-last crops (`bench/bench_cifar_layout.py`)")


if __name__ == "__main__":
    main()
