"""The collector: train many seeds of a task as one batched model and log weight statistics.

Importing this package first applies process settings that must precede torch's import
(see :mod:`latent.collect.runtime`).
"""

from .runtime import prepare_process

prepare_process()

from .metrics import REFERENCE_COLUMNS, WeightGroups, matrix_metrics, reference_metrics  # noqa: E402
from .seeds import RunSeeds  # noqa: E402

__all__ = ["REFERENCE_COLUMNS", "WeightGroups", "matrix_metrics", "reference_metrics", "RunSeeds"]
