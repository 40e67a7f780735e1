"""Modular addition (grokking): predict (a + b) mod p from the pair (a, b).

Two models, both trained seed-batched:

* ``mlp`` (the default preset): a shared ``d_embed`` embedding for a and b, one ReLU hidden
  layer, p logits. Groks on a laptop CPU in minutes.
* ``transformer`` (the ``paper`` preset, reference.md A1): the reference's 1-layer transformer
  on tokens ``[a, b, =]`` — learned positional embedding, causal attention scaled by
  1/√d_head, ReLU MLP, untied unembedding over p + 1 outputs, optional post-LayerNorm.

Both use exact shortcuts (no approximation): the output depends only on the last position, so
only its query, MLP and unembedding are computed, and anything that depends on one operand
alone (first-layer pre-activations, attention scores, values) is computed once per vocabulary
entry and gathered. ``tests/test_modadd.py`` checks both against plain per-seed modules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F

from latent.errors import UserError

from ..fingerprint import fingerprint
from ..function_space import Probe, probe_rows
from ..metrics import WeightGroups
from ..progress import (cyclic_basis, discrete_log, frequency_energy, gini, op_combination, op_group, progress_columns,
                        restricted_excluded, sum_sq, top_share)
from ..seeds import RunSeeds
from ..config import AdamWConfig
from .base import RowProblem, Task, Variant, cross_entropy_sums, normal_, stack_params

@dataclass(frozen=True)
class ModAddConfig(AdamWConfig):
    """Modular-addition study config (every field can be set with ``--set key=value``).

    Attributes
    ----------
    model : {"mlp", "transformer"}
    p : int
        The modulus; inputs are all p² pairs.
    train_frac : float
        Fraction of pairs in the training split (``int(train_frac * p**2)`` rows).
    d_embed, d_hidden : int
        MLP: embedding width (shared by a and b) and hidden width.
    d_model, n_heads, d_mlp : int
        Transformer widths; d_head = d_model / n_heads.
    layernorm : bool
        Transformer: post-LN after the attention and MLP residual adds.
    init_scaling : float
        Every parameter is multiplied by this after initialisation (reference ``init_scaling``).
    lr, weight_decay, beta1, beta2, eps : float
        AdamW hyper-parameters.
    batch_size : int
        Minibatch size; 0 means full batch (one step per epoch).
    epochs, log_every : int
        Training length and checkpoint interval, in epochs (checkpoints at 0, log_every, …, epochs).
    split_seed : int or None
        None: each run's split is derived from its seed (reference). An integer: one split
        shared by the whole study.
    threshold : float
        Convergence: the first checkpoint with ``val_acc`` > threshold (reference.md E1: 0.9).
    key_freqs : int
        Key frequencies of the Fourier progress measures (restricted and excluded loss;
        :mod:`latent.collect.progress`); at most (p − 1) / 2 are used.
    op : str
        The operation: ``add`` (a + b), ``sub`` (a − b), ``mul`` (a·b) or ``div`` (a·b⁻¹, b ≠ 0)
        mod p; mul and div need a prime p. Several, comma-separated (``add,sub,mul``), train
        them together ("co-grokking"): every example carries its operation as a token (the
        transformer's last position, the ``=`` of each operation; an operation embedding for the
        MLP), and one shared output layer answers all of them, so what the operations share
        (embedding, Fourier structure) is shared by construction. Each operation's pairs are split
        into train and validation by ``train_frac`` on its own.
    """

    model: str = "mlp"
    p: int = 59
    train_frac: float = 0.5
    d_embed: int = 32
    d_hidden: int = 128
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512
    layernorm: bool = False
    init_scaling: float = 1.0
    lr: float = 3e-3
    weight_decay: float = 2.0
    beta2: float = 0.98
    batch_size: int = 0
    epochs: int = 2000
    log_every: int = 10
    split_seed: Optional[int] = None
    threshold: float = 0.9
    key_freqs: int = 5
    op: str = "add"

    @property
    def ops(self) -> tuple[str, ...]:
        """The operations trained, in the order given."""
        return tuple(o.strip() for o in self.op.split(","))

    def validate(self) -> None:
        self.validate_training()
        if self.model not in ("mlp", "transformer"):
            raise UserError(f"model must be 'mlp' or 'transformer', got {self.model!r}")
        if self.p < 3:
            raise UserError(f"p must be at least 3, got {self.p}")
        n_train = int(self.train_frac * self.p**2)
        if not (0 < self.train_frac < 1) or n_train < 1 or n_train >= self.p**2:
            raise UserError(f"train_frac must leave both splits non-empty, got {self.train_frac}")
        if self.model == "transformer" and self.d_model % self.n_heads:
            raise UserError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        for name in ("d_embed", "d_hidden", "d_model", "n_heads", "d_mlp"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be positive, got {getattr(self, name)}")
        if self.batch_size < 0:
            raise UserError(f"batch_size must be >= 0 (0 = full batch), got {self.batch_size}")
        if self.key_freqs < 1:
            raise UserError(f"key_freqs must be at least 1, got {self.key_freqs}")
        ops = self.ops
        bad = [o for o in ops if o not in OPS]
        if bad or not ops or len(set(ops)) != len(ops):
            raise UserError(f"op must be one or more of {', '.join(OPS)}, comma-separated without repeats, got "
                            f"{self.op!r}")
        if {"mul", "div"} & set(ops) and not _is_prime(self.p):
            raise UserError(f"op mul and div need a prime p (a multiplicative group), got p = {self.p}")

    @property
    def n_train(self) -> int:
        """Training examples per run (each operation's share rounded down, summed)."""
        return sum(int(self.train_frac * op_rows(self.p, o)) for o in self.ops)

    @property
    def n_rows(self) -> int:
        """Examples of every operation together."""
        return sum(op_rows(self.p, o) for o in self.ops)


PRESETS: dict[str, dict[str, Any]] = {
    # Groks on a laptop CPU. With weight decay 2 (vs 1 in PERF-NOTES' prototype) seeds 0-39
    # memorise by epoch ~250 and reach val_acc 0.99 between ~750 and ~1,550 epochs, so 2,000
    # epochs hold every seed's grokking at two thirds of the time (bench/RESULTS.md).
    "default": {},
    # The paper's LayerNorm contrast on a CPU budget (issue 9, bench/search_contrast.py "t59f"):
    # a small 1-layer transformer, p = 59, half the pairs for training, AdamW 1e-3 with weight
    # decay 2. Without LN (full batch, 2,000 epochs) every seed groks, after a memorisation
    # plateau of very different lengths; with --layernorm (batch 256, 400 epochs) every seed
    # generalises within ~100 epochs. 40 seeds of each: ~5-9 min and ~2.5 min on 2 cores.
    "contrast": dict(
        model="transformer",
        p=59,
        train_frac=0.5,
        d_model=64,
        n_heads=4,
        d_mlp=256,
        lr=1e-3,
        weight_decay=2.0,
        beta1=0.9,
        beta2=0.999,
        batch_size=0,
        epochs=2000,
        log_every=10,
    ),
    # Co-grokking: addition and subtraction mod 59 trained together by one MLP (an operation
    # embedding, one shared output layer; docs/collect.md). Twice the default's hidden width: with
    # 128 neurons the two operations memorise but generalise slowly. 40 of 40 seeds co-grok, between
    # epochs 1,040 and 2,100, the two operations within a median 35 epochs of each other
    # (docs/results.md); with multiplication added they had not by 3,000.
    "cogrok": dict(op="add,sub", d_hidden=256, epochs=3000),
    # reference.md A1: Nanda et al.'s 1-layer transformer as the reference trains it.
    "paper": dict(
        model="transformer",
        p=113,
        train_frac=0.3,
        d_model=128,
        n_heads=4,
        d_mlp=512,
        lr=1e-3,
        weight_decay=1.0,
        beta1=0.9,
        beta2=0.999,
        batch_size=2048,
        epochs=10000,
        log_every=10,
    ),
}


# --------------------------------------------------------------------------- data


OPS = ("add", "sub", "mul", "div")


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % k for k in range(2, int(n**0.5) + 1))


