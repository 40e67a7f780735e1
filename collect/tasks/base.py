"""What a task is: a config class, named presets, and a batched problem built for S seeds.

A :class:`BatchedProblem` holds S independent models as one model: every parameter is a tensor
whose leading axis is the seed, the loss is the *sum* of the per-seed mean losses (so each
seed's gradient is exactly its own), and one optimiser step updates all seeds. Optimisers whose
updates are elementwise (SGD, Adam, AdamW) then behave exactly like S separate optimisers.
"""

from __future__ import annotations

import contextvars
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from latent.errors import UserError

from ..metrics import WeightGroups
from ..seeds import RunSeeds


@dataclass(frozen=True)
class Convergence:
    """When a run counts as converged: the first checkpoint where ``metric`` crosses ``threshold``."""

    metric: str
    threshold: float
    direction: str = "above"  # "above": metric > threshold; "below": metric < threshold

    def as_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "threshold": self.threshold, "direction": self.direction}

    def reached(self, values: torch.Tensor) -> torch.Tensor:
        return values > self.threshold if self.direction == "above" else values < self.threshold


@dataclass(frozen=True)
class Variant:
    """A named change of a task's config, declared by the task beside its presets
    (``latent collect --variant NAME``; docs/collect.md).

    Attributes
    ----------
    name : str
        What ``--variant`` calls it (``layernorm``, ``no-batchnorm``).
    sets : mapping
        Config fields it sets, whatever else was asked for.
    suffix : str
        Added to the default study name (``modadd-paper`` + ``-ln``).
    preset_defaults : mapping
        Per preset, fields it sets *unless* ``--set``, ``--epochs`` or ``--log-every`` gave them
        (the paper's stabilised transformer trains at batch 256 for 290 epochs).
    """

    name: str
    sets: Mapping[str, Any]
    suffix: str
    preset_defaults: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class VariantCombination:
    """What several variants chosen together mean beyond each alone (cifar's ``no-batchnorm`` and
    ``no-residual``: the paper's destabilised ResNet, its own threshold and study name)."""

    names: frozenset
    suffix: str
    defaults: Mapping[str, Any] = field(default_factory=dict)


