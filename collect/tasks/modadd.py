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
from ..progress import frequency_energy, gini, progress_columns, restricted_excluded, sum_sq, top_share
from ..seeds import RunSeeds
from .base import RowProblem, Task, cross_entropy_sums, normal_, stack_params

@dataclass(frozen=True)
class ModAddConfig:
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
        :mod:`collect.progress`); at most (p − 1) / 2 are used.
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
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-8
    batch_size: int = 0
    epochs: int = 2000
    log_every: int = 10
    split_seed: Optional[int] = None
    threshold: float = 0.9
    key_freqs: int = 5

    def validate(self) -> None:
        if self.model not in ("mlp", "transformer"):
            raise UserError(f"model must be 'mlp' or 'transformer', got {self.model!r}")
        if self.p < 3:
            raise UserError(f"p must be at least 3, got {self.p}")
        n_train = int(self.train_frac * self.p**2)
        if not (0 < self.train_frac < 1) or n_train < 1 or n_train >= self.p**2:
            raise UserError(f"train_frac must leave both splits non-empty, got {self.train_frac}")
        if self.model == "transformer" and self.d_model % self.n_heads:
            raise UserError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        for name in ("d_embed", "d_hidden", "d_model", "n_heads", "d_mlp", "epochs", "log_every"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be positive, got {getattr(self, name)}")
        if self.batch_size < 0:
            raise UserError(f"batch_size must be >= 0 (0 = full batch), got {self.batch_size}")
        if self.lr <= 0:
            raise UserError(f"lr must be positive, got {self.lr}")
        if self.key_freqs < 1:
            raise UserError(f"key_freqs must be at least 1, got {self.key_freqs}")

    @property
    def n_train(self) -> int:
        return int(self.train_frac * self.p**2)


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


def pair_table(p: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All p² inputs (a, b) in row-major order and their labels (a + b) mod p."""
    a = torch.arange(p).repeat_interleave(p)
    b = torch.arange(p).repeat(p)
    return a, b, (a + b) % p


def split_indices(p: int, n_train: int, split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation row indices into :func:`pair_table` for one split seed."""
    perm = np.random.Generator(np.random.PCG64(split_seed)).permutation(p * p)
    return np.sort(perm[:n_train]), np.sort(perm[n_train:])


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
    params = {
        "E": normal_((p, d), 1.0, gen),
        "W1": normal_((h, 2 * d), 1 / math.sqrt(2 * d), gen),
        "b1": torch.zeros(1, h),
        "W2": normal_((p, h), 1 / math.sqrt(h), gen),
        "b2": torch.zeros(1, p),
    }
    return {k: v * cfg.init_scaling for k, v in params.items()}


def mlp_logits(P: dict[str, torch.Tensor], a: torch.Tensor, b: torch.Tensor, d: int) -> torch.Tensor:
    """Batched MLP logits ``(S, N, p)`` for operand indices ``a, b`` of shape ``(S, N)``."""
    return torch.baddbmm(P["b2"], mlp_hidden(P, a, b, d), P["W2"].transpose(1, 2))


def init_transformer(cfg: ModAddConfig, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """One seed's transformer parameters, initialised as the reference (reference.md A1)."""
    d, H, dm, p = cfg.d_model, cfg.n_heads, cfg.d_mlp, cfg.p
    dh, vocab = d // H, p + 1
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


def transformer_parts(P: dict[str, torch.Tensor], a: torch.Tensor, b: torch.Tensor, cfg: ModAddConfig):
    """The residual stream after attention (and its LayerNorm) and the MLP's post-ReLU activations
    at the last position of ``[a, b, =]``: ``(resid (S, N, d), hidden (S, N, d_mlp))``."""
    p, H = cfg.p, cfg.n_heads
    WE, pos = P["W_E"], P["W_pos"]
    S, d = WE.shape[0], WE.shape[-1]
    dh = d // H
    x0 = WE[:, :p] + pos[:, 0:1]  # (S, p, d): residual at position 0 for every a
    x1 = WE[:, :p] + pos[:, 1:2]  # position 1 for every b
    x2 = WE[:, p] + pos[:, 2]  # (S, d): the "=" token, the same for every example
    q = torch.einsum("shed,sd->she", P["W_Q"], x2)  # (S, H, dh), one query per seed
    kq = torch.einsum("shed,she->shd", P["W_K"], q) / math.sqrt(dh)  # key·query folded: (S, H, d)
    s0 = torch.einsum("spd,shd->sph", x0, kq)  # attention score tables (S, p, H)
    s1 = torch.einsum("spd,shd->sph", x1, kq)
    s2 = torch.einsum("sd,shd->sh", x2, kq)
    WV = P["W_V"].reshape(S, H * dh, d)
    v0 = torch.bmm(x0, WV.transpose(1, 2)).reshape(S, p, H, dh)  # value tables
    v1 = torch.bmm(x1, WV.transpose(1, 2)).reshape(S, p, H, dh)
    v2 = torch.bmm(x2[:, None], WV.transpose(1, 2)).reshape(S, 1, H, dh)
    n = a.shape[1]
    scores = torch.stack([_gather_rows(s0, a), _gather_rows(s1, b), s2[:, None].expand(S, n, H)], dim=-1)
    w = torch.softmax(scores, dim=-1)  # (S, N, H, 3); the last position sees all three (causal)
    z = w[..., 0:1] * _gather_rows(v0, a) + w[..., 1:2] * _gather_rows(v1, b) + w[..., 2:3] * v2
    resid = x2[:, None] + torch.bmm(z.reshape(S, n, H * dh), P["W_O"].transpose(1, 2))
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


def transformer_logits(P: dict[str, torch.Tensor], a: torch.Tensor, b: torch.Tensor, cfg: ModAddConfig) -> torch.Tensor:
    """Batched transformer logits ``(S, N, p + 1)`` at the last position of ``[a, b, =]``."""
    resid, hidden = transformer_parts(P, a, b, cfg)
    return transformer_readout(P, resid, hidden, cfg)


def mlp_hidden(P: dict[str, torch.Tensor], a: torch.Tensor, b: torch.Tensor, d: int) -> torch.Tensor:
    """The MLP's post-ReLU activations ``(S, N, H)`` for operand indices ``a, b`` ``(S, N)``."""
    E, W1 = P["E"], P["W1"]
    # First layer applied to the p-row embedding table once, then gathered per example.
    ta = torch.bmm(E, W1[:, :, :d].transpose(1, 2))  # (S, p, H)
    tb = torch.bmm(E, W1[:, :, d:].transpose(1, 2))
    return torch.relu(_gather_rows(ta, a) + _gather_rows(tb, b) + P["b1"])


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
        a, b, y = pair_table(cfg.p)
        self._a, self._b, self._y = a.to(device), b.to(device), y.to(device)
        splits = [split_indices(cfg.p, cfg.n_train, rs.split) for rs in seeds]
        self._init_rows(
            torch.from_numpy(np.stack([s[0] for s in splits])).to(device),
            torch.from_numpy(np.stack([s[1] for s in splits])).to(device),
            cfg.batch_size,
        )

    def _logits(self, rows: torch.Tensor) -> torch.Tensor:
        a, b = self._a[rows], self._b[rows]
        if self.cfg.model == "mlp":
            return mlp_logits(self.params, a, b, self.cfg.d_embed)
        return transformer_logits(self.params, a, b, self.cfg)

    def _hidden_and_readout(self, P: dict[str, torch.Tensor], a: torch.Tensor, b: torch.Tensor):
        """The activations feeding the logits for operands ``a, b`` (S, N), and the map
        ``readout(h, rows)`` from activations at rows ``rows`` (S, n) of those to the logits there
        (the rest of the network as it is)."""
        cfg = self.cfg
        if cfg.model == "mlp":
            return mlp_hidden(P, a, b, cfg.d_embed), lambda h, rows: torch.baddbmm(P["b2"], h, P["W2"].transpose(1, 2))
        resid, hidden = transformer_parts(P, a, b, cfg)

        def readout(h, rows):
            return transformer_readout(P, torch.gather(resid, 1, rows[:, :, None].expand(-1, -1, resid.shape[-1])), h,
                                       cfg)

        return hidden, readout

    @torch.no_grad()
    def progress_metrics(self) -> dict[str, torch.Tensor]:
        """The Fourier progress measures of every seed (:mod:`collect.progress`)."""
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
        restricted, excluded, keys = [], [], []
        chunk = max(1, (1 << 24) // (p * p * width))  # seeds per pass: activations of all p² pairs, ≤ 64 MB
        for lo in range(0, S, chunk):
            Pc = {k: v[lo:lo + chunk] for k, v in P.items()}
            n = next(iter(Pc.values())).shape[0]
            acts, readout = self._hidden_and_readout(Pc, self._a.expand(n, -1), self._b.expand(n, -1))
            r, e, k = restricted_excluded(acts, readout, self._y, self.train_idx[lo:lo + chunk], p, cfg.key_freqs)
            restricted.append(r)
            excluded.append(e)
            keys.append(k)
        out["restricted_loss"], out["excluded_loss"] = torch.cat(restricted), torch.cat(excluded)
        out["sum_sq_weights"] = sum_sq(P)
        keys = torch.cat(keys)
        for i in range(keys.shape[1]):
            out[f"key_freq_{i + 1}"] = keys[:, i].double()
        share = e_en / e_en.sum(-1, keepdim=True).clamp_min(1e-300)
        for k in range(share.shape[1]):
            out[f"embed_f{k + 1:02d}"] = share[:, k]
        return out

    @torch.no_grad()
    def probe(self) -> Probe:
        """Outputs on each seed's probe rows (:func:`collect.function_space.probe_rows`)."""
        if not hasattr(self, "_probe"):
            self._probe = probe_rows(self.val_idx)
        rows = self._probe
        P = {k: v.detach() for k, v in self.params.items()}
        a, b = self._a[rows], self._b[rows]
        if self.cfg.model == "mlp":
            hidden = mlp_hidden(P, a, b, self.cfg.d_embed)
            logits, penultimate = torch.baddbmm(P["b2"], hidden, P["W2"].transpose(1, 2)), hidden
        else:
            resid, hidden = transformer_parts(P, a, b, self.cfg)
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
    problem_class = ModAddProblem
    step_unit = "epoch"

    def metric_groups(self, cfg: ModAddConfig) -> dict[str, list[str]]:
        return {"progress": progress_columns(cfg.p, cfg.key_freqs), **super().metric_groups(cfg)}

    def describe_data(self, cfg: ModAddConfig, data: Any = None) -> dict[str, Any]:
        a, b, y = pair_table(cfg.p)
        return {
            "source": "generated",
            "description": f"all {cfg.p}² pairs (a, b) -> (a + b) mod {cfg.p}",
            "n_train": cfg.n_train,
            "n_val": cfg.p**2 - cfg.n_train,
            "fingerprint": fingerprint({"a": a.numpy(), "b": b.numpy(), "y": y.numpy()}),
        }