def op_rows(p: int, op: str) -> int:
    """Examples of one operation: every pair (a, b), and for ``div`` those with b ≠ 0."""
    return p * (p - 1) if op == "div" else p * p


def pair_table(p: int, op: str = "add") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The inputs (a, b) of one operation in row-major order and their answers mod p."""
    a = torch.arange(p).repeat_interleave(p)
    b = torch.arange(p).repeat(p)
    if op == "div":
        keep = b != 0
        a, b = a[keep], b[keep]
        inv = torch.tensor([pow(int(x), p - 2, p) if x else 0 for x in range(p)])  # Fermat: b^(p−2) = b⁻¹
        return a, b, (a * inv[b]) % p
    y = {"add": a + b, "sub": a - b, "mul": a * b}[op]
    return a, b, y % p


def op_table(p: int, ops) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every operation's rows one after the other: ``a, b, op index, answer``."""
    parts = [pair_table(p, o) for o in ops]
    idx = torch.cat([torch.full_like(a, i) for i, (a, _, _) in enumerate(parts)])
    return (torch.cat([x[0] for x in parts]), torch.cat([x[1] for x in parts]), idx,
            torch.cat([x[2] for x in parts]))


def split_indices(p: int, n_train: int, split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation row indices into :func:`pair_table` for one split seed."""
    perm = np.random.Generator(np.random.PCG64(split_seed)).permutation(p * p)
    return np.sort(perm[:n_train]), np.sort(perm[n_train:])


def split_ops(cfg: "ModAddConfig", split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation row indices into :func:`op_table`: each operation's rows split on their
    own (``train_frac``, rounded down). A single ``add`` study splits exactly as before operations
    existed (:func:`split_indices`)."""
    if cfg.ops == ("add",):
        return split_indices(cfg.p, cfg.n_train, split_seed)
    train, val, start = [], [], 0
    for i, o in enumerate(cfg.ops):
        n = op_rows(cfg.p, o)
        seed = np.random.SeedSequence(split_seed, spawn_key=(i,)) if len(cfg.ops) > 1 else split_seed
        perm = np.random.Generator(np.random.PCG64(seed)).permutation(n)
        k = int(cfg.train_frac * n)
        train.append(np.sort(perm[:k]) + start)
        val.append(np.sort(perm[k:]) + start)
        start += n
    return np.concatenate(train), np.concatenate(val)


# --------------------------------------------------------------------------- models


def _gather_rows(table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``out[s, i] = table[s, idx[s, i]]`` for ``table (S, V, ...)`` and ``idx (S, N)``."""
    s, v = table.shape[:2]
    flat = table.reshape(s * v, *table.shape[2:])
    offs = (torch.arange(s, device=idx.device) * v)[:, None]
    return flat.index_select(0, (idx + offs).reshape(-1)).reshape(*idx.shape, *table.shape[2:])


def _layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # w, b: (S, 1, d), broadcast over rows; eps as torch's default LayerNorm.
    return F.layer_norm(x, x.shape[-1:], eps=1e-5) * w + b


def init_mlp(cfg: ModAddConfig, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """One seed's MLP parameters: E ~ N(0,1), W1 ~ N(0, 1/fan_in), W2 ~ N(0, 1/hidden), zero biases."""
    p, d, h = cfg.p, cfg.d_embed, cfg.d_hidden
    n_in = 2 * d if len(cfg.ops) == 1 else 3 * d  # several operations: an operation embedding too
    params = {
        "E": normal_((p, d), 1.0, gen),
        "W1": normal_((h, n_in), 1 / math.sqrt(n_in), gen),
        "b1": torch.zeros(1, h),
        "W2": normal_((p, h), 1 / math.sqrt(h), gen),
        "b2": torch.zeros(1, p),
    }
    if len(cfg.ops) > 1:
        params["O"] = normal_((len(cfg.ops), d), 1.0, gen)
    return {k: v * cfg.init_scaling for k, v in params.items()}


def mlp_logits(P: dict[str, torch.Tensor], a: torch.Tensor, b: torch.Tensor, d: int,
               op: torch.Tensor | None = None) -> torch.Tensor:
    """Batched MLP logits ``(S, N, p)`` for operand indices ``a, b`` of shape ``(S, N)``."""
    return torch.baddbmm(P["b2"], mlp_hidden(P, a, b, d, op), P["W2"].transpose(1, 2))


def init_transformer(cfg: ModAddConfig, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """One seed's transformer parameters, initialised as the reference (reference.md A1)."""
    d, H, dm, p = cfg.d_model, cfg.n_heads, cfg.d_mlp, cfg.p
    dh, vocab = d // H, p + len(cfg.ops)  # the numbers, then one "=" token per operation
    s = 1 / math.sqrt(d)
    params = {
        "W_E": normal_((vocab, d), s, gen),
        "W_pos": normal_((3, d), s, gen),
        "W_K": normal_((H, dh, d), s, gen),
        "W_Q": normal_((H, dh, d), s, gen),
        "W_V": normal_((H, dh, d), s, gen),
        "W_O": normal_((d, H * dh), s, gen),
        "W_in": normal_((dm, d), s, gen),
        "b_in": torch.zeros(1, dm),
        "W_out": normal_((d, dm), s, gen),
        "b_out": torch.zeros(1, d),
        "W_U": normal_((d, vocab), 1 / math.sqrt(vocab), gen),
    }
    if cfg.layernorm:
        params.update(
            ln1_w=torch.ones(1, d), ln1_b=torch.zeros(1, d), ln2_w=torch.ones(1, d), ln2_b=torch.zeros(1, d)
        )
    return {k: v * cfg.init_scaling for k, v in params.items()}


def transformer_parts(P: dict[str, torch.Tensor], a: torch.Tensor, b: torch.Tensor, cfg: ModAddConfig,
                      op: torch.Tensor | None = None):
    """The residual stream after attention (and its LayerNorm) and the MLP's post-ReLU activations
    at the last position of ``[a, b, =]``: ``(resid (S, N, d), hidden (S, N, d_mlp))``. With several
    operations ``op`` (S, N) picks each example's ``=`` token."""
    p, H = cfg.p, cfg.n_heads
    WE, pos = P["W_E"], P["W_pos"]
    S, d = WE.shape[0], WE.shape[-1]
    dh = d // H
    n = a.shape[1]
    x0 = WE[:, :p] + pos[:, 0:1]  # (S, p, d): residual at position 0 for every a
    x1 = WE[:, :p] + pos[:, 1:2]  # position 1 for every b
    WV = P["W_V"].reshape(S, H * dh, d)
    v0 = torch.bmm(x0, WV.transpose(1, 2)).reshape(S, p, H, dh)  # value tables
    v1 = torch.bmm(x1, WV.transpose(1, 2)).reshape(S, p, H, dh)
    if len(cfg.ops) == 1:
        x2 = WE[:, p] + pos[:, 2]  # (S, d): the "=" token, the same for every example
        q = torch.einsum("shed,sd->she", P["W_Q"], x2)  # (S, H, dh), one query per seed
        kq = torch.einsum("shed,she->shd", P["W_K"], q) / math.sqrt(dh)  # key·query folded: (S, H, d)
        s0 = torch.einsum("spd,shd->sph", x0, kq)  # attention score tables (S, p, H)
        s1 = torch.einsum("spd,shd->sph", x1, kq)
        s2 = torch.einsum("sd,shd->sh", x2, kq)
        v2 = torch.bmm(x2[:, None], WV.transpose(1, 2)).reshape(S, 1, H, dh)
        scores = torch.stack([_gather_rows(s0, a), _gather_rows(s1, b), s2[:, None].expand(S, n, H)], dim=-1)
        w = torch.softmax(scores, dim=-1)  # (S, N, H, 3); the last position sees all three (causal)
        z = w[..., 0:1] * _gather_rows(v0, a) + w[..., 1:2] * _gather_rows(v1, b) + w[..., 2:3] * v2
        resid = x2[:, None] + torch.bmm(z.reshape(S, n, H * dh), P["W_O"].transpose(1, 2))
    else:
        m = len(cfg.ops)  # one query per operation: tables over (operation, operand), gathered per example
        x2 = WE[:, p:p + m] + pos[:, 2:3]  # (S, m, d)
        q = torch.einsum("shed,smd->smhe", P["W_Q"], x2)
        kq = torch.einsum("shed,smhe->smhd", P["W_K"], q) / math.sqrt(dh)  # (S, m, H, d)
        s0 = torch.einsum("spd,smhd->smph", x0, kq).reshape(S, m * p, H)
        s1 = torch.einsum("spd,smhd->smph", x1, kq).reshape(S, m * p, H)
        s2 = torch.einsum("smd,smhd->smh", x2, kq)
        v2 = torch.bmm(x2, WV.transpose(1, 2)).reshape(S, m, H, dh)
        scores = torch.stack([_gather_rows(s0, op * p + a), _gather_rows(s1, op * p + b), _gather_rows(s2, op)],
                             dim=-1)
        w = torch.softmax(scores, dim=-1)
        z = w[..., 0:1] * _gather_rows(v0, a) + w[..., 1:2] * _gather_rows(v1, b) + w[..., 2:3] * _gather_rows(v2, op)
        resid = _gather_rows(x2, op) + torch.bmm(z.reshape(S, n, H * dh), P["W_O"].transpose(1, 2))
    if cfg.layernorm:
        resid = _layer_norm(resid, P["ln1_w"], P["ln1_b"])
    hidden = torch.relu(torch.baddbmm(P["b_in"], resid, P["W_in"].transpose(1, 2)))
    return resid, hidden


def transformer_readout(P: dict[str, torch.Tensor], resid: torch.Tensor, hidden: torch.Tensor,
                        cfg: ModAddConfig) -> torch.Tensor:
    """Logits ``(S, N, p + 1)`` from the post-attention residual and the MLP's activations."""
    out = resid + torch.baddbmm(P["b_out"], hidden, P["W_out"].transpose(1, 2))
    if cfg.layernorm:
        out = _layer_norm(out, P["ln2_w"], P["ln2_b"])
    return torch.bmm(out, P["W_U"])


def transformer_logits(P: dict[str, torch.Tensor], a: torch.Tensor, b: torch.Tensor, cfg: ModAddConfig,
                       op: torch.Tensor | None = None) -> torch.Tensor:
    """Batched transformer logits ``(S, N, p + operations)`` at the last position of ``[a, b, =]``."""
    resid, hidden = transformer_parts(P, a, b, cfg, op)
    return transformer_readout(P, resid, hidden, cfg)


def mlp_hidden(P: dict[str, torch.Tensor], a: torch.Tensor, b: torch.Tensor, d: int,
               op: torch.Tensor | None = None) -> torch.Tensor:
    """The MLP's post-ReLU activations ``(S, N, H)`` for operand indices ``a, b`` ``(S, N)`` (and the
    operation ``op`` of each example, with several operations)."""
    E, W1 = P["E"], P["W1"]
    # First layer applied to the p-row embedding table once, then gathered per example.
    ta = torch.bmm(E, W1[:, :, :d].transpose(1, 2))  # (S, p, H)
    tb = torch.bmm(E, W1[:, :, d:2 * d].transpose(1, 2))
    pre = _gather_rows(ta, a) + _gather_rows(tb, b)
    if "O" in P:
        pre = pre + _gather_rows(torch.bmm(P["O"], W1[:, :, 2 * d:].transpose(1, 2)), op)
    return torch.relu(pre + P["b1"])


# --------------------------------------------------------------------------- problem


class ModAddProblem(RowProblem):
    """S seeds of modular addition as one batched model, trained with one AdamW."""

    def __init__(self, cfg: ModAddConfig, seeds: list[RunSeeds], device: torch.device):
        self.cfg = cfg
        self.device = device
        init = init_mlp if cfg.model == "mlp" else init_transformer
        per_seed = [init(cfg, torch.Generator().manual_seed(rs.init)) for rs in seeds]
        self.params = stack_params(per_seed, device)
        self.optimizer = torch.optim.AdamW(
            list(self.params.values()),
            lr=cfg.lr,
            betas=(cfg.beta1, cfg.beta2),
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
            foreach=True,
        )
        self.order_generators = [torch.Generator().manual_seed(rs.order) for rs in seeds]
        a, b, op, y = op_table(cfg.p, cfg.ops)
        self._a, self._b, self._op, self._y = a.to(device), b.to(device), op.to(device), y.to(device)
        # where each operation's rows start in the table, and how many of each are training rows
        sizes = [op_rows(cfg.p, o) for o in cfg.ops]
        self._op_start = np.concatenate([[0], np.cumsum(sizes)]).tolist()
        self._op_train = [int(cfg.train_frac * n) for n in sizes]
        splits = [split_ops(cfg, rs.split) for rs in seeds]
        self._init_rows(
            torch.from_numpy(np.stack([s[0] for s in splits])).to(device),
            torch.from_numpy(np.stack([s[1] for s in splits])).to(device),
            cfg.batch_size,
        )

    def _logits(self, rows: torch.Tensor) -> torch.Tensor:
        a, b, op = self._a[rows], self._b[rows], self._op[rows]
        if self.cfg.model == "mlp":
            return mlp_logits(self.params, a, b, self.cfg.d_embed, op)
        return transformer_logits(self.params, a, b, self.cfg, op)

    def _hidden_and_readout(self, P: dict[str, torch.Tensor], a: torch.Tensor, b: torch.Tensor,
                            op: torch.Tensor | None = None):
        """The activations feeding the logits for operands ``a, b`` (S, N), the map
        ``readout(h, rows)`` from activations at rows ``rows`` (S, n) of those to the logits there
        (the rest of the network as it is; ``h`` may be one row, broadcast), and, where that map is
        affine in ``h`` (no LayerNorm after the MLP), its linear part ``linear(h)``."""
        cfg = self.cfg
        if cfg.model == "mlp":
            return (mlp_hidden(P, a, b, cfg.d_embed, op),
                    lambda h, rows: torch.baddbmm(P["b2"], h, P["W2"].transpose(1, 2)),
                    lambda h: torch.bmm(h, P["W2"].transpose(1, 2)))
        resid, hidden = transformer_parts(P, a, b, cfg, op)

        def readout(h, rows):
            return transformer_readout(P, torch.gather(resid, 1, rows[:, :, None].expand(-1, -1, resid.shape[-1])), h,
                                       cfg)

        def linear(h):
            return torch.bmm(torch.bmm(h, P["W_out"].transpose(1, 2)), P["W_U"])

        return hidden, readout, (None if cfg.layernorm else linear)

    @torch.no_grad()
    def progress_metrics(self) -> dict[str, torch.Tensor]:
        """The Fourier progress measures of every seed (:mod:`latent.collect.progress`)."""
        cfg, p = self.cfg, self.cfg.p
        P = {k: v.detach() for k, v in self.params.items()}
        S = self.n_seeds
        if cfg.model == "mlp":
            embed, unembed, width = P["E"], P["W2"], cfg.d_hidden
        else:
            embed, unembed, width = P["W_E"][:, :p], P["W_U"][:, :, :p].transpose(1, 2), cfg.d_mlp
        e_en, u_en = frequency_energy(embed.double(), p), frequency_energy(unembed.double(), p)
        out = {"embed_gini": gini(e_en.sqrt()), "unembed_gini": gini(u_en.sqrt()),
               "embed_top_share": top_share(e_en, cfg.key_freqs), "unembed_top_share": top_share(u_en, cfg.key_freqs)}
        ops = cfg.ops
        per_op = {o: ([], [], []) for o in ops}
        bases = {}
        for i, o in enumerate(ops):
            lo_row, hi_row = self._op_start[i], self._op_start[i + 1]
            combo, valid = op_combination(self._a[lo_row:hi_row], self._b[lo_row:hi_row], p, o)
            bases[o] = cyclic_basis(combo, op_group(p, o)[1], valid)
        rows_max = max(self._op_start[i + 1] - self._op_start[i] for i in range(len(ops)))
        chunk = max(1, (1 << 24) // (rows_max * width))  # seeds per pass: activations of all pairs, ≤ 64 MB
        t_off = np.concatenate([[0], np.cumsum(self._op_train)]).tolist()
        for lo in range(0, S, chunk):
            Pc = {k: v[lo:lo + chunk] for k, v in P.items()}
            n = next(iter(Pc.values())).shape[0]
            for i, o in enumerate(ops):
                lo_row, hi_row = self._op_start[i], self._op_start[i + 1]
                sl = slice(lo_row, hi_row)
                acts, readout, linear = self._hidden_and_readout(Pc, self._a[sl].expand(n, -1),
                                                                 self._b[sl].expand(n, -1), self._op[sl].expand(n, -1))
                # this operation's training rows, as rows of its own block (splits are per operation)
                train = self.train_idx[lo:lo + chunk, t_off[i]:t_off[i + 1]] - lo_row
                r, e, k = restricted_excluded(acts, readout, self._y[sl], train, p, cfg.key_freqs, bases[o], linear)
                for store, v in zip(per_op[o], (r, e, k)):
                    store.append(v)
        res = {o: tuple(torch.cat(v) for v in per_op[o]) for o in ops}
        weights = torch.tensor(self._op_train, dtype=torch.float64)
        weights = weights / weights.sum()
        out["restricted_loss"] = sum(w * res[o][0] for w, o in zip(weights, ops))
        out["excluded_loss"] = sum(w * res[o][1] for w, o in zip(weights, ops))
        for o in ops:
            tag = "" if len(ops) == 1 else f"{o}_"
            if len(ops) > 1:
                out[f"restricted_loss_{o}"], out[f"excluded_loss_{o}"] = res[o][0], res[o][1]
            for i in range(res[o][2].shape[1]):
                out[f"key_freq_{tag}{i + 1}"] = res[o][2][:, i].double()
        if {"mul", "div"} & set(ops):
            order = torch.argsort(discrete_log(p)[1:]) + 1  # x = g^0, g^1, ...: the multiplicative circle
            m_en = frequency_energy(embed.double()[:, order], p - 1)
            out["embed_gini_mul"] = gini(m_en.sqrt())
        out["sum_sq_weights"] = sum_sq(P)
        share = e_en / e_en.sum(-1, keepdim=True).clamp_min(1e-300)
        for k in range(share.shape[1]):
            out[f"embed_f{k + 1:02d}"] = share[:, k]
        return out

    @torch.no_grad()
    def op_metrics(self) -> dict[str, torch.Tensor]:
        """Each operation's training and validation loss and accuracy (the ``ops`` group)."""
        out = {}
        t_off = np.concatenate([[0], np.cumsum(self._op_train)]).tolist()
        v_sizes = [self._op_start[i + 1] - self._op_start[i] - self._op_train[i] for i in range(len(self.cfg.ops))]
        v_off = np.concatenate([[0], np.cumsum(v_sizes)]).tolist()
        for i, o in enumerate(self.cfg.ops):
            for split, idx, off in (("train", self.train_idx, t_off), ("val", self.val_idx, v_off)):
                rows = idx[:, off[i]:off[i + 1]]
                loss = torch.zeros(self.n_seeds, dtype=torch.float64, device=rows.device)
                correct = torch.zeros_like(loss)
                for chunk in rows.split(self.EVAL_CHUNK, dim=1):
                    l, c = self._loss_acc(chunk)
                    loss += l.double()
                    correct += c.double()
                out[f"{split}_loss_{o}"], out[f"{split}_acc_{o}"] = loss / rows.shape[1], correct / rows.shape[1]
        return out

    @torch.no_grad()
    def probe(self) -> Probe:
        """Outputs on each seed's probe rows (:func:`latent.collect.function_space.probe_rows`)."""
        if not hasattr(self, "_probe"):
            self._probe = probe_rows(self.val_idx)
        rows = self._probe
        P = {k: v.detach() for k, v in self.params.items()}
        a, b, op = self._a[rows], self._b[rows], self._op[rows]
        if self.cfg.model == "mlp":
            hidden = mlp_hidden(P, a, b, self.cfg.d_embed, op)
            logits, penultimate = torch.baddbmm(P["b2"], hidden, P["W2"].transpose(1, 2)), hidden
        else:
            resid, hidden = transformer_parts(P, a, b, self.cfg, op)
            penultimate = resid + torch.baddbmm(P["b_out"], hidden, P["W_out"].transpose(1, 2))
            if self.cfg.layernorm:
                penultimate = _layer_norm(penultimate, P["ln2_w"], P["ln2_b"])
            logits = torch.bmm(penultimate, P["W_U"])
        y = self._y[rows]
        S, n, c = logits.shape
        losses = F.cross_entropy(logits.reshape(S * n, c), y.reshape(-1), reduction="none").view(S, n)
        return Probe(logits, penultimate, losses)

    def _loss_acc(self, rows: torch.Tensor, train: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        return cross_entropy_sums(self._logits(rows), self._y[rows])

    @torch.no_grad()
    def snapshot_arrays(self) -> dict[str, torch.Tensor]:
        """The token embedding and the unembedding as the model holds them (:meth:`ModAddTask.snapshot_axes`):
        the MLP's ``E`` (p, d_embed) and ``W2`` (p, d_hidden); the transformer's ``W_E`` (vocab, d_model)
        and ``W_U`` (d_model, vocab), vocab = p numbers then one ``=`` token per operation."""
        if self.cfg.model == "mlp":
            return {"embed": self.params["E"].detach(), "unembed": self.params["W2"].detach()}
        return {"embed": self.params["W_E"].detach(), "unembed": self.params["W_U"].detach()}

    def weight_groups(self) -> WeightGroups:
        P = {k: v.detach() for k, v in self.params.items()}
        if self.cfg.model == "mlp":
            # The embedding is excluded, as the reference excludes embedding matrices.
            return WeightGroups(
                matrices=[P["W1"][:, None], P["W2"][:, None]],
                weights=[P["W1"], P["W2"]],
                biases=[P["b1"], P["b2"]],
            )
        # Q, K, V split per head (each d_head × d_model), then W_O, W_in, W_out: 4H + 3 matrices.
        qkv = torch.cat([P["W_K"], P["W_Q"], P["W_V"]], dim=1)
        return WeightGroups(
            matrices=[qkv, P["W_O"][:, None], P["W_in"][:, None], P["W_out"][:, None]],
            weights=[P["W_K"], P["W_Q"], P["W_V"], P["W_O"], P["W_in"], P["W_out"]],
            biases=[P["b_in"], P["b_out"]],
        )


class ModAddTask(Task):
    name = "modadd"
    config_class = ModAddConfig
    presets = PRESETS
    variants = (
        # the transformer with post-LayerNorm (reference.md A1: the stabilised side of the contrast)
        Variant("layernorm", sets={"layernorm": True}, suffix="-ln",
                preset_defaults={
                    # the paper's stabilised setting (reference.md A1): batch 256, and runs of ~300
                    # epochs (checkpoints 0-290, 30 points), not the 10,000 of the unstabilised runs
                    "paper": {"batch_size": 256, "epochs": 290},
                    # the stabilised side of the contrast preset (bench/search_contrast.py "t59f")
                    "contrast": {"batch_size": 256, "epochs": 400},
                }),
    )
    problem_class = ModAddProblem
    step_unit = "epoch"

    def metric_groups(self, cfg: ModAddConfig) -> dict[str, list[str]]:
        groups = {"progress": progress_columns(cfg.p, cfg.key_freqs, cfg.ops), **super().metric_groups(cfg)}
        if len(cfg.ops) > 1:
            groups["ops"] = [f"{split}_{what}_{o}" for o in cfg.ops for split in ("train", "val")
                             for what in ("loss", "acc")]
        return groups

    def snapshot_axes(self, cfg: ModAddConfig) -> dict[str, tuple[str, str]]:
        # the MLP: E (p, d_embed), logits = hidden · W2ᵀ + b2 with W2 (p, d_hidden) (an operation's own
        # embedding O, with several operations, is not a token embedding and is not stored); the
        # transformer: W_E (vocab, d_model), logits = residual · W_U with W_U (d_model, vocab)
        if cfg.model == "mlp":
            return {"embed": ("vocab", "d_embed"), "unembed": ("vocab", "d_hidden")}
        return {"embed": ("vocab", "d_model"), "unembed": ("d_model", "vocab")}

    def describe_data(self, cfg: ModAddConfig, data: Any = None) -> dict[str, Any]:
        if cfg.ops == ("add",):
            a, b, y = pair_table(cfg.p)
            return {
                "source": "generated",
                "description": f"all {cfg.p}² pairs (a, b) -> (a + b) mod {cfg.p}",
                "n_train": cfg.n_train,
                "n_val": cfg.p**2 - cfg.n_train,
                "fingerprint": fingerprint({"a": a.numpy(), "b": b.numpy(), "y": y.numpy()}),
            }
        a, b, op, y = op_table(cfg.p, cfg.ops)
        words = {"add": "a + b", "sub": "a - b", "mul": "a * b", "div": "a / b (b != 0)"}
        return {
            "source": "generated",
            "description": "; ".join(f"{words[o]} mod {cfg.p}" for o in cfg.ops)
                           + (", trained together" if len(cfg.ops) > 1 else ""),
            "n_train": cfg.n_train,
            "n_val": cfg.n_rows - cfg.n_train,
            "fingerprint": fingerprint({"a": a.numpy(), "b": b.numpy(), "op": op.numpy(), "y": y.numpy()}),
        }
