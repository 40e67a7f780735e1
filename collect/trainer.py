"""The batched training loop: advances a :class:`BatchedProblem` and emits checkpoints.

It knows nothing about files: each checkpoint goes to ``on_checkpoint`` as a
:class:`Checkpoint` (per-seed metric values), and ``on_epoch`` is told after every epoch so the
caller can decide when to save resume state. Metric computation lives in
:mod:`collect.metrics`, storage in :mod:`collect.writer`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

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
    epoch : int
        Epochs completed when the weights were measured.
    step : int
        Optimiser steps completed.
    values : dict of str to numpy.ndarray
        Column name -> array of shape ``(S,)`` (the 14 reference columns, losses, accuracies).
    """

    epoch: int
    step: int
    values: dict[str, np.ndarray]


def checkpoint_epochs(epochs: int, log_every: int) -> list[int]:
    """Checkpoint epochs: 0, log_every, 2·log_every, …, and always the last epoch."""
    marks = list(range(0, epochs + 1, log_every))
    if marks[-1] != epochs:
        marks.append(epochs)
    return marks


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


def train(
    problem: BatchedProblem,
    *,
    start_epoch: int,
    epochs: int,
    log_every: int,
    on_checkpoint: Callable[[Checkpoint], None],
    on_epoch: Callable[[int], None] | None = None,
    timings: dict[str, float] | None = None,
) -> None:
    """Train ``problem`` from ``start_epoch`` to ``epochs``, emitting every checkpoint on the way.

    The checkpoint at epoch e measures the weights after e epochs: weight statistics and
    validation loss/accuracy are computed before epoch e+1's step. Training loss/accuracy at
    e come from that step's own forward pass when training is full-batch (exact, and free),
    otherwise from an evaluation pass over the training split.

    Parameters
    ----------
    problem : BatchedProblem
        The seeds to train, already at ``start_epoch``.
    start_epoch, epochs, log_every : int
        Resume point, final epoch and checkpoint interval.
    on_checkpoint : callable
        Receives each :class:`Checkpoint` in order.
    on_epoch : callable, optional
        Called with the number of completed epochs after every epoch (and once at the start).
    timings : dict, optional
        Accumulates seconds spent in ``train``, ``eval`` and ``metrics``.
    """
    import time

    marks = set(checkpoint_epochs(epochs, log_every))
    clock = timings if timings is not None else {}
    for key in ("train", "eval", "metrics"):
        clock.setdefault(key, 0.0)

    def measure(epoch: int) -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        values = {k: _to_numpy(v) for k, v in reference_metrics(problem.weight_groups()).items()}
        t1 = time.perf_counter()
        val_loss, val_acc = problem.evaluate("val")
        values["val_loss"], values["val_acc"] = _to_numpy(val_loss), _to_numpy(val_acc)
        clock["metrics"] += t1 - t0
        clock["eval"] += time.perf_counter() - t1
        return values

    if on_epoch is not None:
        on_epoch(start_epoch)
    epoch = start_epoch
    while True:
        pending = measure(epoch) if epoch in marks else None
        if epoch == epochs or (pending is not None and not problem.full_batch):
            if pending is not None:
                t0 = time.perf_counter()
                train_loss, train_acc = problem.evaluate("train")
                pending["train_loss"], pending["train_acc"] = _to_numpy(train_loss), _to_numpy(train_acc)
                clock["eval"] += time.perf_counter() - t0
        if epoch == epochs:
            if pending is not None:
                on_checkpoint(Checkpoint(epoch, epoch * problem.steps_per_epoch, pending))
            return
        t0 = time.perf_counter()
        loss, acc = problem.train_epoch()
        clock["train"] += time.perf_counter() - t0
        if pending is not None:
            if problem.full_batch:
                # One full-batch step: its forward pass saw exactly the weights after `epoch` epochs.
                pending["train_loss"], pending["train_acc"] = _to_numpy(loss), _to_numpy(acc)
            on_checkpoint(Checkpoint(epoch, epoch * problem.steps_per_epoch, pending))
        epoch += 1
        if on_epoch is not None:
            on_epoch(epoch)