class BatchedProblem:
    """S seeds of one task trained as one batched model.

    Subclasses set ``params`` (name -> leaf tensor ``(S, ...)`` with at least two dimensions),
    ``optimizer``, ``order_generators`` (one CPU ``torch.Generator`` per seed for data order)
    and ``steps_per_epoch``, and implement :meth:`train_step`, :meth:`evaluate` and
    :meth:`weight_groups`. A problem that keeps data-order state within an epoch (a shuffled
    permutation and a cursor) saves it through :meth:`extra_state` / :meth:`load_extra_states`
    so a run can resume mid-epoch.
    """

    params: dict[str, torch.Tensor]
    optimizer: torch.optim.Optimizer
    order_generators: list[torch.Generator]
    steps_per_epoch: int
    #: True when one epoch is one full-batch step, so the epoch's forward pass measures the
    #: training loss and accuracy exactly at the pre-step weights (no extra evaluation pass).
    full_batch: bool = False

    @property
    def n_seeds(self) -> int:
        return next(iter(self.params.values())).shape[0]

    def train_step(self, measure: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimiser step for every seed; return per-seed (mean loss, accuracy) on its batch.

        ``measure`` False: the caller will not read the accuracy, so a problem may skip computing
        it (and return NaN there); the step itself is the same.
        """
        raise NotImplementedError

    def train_epoch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``steps_per_epoch`` steps; per-seed mean over batches of loss and accuracy."""
        losses, accs = zip(*(self.train_step() for _ in range(self.steps_per_epoch)))
        return torch.stack(losses).mean(0), torch.stack(accs).mean(0)

    def extra_state(self, i: int) -> dict[str, np.ndarray]:
        """Seed ``i``'s data-order state beyond its generator (e.g. the epoch's permutation)."""
        return {}

    def load_extra_states(self, states: list[dict[str, np.ndarray]]) -> None:
        """Inverse of :meth:`extra_state` for all seeds."""

    def evaluate(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-seed (mean loss, accuracy) on the whole ``"train"`` or ``"val"`` split, no grad."""
        raise NotImplementedError

    def weight_groups(self) -> WeightGroups:
        """The matrices, weights and biases that the reference's statistics include."""
        raise NotImplementedError

    # -- optional metric groups (latent.collect.progress, latent.collect.function_space) -------------------

    def progress_metrics(self) -> dict[str, torch.Tensor]:
        """The ``progress`` group (per-seed values, shape (S,)); only tasks that define it."""
        raise NotImplementedError

    def probe(self):
        """The outputs on the probe set (:class:`latent.collect.function_space.Probe`), for the
        ``function`` group."""
        raise NotImplementedError

    def snapshot_arrays(self) -> dict[str, torch.Tensor]:
        """The weights ``latent collect --snapshots N`` stores (:mod:`latent.snapshots`): ``embed``
        ``(S, vocab, width)`` and ``unembed`` ``(S, a, b)``, the seed axis first, as the model holds
        them (the axes :meth:`Task.snapshot_axes` names); only tasks whose model has a token
        embedding and an unembedding define it."""
        raise NotImplementedError

    # -- per-seed state (for resume), as plain numpy arrays --------------------------------

    def seed_state(self, i: int) -> dict[str, np.ndarray]:
        """Everything needed to continue seed ``i`` exactly: parameters, optimiser state, RNG."""
        out: dict[str, np.ndarray] = {}
        names = {id(p): n for n, p in self.params.items()}
        for name, p in self.params.items():
            out[f"param/{name}"] = p.detach()[i].cpu().numpy().copy()
        for p, st in self.optimizer.state.items():
            name = names[id(p)]
            for key, val in st.items():
                if torch.is_tensor(val) and val.dim() > 0 and val.shape[0] == self.n_seeds and val.shape == p.shape:
                    out[f"optim/{name}/{key}"] = val[i].cpu().numpy().copy()
                else:
                    out[f"optim/{name}/{key}"] = np.asarray(val.cpu() if torch.is_tensor(val) else val)
        out["rng/order"] = self.order_generators[i].get_state().numpy().copy()
        out.update({f"extra/{k}": v for k, v in self.extra_state(i).items()})
        return out

    def load_seed_states(self, states: list[dict[str, np.ndarray]]) -> None:
        """Inverse of :meth:`seed_state` for all seeds at once (same order as the seeds)."""
        if len(states) != self.n_seeds:
            raise ValueError("one state per seed is needed")
        with torch.no_grad():
            for name, p in self.params.items():
                p.copy_(torch.from_numpy(np.stack([s[f"param/{name}"] for s in states])).to(p))
        keys = sorted({k for k in states[0] if k.startswith("optim/")})
        for name, p in self.params.items():
            prefix = f"optim/{name}/"
            st: dict[str, Any] = {}
            for key in (k for k in keys if k.startswith(prefix)):
                short = key[len(prefix):]
                first = states[0][key]
                if first.shape == tuple(p.shape[1:]) and first.ndim > 0:
                    st[short] = torch.from_numpy(np.stack([s[key] for s in states])).to(p)
                else:
                    st[short] = torch.as_tensor(first).clone()
                    if st[short].dtype == torch.float64:
                        st[short] = st[short].to(torch.float32)
            if st:
                self.optimizer.state[p] = st
        for g, s in zip(self.order_generators, states):
            g.set_state(torch.from_numpy(s["rng/order"].copy()))
        self.load_extra_states([{k[len("extra/"):]: v for k, v in s.items() if k.startswith("extra/")} for s in states])


class RowProblem(BatchedProblem):
    """A problem whose examples are rows of a table, each seed with its own row indices.

    Subclasses call :meth:`_init_rows` and implement :meth:`_loss_acc`; this class supplies
    minibatching with per-seed shuffling, mid-epoch resume state and chunked evaluation.
    """

    EVAL_CHUNK = 2048  # rows per evaluation chunk, bounds memory for big splits and many seeds

    def _init_rows(self, train_idx: torch.Tensor, val_idx: torch.Tensor, batch_size: int,
                   train_eval_idx: torch.Tensor | None = None) -> None:
        """Set the ``(S, n)`` row indices of each split; ``batch_size`` 0 means full batch."""
        self.train_idx, self.val_idx = train_idx, val_idx
        self.train_eval_idx = train_idx if train_eval_idx is None else train_eval_idx
        n_train = train_idx.shape[1]
        self.batch_size = batch_size if 0 < batch_size < n_train else n_train
        self.full_batch = self.batch_size == n_train
        self.steps_per_epoch = math.ceil(n_train / self.batch_size)
        self._cursor = 0  # batches of the current epoch already taken
        self._order: torch.Tensor | None = None  # (S, n_train): this epoch's rows per seed

    def _loss_acc(self, rows: torch.Tensor, train: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-seed loss *sums* and correct counts over ``rows`` ``(S, B)``.

        ``train`` is True for a training step (augmentation, BatchNorm batch statistics) and
        False for evaluation.
        """
        raise NotImplementedError

    def loss_at(self, params: dict[str, torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
        """Per-seed loss *sums* over ``rows`` (S, B) with ``params`` (same names and shapes as
        :attr:`params`) in place of the model's own, in evaluation mode (no augmentation, stored
        BatchNorm statistics). Differentiable when gradients are enabled; chunked otherwise. The
        LLC sampler (:mod:`latent.collect.llc`) evaluates its draws with this."""
        saved = self.params
        self.params = params
        try:
            if torch.is_grad_enabled():
                return self._loss_acc(rows)[0]
            total = torch.zeros(rows.shape[0], dtype=torch.float64, device=rows.device)
            for chunk in rows.split(self.EVAL_CHUNK, dim=1):
                total += self._loss_acc(chunk)[0].double()
            return total
        finally:
            self.params = saved

    def train_step(self, measure: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        if self.full_batch:
            rows = self.train_idx
        else:
            if self._cursor == 0:
                # A new epoch: each seed shuffles its own training rows with its own generator.
                n = self.train_idx.shape[1]
                perms = torch.stack([torch.randperm(n, generator=g) for g in self.order_generators])
                self._order = self.train_idx.gather(1, perms.to(self.train_idx.device))
            bs = self.batch_size
            rows = self._order[:, self._cursor * bs : (self._cursor + 1) * bs]
            self._cursor = (self._cursor + 1) % self.steps_per_epoch
        self.optimizer.zero_grad(set_to_none=True)
        token = _COUNT_CORRECT.set(measure)
        try:
            loss_sum, correct = self._loss_acc(rows, train=True)
        finally:
            _COUNT_CORRECT.reset(token)
        n = rows.shape[1]
        # Sum of per-seed means: every seed receives exactly its own gradient.
        (loss_sum / n).sum().backward()
        self.optimizer.step()
        return loss_sum.detach() / n, correct / n

    def extra_state(self, i: int) -> dict[str, np.ndarray]:
        if self.full_batch or self._cursor == 0:
            return {"cursor": np.asarray(0)}
        return {"cursor": np.asarray(self._cursor), "order": self._order[i].cpu().numpy()}

    def load_extra_states(self, states: list[dict[str, np.ndarray]]) -> None:
        self._cursor = int(states[0].get("cursor", 0))
        if self._cursor:
            self._order = torch.from_numpy(np.stack([s["order"] for s in states])).to(self.train_idx.device)

    @torch.no_grad()
    def evaluate(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.train_eval_idx if split == "train" else self.val_idx
        loss = torch.zeros(self.n_seeds, dtype=torch.float64, device=idx.device)
        correct = torch.zeros(self.n_seeds, dtype=torch.float64, device=idx.device)
        for rows in idx.split(self.EVAL_CHUNK, dim=1):
            l, c = self._loss_acc(rows)
            loss += l.double()
            correct += c.double()
        n = idx.shape[1]
        return loss / n, correct / n


#: False inside a training step whose accuracy nobody reads (:meth:`RowProblem.train_step` with
#: ``measure=False``): the argmax over every example's logits is then skipped (5 % of a default
#: modadd step); it never touches the gradients, so the training is the same to the bit
_COUNT_CORRECT: contextvars.ContextVar[bool] = contextvars.ContextVar("count_correct", default=True)


def cross_entropy_sums(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-seed cross-entropy *sums* and correct counts for ``logits (S, N, C)`` and labels ``(S, N)``
    (the counts are NaN inside a training step that does not measure: :meth:`RowProblem.train_step`)."""
    S, n, c = logits.shape
    loss = F.cross_entropy(logits.reshape(S * n, c), y.reshape(-1), reduction="none").view(S, n).sum(1)
    if not _COUNT_CORRECT.get():
        return loss, torch.full((S,), float("nan"), device=logits.device)
    return loss, (logits.argmax(-1) == y).sum(1)


def stack_params(per_seed: list[dict[str, torch.Tensor]], device: torch.device) -> dict[str, torch.Tensor]:
    """Stack each seed's parameters on a new leading axis, as trainable leaves on ``device``."""
    return {k: torch.stack([ps[k] for ps in per_seed]).to(device).requires_grad_(True) for k in per_seed[0]}


class Task:
    """A task: its config class, presets and how to build a batched problem.

    Subclasses set the class attributes; ``convergence`` reads the threshold from the config's
    ``threshold`` field and ``build`` instantiates ``problem_class(cfg, seeds, device)``.
    """

    name: ClassVar[str]
    config_class: ClassVar[type]
    presets: ClassVar[Mapping[str, Mapping[str, Any]]]
    problem_class: ClassVar[type]
    step_unit: ClassVar[str] = "epoch"
    convergence_metric: ClassVar[str] = "val_acc"
    convergence_direction: ClassVar[str] = "above"
    #: CPU threads when ``--threads`` is not given (None: every core). A task sets 1 where a
    #: second thread measurably slows it down (bench/RESULTS.md).
    default_threads: ClassVar[int | None] = None
    #: named config changes (``--variant``), declared beside the presets
    variants: ClassVar[tuple[Variant, ...]] = ()
    #: what some variants mean together, beyond each alone
    variant_combinations: ClassVar[tuple[VariantCombination, ...]] = ()

    def apply_variants(self, names, preset: str, overrides: dict[str, Any]) -> str:
        """Put the variants ``names`` into ``overrides`` (in place) for ``preset``; return the suffix of
        the default study name ("" for none). An unknown name is a :class:`UserError` listing this
        task's variants."""
        known = {v.name: v for v in self.variants}
        for name in names:
            if name not in known:
                have = (f"its variants: {', '.join(known)}" if known else "it has none")
                raise UserError(f"--variant {name} does not apply to task {self.name!r} ({have})")
        chosen = [v for v in self.variants if v.name in set(names)]  # declaration order: one name per choice
        suffix = ""
        for v in chosen:
            overrides.update(v.sets)
            for key, value in v.preset_defaults.get(preset, {}).items():
                overrides.setdefault(key, value)
            suffix += v.suffix
        for combo in self.variant_combinations:
            if combo.names == frozenset(v.name for v in chosen):
                for key, value in combo.defaults.items():
                    overrides.setdefault(key, value)
                suffix = combo.suffix
        return suffix

    def convergence(self, cfg) -> Convergence:
        return Convergence(self.convergence_metric, cfg.threshold, self.convergence_direction)

    def metric_groups(self, cfg) -> dict[str, list[str]]:
        """The optional metric groups this task records, name -> columns (``latent collect
        --metric-groups``); the weight statistics and losses are always recorded."""
        from ..function_space import FUNCTION_COLUMNS
        from ..llc import LLC_COLUMNS

        groups = {"function": list(FUNCTION_COLUMNS)}
        if issubclass(self.problem_class, RowProblem):  # the LLC sampler evaluates rows (RowProblem.loss_at)
            groups["llc"] = list(LLC_COLUMNS)
        return groups

    def snapshot_axes(self, cfg) -> dict[str, tuple[str, str]] | None:
        """The axes of the weights :meth:`BatchedProblem.snapshot_arrays` gives for ``cfg`` (after the
        seed axis), ``{"embed": (...), "unembed": (...)}``, recorded in ``study.json``; None (the
        default) for a task whose model has no token embedding and unembedding (``--snapshots``
        is refused)."""
        return None

    def load_data(self, cfg) -> Any:
        """The study's data set for ``cfg`` (None for tasks whose problem generates its own).

        Loaded once per collection; :meth:`describe_data` fingerprints exactly this object and
        :meth:`build` trains on it, so what is recorded is what is trained on.
        """
        return None

    def build(self, cfg, seeds: list[RunSeeds], device: torch.device, data: Any = None) -> BatchedProblem:
        if data is None:
            return self.problem_class(cfg, seeds, device)
        return self.problem_class(cfg, seeds, device, data)

    def describe_data(self, cfg, data: Any = None) -> dict[str, Any]:
        """What data the study used (recorded in ``study.json``): at least ``source``, ``n_train``
        (training examples per run) and ``fingerprint`` (:func:`latent.collect.fingerprint.fingerprint`)."""
        raise NotImplementedError

    def schedule(self, cfg, data_info: Mapping[str, Any]) -> dict[str, int]:
        """The checkpoint schedule in the task's step unit, recorded in ``study.json``.

        ``{"every": k, "last": n, "steps_per_epoch": s}``: a finished run has a row at steps 0,
        k, 2k, … and n. Steps per epoch follow from the training examples per run and the
        batch size (0 or a batch at least as large as the split: one full-batch step).
        """
        n_train, batch = int(data_info["n_train"]), int(cfg.batch_size)
        spe = math.ceil(n_train / batch) if 0 < batch < n_train else 1
        last = cfg.epochs if self.step_unit == "epoch" else cfg.epochs * spe
        return {"every": int(cfg.log_every), "last": int(last), "steps_per_epoch": int(spe)}


def normal_(shape: tuple[int, ...], std: float, gen: torch.Generator) -> torch.Tensor:
    """A float32 N(0, std²) draw on CPU from ``gen`` (init always happens on CPU, then moves)."""
    return torch.randn(shape, generator=gen, dtype=torch.float32) * std


def inv_sqrt(n: int) -> float:
    return 1.0 / math.sqrt(n)
