"""The task registry: ``--task NAME`` looks tasks up here."""

from __future__ import annotations

from latent.errors import UserError

from .base import BatchedProblem, Convergence, Task
from .cifar import CifarTask
from .mlm import MlmTask
from .mnist import MnistTask
from .modadd import ModAddTask
from .parity import ParityTask

TASKS: dict[str, Task] = {t.name: t for t in (ModAddTask(), ParityTask(), MnistTask(), CifarTask(), MlmTask())}


def get_task(name: str) -> Task:
    """The task called ``name``; an unknown name is a :class:`UserError` listing the known ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise UserError(f"unknown task {name!r}; choose one of: {', '.join(sorted(TASKS))}") from None


__all__ = ["TASKS", "get_task", "Task", "BatchedProblem", "Convergence"]
