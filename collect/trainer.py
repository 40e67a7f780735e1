"""The batched training loop: advances a :class:`BatchedProblem` and emits checkpoints.

It knows nothing about files: each checkpoint goes to ``on_checkpoint`` as a
:class:`Checkpoint` (per-seed metric values), and ``on_epoch`` is told after every epoch so the
caller can decide when to save resume state. Metric computation lives in
:mod:`latent.collect.metrics`, storage in :mod:`latent.collect.writer`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Collection

import numpy as np
import torch

from .metrics import reference_metrics
from .tasks.base import BatchedProblem

LOSS_COLUMNS = ("train_loss", "val_loss", "train_acc", "val_acc")


@dataclass
class Checkpoint:
    """Per-seed values at one checkpoint.

    Attributes
    ----------
    step : int
        Optimiser steps completed when the weights were measured.
    epoch : float
        Epochs completed (``step / steps_per_epoch``).
    values : dict of str to numpy.ndarray
        Column name -> array of shape ``(S,)`` (the 14 reference columns, losses, accuracies).
    snapshot : dict of str to numpy.ndarray, optional
        At a snapshot step (``train(snapshot_steps=...)``), the weights
        :meth:`BatchedProblem.snapshot_arrays` names, as float32 copies ``(S, ...)``; else None.
    """

    step: int
    epoch: float
    values: dict[str, np.ndarray]
    snapshot: dict[str, np.ndarray] | None = None


def checkpoint_steps(epochs: int, log_every: int, steps_per_epoch: int, unit: str = "epoch") -> list[int]:
    """Optimiser steps at which to checkpoint: every ``log_every`` units from 0, and the last step.

    ``unit`` is ``"epoch"`` (checkpoints at epoch boundaries, as modadd and parity log) or
    ``"step"`` (every ``log_every`` optimiser steps, as the reference's vision tasks log).
    """
    total = epochs * steps_per_epoch
    every = log_every * steps_per_epoch if unit == "epoch" else log_every
    marks = list(range(0, total + 1, every))
    if marks[-1] != total:
        marks.append(total)
    return marks


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


def train(
    problem: BatchedProblem,
    *,
    start_step: int,
    epochs: int,
    log_every: int,
    unit: str = "epoch",
    on_checkpoint: Callable[[Checkpoint], None],
    on_step: Callable[[int], None] | None = None,
    timings: dict[str, float] | None = None,
    metric_variant: str = "reference",
    groups: tuple[str, ...] = (),
    llc=None,
    snapshot_steps: Collection[int] = (),
) -> None:
    """Train ``problem`` from ``start_step`` to ``epochs`` epochs, emitting every checkpoint on the way.

    The checkpoint at step t measures the weights after t optimiser steps: weight statistics
    and validation loss/accuracy are computed before step t+1. Training loss/accuracy at t
    come from step t+1's own forward pass when training is full-batch (exact, and free),
    otherwise from an evaluation pass over the training split.

    Parameters
    ----------
    problem : BatchedProblem
        The seeds to train, already at ``start_step``.
    start_step : int
        Optimiser steps already taken (the resume point).
    epochs, log_every : int
        Training length in epochs, and the checkpoint interval in ``unit``.
    unit : {"epoch", "step"}
        Unit of ``log_every``.
    on_checkpoint : callable
        Receives each :class:`Checkpoint` in order.
    on_step : callable, optional
        Called with the number of completed steps after every step (and once at the start).
    timings : dict, optional
        Accumulates seconds spent in ``train``, ``eval`` and ``metrics``.
    metric_variant : {"reference", "paper"}
        The weight statistics' definitions (:func:`latent.collect.metrics.reference_metrics`).
    groups : tuple of str
        Optional metric groups to record too: ``"progress"`` (:meth:`BatchedProblem.progress_metrics`)
        and ``"function"`` (:func:`latent.collect.function_space.function_metrics` of the problem's probe),
        ``"ops"`` (:meth:`BatchedProblem.op_metrics`) and ``"llc"`` (``llc``, on its grid of
        checkpoints; NaN elsewhere).
    llc : latent.collect.llc.LLCSampler, optional
        The sampler of the ``"llc"`` group.
    snapshot_steps : collection of int
        Optimiser steps (checkpoints among them) at which the checkpoint also carries a copy of
        the weights :meth:`BatchedProblem.snapshot_arrays` names (``Checkpoint.snapshot``), taken
        with the weight statistics, before the next step.
    """
    import time

    spe = problem.steps_per_epoch
    total = epochs * spe
    order = checkpoint_steps(epochs, log_every, spe, unit)
    marks = set(order)
    index = {m: i for i, m in enumerate(order)}  # a checkpoint's position in the schedule
    clock = timings if timings is not None else {}
    for key in ("train", "eval", "metrics", *groups):
        clock.setdefault(key, 0.0)

    def measure(step: int) -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        values = {k: _to_numpy(v) for k, v in reference_metrics(problem.weight_groups(), metric_variant).items()}
        for group in groups:
            tg = time.perf_counter()
            if group == "progress":
                extra = problem.progress_metrics()
            elif group == "ops":
                extra = problem.op_metrics()
            elif group == "llc":
                extra = (llc.estimate(problem, step) if llc.measures(index[step])
                         else llc.nan_row(problem.n_seeds))
            else:
                from .function_space import function_metrics

                extra = function_metrics(problem.probe())
            values.update({k: _to_numpy(v) for k, v in extra.items()})
            clock[group] += time.perf_counter() - tg
            t0 += time.perf_counter() - tg  # the groups have their own clocks
        t1 = time.perf_counter()
        val_loss, val_acc = problem.evaluate("val")
        values["val_loss"], values["val_acc"] = _to_numpy(val_loss), _to_numpy(val_acc)
        clock["metrics"] += t1 - t0
        clock["eval"] += time.perf_counter() - t1
        return values

    def snapshot() -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        out = {k: v.detach().to("cpu", torch.float32, copy=True).numpy() for k, v in problem.snapshot_arrays().items()}
        clock["metrics"] += time.perf_counter() - t0
        return out

    snapshot_steps = frozenset(int(s) for s in snapshot_steps)
    if on_step is not None:
        on_step(start_step)
    step = start_step
    while True:
        pending = measure(step) if step in marks else None
        weights = snapshot() if pending is not None and step in snapshot_steps else None
        if pending is not None and (step == total or not problem.full_batch):
            t0 = time.perf_counter()
            train_loss, train_acc = problem.evaluate("train")
            pending["train_loss"], pending["train_acc"] = _to_numpy(train_loss), _to_numpy(train_acc)
            clock["eval"] += time.perf_counter() - t0
        if step == total:
            if pending is not None:
                on_checkpoint(Checkpoint(step, step / spe, pending, weights))
            return
        t0 = time.perf_counter()
        # the step's own accuracy is read only at a checkpoint of a full-batch problem
        loss, acc = problem.train_step(measure=pending is not None and problem.full_batch)
        clock["train"] += time.perf_counter() - t0
        if pending is not None:
            if problem.full_batch:
                # One full-batch step: its forward pass saw exactly the weights after `step` steps.
                pending["train_loss"], pending["train_acc"] = _to_numpy(loss), _to_numpy(acc)
            on_checkpoint(Checkpoint(step, step / spe, pending, weights))
        step += 1
        if on_step is not None:
            on_step(step)
