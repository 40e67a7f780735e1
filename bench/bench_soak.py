"""Store soak: random faults against real collections for a fixed time, counting every outcome.

Run from the repository root:

    python bench/bench_soak.py                 # 5 minutes
    python bench/bench_soak.py --minutes 1     # a quick look

Each round collects a small sparse-parity study (3 seeds) into a fresh store under one of four
faults, drawn from a seeded generator (``--seed``):

* ``kill``: ``kill -9`` of a ``latent collect`` process at random moments (up to three times),
  then a rerun; meanwhile the main thread reads the run tables as fast as it can, both through
  the store (``Study.read_run`` and ``Study.read_finished_runs``) and naively by path
  (``pandas.read_parquet(path)``, what the store did before);
* ``damage``: a kill, then one file damaged as a user might (table deleted or truncated, state
  deleted, replaced by another seed's, or truncated, manifest deleted), then a rerun; an error
  must be one line naming the files to remove, after which a rerun must succeed;
* ``disk-full``: a full disk at a random write (ENOSPC half-way through the temporary file),
  then a rerun;
* ``two``: two ``latent collect`` processes on one study with overlapping seeds.

Every round must end with exactly the rows of an uninterrupted collection; anything else is
counted as *silently wrong*. Rewrites the ``soak`` block of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import errno
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from results import write_block  # noqa: E402

SEEDS, EPOCHS = 3, 30
PARITY = ["n_bits=10", "hidden=8", "n_train=40", "n_val=20", "batch_size=20", "log_every=1", f"epochs={EPOCHS}"]


def cli_args(store: Path, seeds: str = str(SEEDS)) -> list[str]:
    args = ["collect", "--task", "parity", "--seeds", seeds, "--store", str(store), "--threads", "1",
            "--save-every", "0", "--quiet"]
    for kv in PARITY:
        args += ["--set", kv]
    return args


def spawn(store: Path, seeds: str = str(SEEDS)) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "latent", *cli_args(store, seeds)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def collect(store: Path) -> None:
    from latent.collect.study import collect_study

    collect_study("parity", SEEDS, overrides=PARITY, store=store, threads=1, progress=False, save_every=0)


class Soak:
    def __init__(self, seed: int):
        import pandas as pd

        from latent.store import Study

        self.pd, self.Study = pd, Study
        self.rng = random.Random(seed)
        self.count: Counter = Counter()
        ref = Path(tempfile.mkdtemp(prefix="soak-ref-"))
        collect(ref)
        self.reference = {s: Study(ref / "parity").read_run(s) for s in range(SEEDS)}
        shutil.rmtree(ref)

    # -- checks ---------------------------------------------------------------------------------

    def exact(self, store: Path) -> bool:
        study = self.Study(store / "parity")
        try:
            for s, ref in self.reference.items():
                self.pd.testing.assert_frame_equal(study.read_run(s), ref)
                if study.run_status(s).status != "done":
                    return False
        except Exception:  # noqa: BLE001 - any difference or failure is a wrong study
            return False
        return not list(store.rglob("*.tmp")) and not list(store.rglob("state/*.npz"))

    def finish(self, scenario: str, store: Path, rerun=collect) -> None:
        """Rerun until the study is complete; record whether it ended exact, and how."""
        from latent.errors import UserError

        for attempt in range(3):
            try:
                rerun(store)
                break
            except UserError as exc:
                text = str(exc)
                one_line = "\n" not in text and "remove " in text and "together" in text
                self.count[f"{scenario}: clear error" if one_line else f"{scenario}: unclear error"] += 1
                damaged = [int(m) for m in re.findall(r"seed (\d+) again", text)]
                study = self.Study(store / "parity")
                for s in damaged:  # do what the message says
                    for p in (study.run_table_path(s), study.run_manifest_path(s), study.run_state_path(s)):
                        p.unlink(missing_ok=True)
        self.count[f"{scenario}: exact" if self.exact(store) else f"{scenario}: SILENTLY WRONG"] += 1

    def read_while(self, proc: subprocess.Popen, store: Path, until: float) -> None:
        """Read the tables as a reader would, and naively by path, while ``proc`` writes them."""
        from latent.errors import UserError

        study = self.Study(store / "parity")
        while proc.poll() is None and time.time() < until:
            for s in range(SEEDS):
                path = study.run_table_path(s)
                if not path.exists():
                    continue
                try:
                    frame = study.read_run(s)
                    table, statuses = study.read_finished_runs(allow_partial=True)
                    ok = frame.equals(self.reference[s].iloc[: len(frame)].reset_index(drop=True))
                    if statuses[s].status == "done":
                        done = table[table["seed"] == s].reset_index(drop=True)
                        ok = ok and done.equals(self.reference[s])
                    self.count["reads"] += 1
                    self.count["reads: wrong rows"] += not ok
                except UserError:
                    self.count["reads"] += 1
                    self.count["reads: failed"] += 1
                try:
                    self.pd.read_parquet(path)
                    self.count["naive reads"] += 1
                except FileNotFoundError:
                    pass
                except Exception:  # noqa: BLE001 - what a path-based reader meets
                    self.count["naive reads"] += 1
                    self.count["naive reads: failed"] += 1

    def kill_some(self, store: Path) -> None:
        for _ in range(self.rng.randint(1, 3)):
            proc = spawn(store)
            state_dir = store / "parity" / "state"
            deadline = time.time() + 120
            while proc.poll() is None and time.time() < deadline and not (state_dir.is_dir() and any(state_dir.iterdir())):
                time.sleep(0.01)
            self.read_while(proc, store, time.time() + self.rng.uniform(0.0, 2.0))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                self.count["kills"] += 1
            proc.wait()

    # -- scenarios ------------------------------------------------------------------------------

    def kill(self, store: Path) -> None:
        self.kill_some(store)
        proc = spawn(store)
        self.read_while(proc, store, time.time() + 600)
        self.count["kill: rerun failed"] += proc.wait() != 0
        self.finish("kill", store, rerun=lambda s: None)

    def damage(self, store: Path) -> None:
        self.kill_some(store)
        study = self.Study(store / "parity")
        seed = self.rng.randrange(SEEDS)
        table, state, manifest = study.run_table_path(seed), study.run_state_path(seed), study.run_manifest_path(seed)
        how = self.rng.choice(["delete table", "truncate table", "delete state", "foreign state", "truncate state",
                               "delete manifest"])
        target = {"table": table, "state": state, "manifest": manifest}[how.split()[-1]]
        if not target.exists():
            how = "nothing to damage"
        elif how.startswith("delete"):
            target.unlink()
        elif how.startswith("truncate"):
            target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
        else:
            other = study.run_state_path((seed + 1) % SEEDS)
            if other.exists():
                shutil.copy(other, state)
            else:
                how = "nothing to damage"
        self.count[f"damaged: {how}"] += 1
        self.finish("damage", store)

    def disk_full(self, store: Path) -> None:
        from latent import store as store_mod
        from latent.errors import StoreError

        real, calls, at = store_mod._write_synced, [0], self.rng.randint(1, 1 + 3 * SEEDS * 2 * EPOCHS)

        def failing(fd, data):
            calls[0] += 1
            if calls[0] == at:
                os.write(fd, data[: len(data) // 2])
                os.close(fd)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            real(fd, data)

        store_mod._write_synced = failing
        try:
            collect(store)
            self.count["disk-full: write index past the end"] += 1
        except StoreError as exc:
            self.count["disk-full: injected"] += 1
            self.count["disk-full: one-line error"] += "\n" not in str(exc) and "no space left" in str(exc)
        finally:
            store_mod._write_synced = real
        self.finish("disk-full", store)

    def two(self, store: Path) -> None:
        seeds = self.rng.choice([("0-1", "0-2"), ("0-2", "0-2"), ("1-2", "0-1")])
        procs = [spawn(store, seeds[0])]
        time.sleep(self.rng.uniform(0.0, 3.0))
        procs.append(spawn(store, seeds[1]))
        outs = [p.communicate(timeout=600) for p in procs]
        trained = sum(int(m) for out, _ in outs for m in re.findall(rb"^trained (\d+) seeds", out, re.M))
        self.count["two: both exit 0"] += all(p.returncode == 0 for p in procs)
        self.count["two: a seed trained twice"] += trained > SEEDS
        self.finish("two", store)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=2024)
    args = ap.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import latent.collect  # noqa: F401  (process settings before torch loads)

    soak = Soak(args.seed)
    scenarios = {"kill": soak.kill, "damage": soak.damage, "disk-full": soak.disk_full, "two": soak.two}
    t0 = time.time()
    rounds: Counter = Counter()
    while time.time() - t0 < args.minutes * 60:
        name = soak.rng.choice(list(scenarios))
        store = Path(tempfile.mkdtemp(prefix="soak-"))
        try:
            scenarios[name](store)
        finally:
            shutil.rmtree(store, ignore_errors=True)
        rounds[name] += 1
        print(f"[{time.time() - t0:6.0f} s] {name}: {dict(sorted(soak.count.items()))}", flush=True)
    wall = time.time() - t0
    c = soak.count
    bad = [f"{n}: SILENTLY WRONG" for n in scenarios] + [f"{n}: unclear error" for n in scenarios]
    wrong = sum(c[k] for k in bad + ["two: a seed trained twice", "kill: rerun failed", "reads: failed",
                                     "reads: wrong rows"])
    lines = [
        f"`python bench/bench_soak.py --minutes {args.minutes:g} --seed {args.seed}`: {sum(rounds.values())} rounds "
        f"in {wall / 60:.1f} min on {os.cpu_count()} cores (sparse parity, {SEEDS} seeds, {EPOCHS} epochs, "
        "a save point after every step).",
        "",
        "| scenario | rounds | outcomes |",
        "|---|---|---|",
    ]
    for name in scenarios:
        outcomes = ", ".join(f"{k.split(': ', 1)[1]} {v}" for k, v in sorted(c.items()) if k.startswith(f"{name}: "))
        lines.append(f"| {name} | {rounds[name]} | {outcomes or '-'} |")
    damaged = ", ".join(f"{k.split(': ', 1)[1]} {v}" for k, v in sorted(c.items()) if k.startswith("damaged: "))
    lines += [
        "",
        f"- `kill -9` delivered: {c['kills']}. Files damaged (one per damage round): {damaged or '-'}.",
        f"- Reads through the store while a collection rewrote the tables: {c['reads']:,}, failed "
        f"{c['reads: failed']}, rows not a prefix of the final run (or a done run not whole) {c['reads: wrong rows']}.",
        f"- The same tables read naively by path (`pandas.read_parquet(path)`, the store's old reader): "
        f"{c['naive reads']:,}, failed {c['naive reads: failed']}.",
        f"- Silently wrong studies, unclear errors, seeds trained twice, failed reruns or failed store reads: "
        f"**{wrong}**.",
    ]
    body = "\n".join(lines)
    print(body)
    write_block("soak", body, title="store soak (bench/bench_soak.py)")


if __name__ == "__main__":
    main()
