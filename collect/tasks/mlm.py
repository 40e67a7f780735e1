"""Masked language model: a small BERT-style encoder trained from scratch (reference.md A5, B4).

The reference does not train a masked LM: it reads the 5 released MultiBERTs seeds' public
checkpoints. This task trains many seeds of a small BERT with the same recipe on a local
corpus, so the same statistics can be collected for 40 seeds on a CPU.

Model (post-LN, as BERT): token + learned position embeddings → LayerNorm → ``n_layers``
encoder layers, each ``x = LN(x + Attn(x))``, ``x = LN(x + W_out·GELU(W_in·x + b_in) + b_out)``
with multi-head self-attention (Q, K, V and output projection with biases, scale 1/√d_head, no
causal mask) → the BERT MLM head (dense + GELU + LayerNorm, then the decoder tied to the token
embedding plus an output bias). Every weight ~ N(0, 0.02²), biases 0, LayerNorm 1/0 (BERT's
``initializer_range``).

Objective (BERT): in every training sequence each token other than ``[CLS]``/``[SEP]`` is
selected with probability ``mask_prob`` (0.15); a selected token becomes ``[MASK]`` with
probability 0.8, a random vocabulary word with 0.1 and stays itself with 0.1; the loss is the
cross-entropy of the original token at the selected positions. The selections are drawn per
seed from its order stream at every step (dynamic masking). Validation and train-evaluation
sequences are masked once, by the split stream, so their losses are comparable across
checkpoints. ``val_acc``/``train_acc`` are the accuracies at the selected positions.

Data (``source``): ``pydoc`` — the English help texts bundled with CPython
(``pydoc_data.topics``, ~65,000 words), the default; ``files`` — every ``*.txt`` under
``data_dir`` (``--data-dir``). The word stream is cut into ``[CLS] … [SEP]`` sequences of
``seq_len`` tokens; ``n_val`` of them are held out by the split seed, and the word-level
vocabulary (:class:`latent.collect.data.text.WordTokenizer`) is built from the training sequences only.

S seeds are one batched model: every weight has the seed on its leading axis and all products
are batched matmuls; the loss is the sum of the per-seed means, so each seed's gradient is its
own and one AdamW equals S optimisers. Learning rate: linear warm-up over ``warmup_steps``, then
linear decay to 0 at the last step (BERT's schedule), computed from the step count (resumable).
Checkpoints every ``log_every`` optimiser steps (``step_unit = "step"``).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F

from latent.errors import UserError

from ..data.text import CLS, MASK, SEP, SPECIALS, WordTokenizer, pydoc_topics, read_text_dir, split_words
from ..fingerprint import fingerprint
from ..function_space import Probe
from ..metrics import WeightGroups
from ..seeds import RunSeeds
from ..config import AdamWConfig
from .base import BatchedProblem, Task, stack_params

SOURCES = ("auto", "pydoc", "files")
LN_EPS = 1e-12  # BERT's layer_norm_eps
INIT_STD = 0.02  # BERT's initializer_range
EVAL_CHUNK = 64  # sequences per evaluation chunk


@dataclass(frozen=True)
class MlmConfig(AdamWConfig):
    """Masked-LM study config (every field can be set with ``--set key=value``).

    Attributes
    ----------
    source : {"auto", "pydoc", "files"}
        ``pydoc``: CPython's bundled help texts; ``files``: the ``*.txt`` files in ``data_dir``;
        ``auto``: ``files`` when ``data_dir`` is set, else ``pydoc``.
    data_dir : str or None
        Directory of UTF-8 ``*.txt`` files (``latent collect --data-dir``).
    vocab_size : int
        Vocabulary size including the 5 special tokens.
    seq_len : int
        Tokens per sequence, ``[CLS]`` and ``[SEP]`` included.
    n_val : int
        Sequences held out for validation.
    n_train : int
        Training sequences used (0: all the others).
    train_eval_size : int
        ``train_loss``/``train_acc`` are measured on this fixed, fixed-masked subset of the
        training sequences (0: all).
    d_model, n_layers, n_heads, d_ff : int
        Encoder width, depth, attention heads and feed-forward width.
    mask_prob : float
        Fraction of tokens selected for prediction (BERT: 0.15; 80/10/10 [MASK]/random/same).
    lr, weight_decay, beta1, beta2, eps : float
        AdamW hyper-parameters (peak learning rate). As in BERT, weight decay applies to weight
        matrices and embeddings only, not to biases or LayerNorm gains.
    warmup_steps : int
        Linear warm-up steps; then linear decay to 0 at the last step (``decay=false``: constant).
    decay : bool
        Linear decay after warm-up.
    batch_size : int
        Sequences per step per seed (the last batch of an epoch is smaller).
    epochs : int
        Training length in epochs.
    log_every : int
        Checkpoint interval in optimiser **steps**.
    split_seed : int
        Seeds the split stream: which sequences are held out, the vocabulary that follows from
        it, and the fixed masks of the evaluation sets. One for the whole study (the batched
        model needs one vocabulary).
    threshold : float
        Convergence: the first checkpoint with ``val_loss`` **below** the threshold.
    """

    source: str = "auto"
    data_dir: Optional[str] = None
    vocab_size: int = 1000
    seq_len: int = 32
    n_val: int = 128
    n_train: int = 0
    train_eval_size: int = 64
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int = 256
    mask_prob: float = 0.15
    eps: float = 1e-6
    warmup_steps: int = 100
    decay: bool = True
    batch_size: int = 16
    epochs: int = 6
    log_every: int = 20
    split_seed: int = 0
    threshold: float = 4.85

    def validate(self) -> None:
        self.validate_training()
        if self.source not in SOURCES:
            raise UserError(f"source must be one of {', '.join(SOURCES)}, got {self.source!r}")
        if self.data_dir is not None and self.source == "pydoc":
            raise UserError("data_dir (--data-dir) reads *.txt files; it does not apply to source='pydoc'")
        if self.source == "files" and self.data_dir is None:
            raise UserError("source=files needs the directory with the *.txt files: pass --data-dir DIR")
        for name in ("d_model", "n_layers", "n_heads", "d_ff", "n_val", "batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("n_train", "train_eval_size", "warmup_steps"):
            if getattr(self, name) < 0:
                raise UserError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise UserError(f"d_model ({self.d_model}) must be a multiple of n_heads ({self.n_heads})")
        if self.seq_len < 3:
            raise UserError(f"seq_len must be at least 3 ([CLS], a token, [SEP]), got {self.seq_len}")
        if self.vocab_size <= len(SPECIALS):
            raise UserError(f"vocab_size must exceed the {len(SPECIALS)} special tokens, got {self.vocab_size}")
        if not 0 < self.mask_prob < 1:
            raise UserError(f"mask_prob must be in (0, 1), got {self.mask_prob}")

    def resolved_source(self) -> str:
        if self.source != "auto":
            return self.source
        return "files" if self.data_dir is not None else "pydoc"


PRESETS: dict[str, dict[str, Any]] = {
    # Laptop CPU (docs/tasks.md has the measured times): CPython's help texts (~120k tokens),
    # a 2-layer, d=64, 4-head BERT with vocabulary 1,000 and 32-token sequences, AdamW 1e-3
    # with 100 warm-up steps and linear decay, batch 16, 6 epochs (1,218 steps), a checkpoint every
    # 20 steps. Validation loss falls fast from ln(1000) ≈ 6.9 to the unigram level (~5.1), then
    # slowly as context is learned, ending near 4.75: the threshold 4.85 is "slightly above the
    # final minimum" (the loss analogue of reference.md E1).
    "default": {},
    # BERT-base's shape and recipe (MultiBERTs: 12 layers, d 768, 12 heads, FFN 3072, sequence
    # 512, AdamW 1e-4, wd 0.01, 10k warm-up steps, batch 256) on the user's corpus (--data-dir).
    # Sized for an accelerator, not a laptop; MultiBERTs trained 2M steps on BooksCorpus+Wikipedia.
    # Threshold 1.7: the reference's notebook thresholds MultiBERTs' loss at 1.6-1.7 (reference.md E2).
    "paper": dict(source="files", vocab_size=30522, seq_len=512, d_model=768, n_layers=12, n_heads=12, d_ff=3072,
                  lr=1e-4, weight_decay=0.01, warmup_steps=10000, batch_size=256, epochs=40, log_every=1000,
                  n_val=1000, train_eval_size=1000, threshold=1.7),
}


# --------------------------------------------------------------------------- data


def split_stream(cfg: MlmConfig) -> int:
    """The study's split stream (seeded by ``split_seed``): held-out sequences and evaluation masks."""
    return RunSeeds.derive(0, cfg.split_seed).split


@functools.lru_cache(maxsize=1)
def _pydoc_words() -> tuple[str, ...]:
    return tuple(split_words(pydoc_topics()))


def _corpus(source: str, data_dir: Optional[str]) -> tuple[tuple[str, ...], str]:
    """The corpus as a word tuple and a description (files are read afresh every time)."""
    if source == "pydoc":
        return _pydoc_words(), "pydoc_data.topics: CPython's bundled English help texts"
    files = read_text_dir(data_dir)
    words: list[str] = []
    for _, text in files:
        words += split_words(text)
    root = Path(data_dir).expanduser().resolve()
    return tuple(words), f"{len(files)} *.txt file(s) under {root}"


@dataclass
class MlmData:
    """Token-id sequences ``(N, seq_len)`` of the training and validation splits, and the vocabulary."""

    train: np.ndarray
    val: np.ndarray
    tokenizer: WordTokenizer
    source: str
    description: str
    n_words: int
    unk_rate: float


def load_data(cfg: MlmConfig) -> MlmData:
    """Split the corpus into sequences, hold out ``n_val`` by the split seed, build the vocabulary
    from the training sequences and encode both splits."""
    source = cfg.resolved_source()
    words, description = _corpus(source, cfg.data_dir)
    body = cfg.seq_len - 2
    n_seq = len(words) // body
    if n_seq < cfg.n_val + 1:
        raise UserError(f"the corpus ({len(words)} tokens) gives {n_seq} sequences of {cfg.seq_len} tokens; "
                        f"n_val={cfg.n_val} leaves none for training (lower n_val or seq_len, or add text)")
    rng = np.random.Generator(np.random.PCG64(split_stream(cfg)))
    perm = rng.permutation(n_seq)
    val_idx, train_idx = np.sort(perm[: cfg.n_val]), np.sort(perm[cfg.n_val :])
    if cfg.n_train:
        if cfg.n_train > len(train_idx):
            raise UserError(f"n_train={cfg.n_train} but the corpus offers only {len(train_idx)} training sequences")
        train_idx = np.sort(perm[cfg.n_val : cfg.n_val + cfg.n_train])
    seqs = [words[i * body : (i + 1) * body] for i in range(n_seq)]
    tok = WordTokenizer.build(" ".join(w for i in train_idx for w in seqs[i]), cfg.vocab_size)
    stoi = {w: i for i, w in enumerate(tok.itos)}

    def encode(idx: np.ndarray) -> np.ndarray:
        out = np.empty((len(idx), cfg.seq_len), dtype=np.int64)
        out[:, 0], out[:, -1] = CLS, SEP
        out[:, 1:-1] = [[stoi.get(w, 1) for w in seqs[i]] for i in idx]
        return out

    train, val = encode(train_idx), encode(val_idx)
    unk = float((train[:, 1:-1] == 1).mean())
    return MlmData(train, val, tok, source, description, len(words), unk)


def mask_tokens(ids: torch.Tensor, mask_prob: float, vocab_size: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking of ``ids (B, L)`` drawn from ``gen``: the corrupted inputs and the bool
    selection (positions whose original token is predicted). ``[CLS]``/``[SEP]`` are never selected."""
    B, L = ids.shape
    select = torch.rand(B, L, generator=gen) < mask_prob
    select[:, 0] = select[:, -1] = False
    action = torch.rand(B, L, generator=gen)
    random_words = torch.randint(len(SPECIALS), vocab_size, (B, L), generator=gen)
    inputs = torch.where(select & (action < 0.8), torch.full_like(ids, MASK), ids)
    inputs = torch.where(select & (action >= 0.8) & (action < 0.9), random_words, inputs)
    return inputs, select


# --------------------------------------------------------------------------- model


def init_params(cfg: MlmConfig, vocab: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """One seed's parameters; matrices in torch ``(out, in)`` layout, biases ``(1, out)``."""
    d, f = cfg.d_model, cfg.d_ff
    n = lambda *shape: torch.randn(shape, generator=gen, dtype=torch.float32) * INIT_STD  # noqa: E731
    p: dict[str, torch.Tensor] = {"tok_emb": n(vocab, d), "pos_emb": n(cfg.seq_len, d),
                                  "emb_ln_w": torch.ones(1, d), "emb_ln_b": torch.zeros(1, d)}
    for i in range(cfg.n_layers):
        for name in ("q", "k", "v", "o"):
            p[f"l{i}_{name}"] = n(d, d)
            p[f"l{i}_{name}_b"] = torch.zeros(1, d)
        p[f"l{i}_ln1_w"], p[f"l{i}_ln1_b"] = torch.ones(1, d), torch.zeros(1, d)
        p[f"l{i}_in"], p[f"l{i}_in_b"] = n(f, d), torch.zeros(1, f)
        p[f"l{i}_out"], p[f"l{i}_out_b"] = n(d, f), torch.zeros(1, d)
        p[f"l{i}_ln2_w"], p[f"l{i}_ln2_b"] = torch.ones(1, d), torch.zeros(1, d)
    p["head"], p["head_b"] = n(d, d), torch.zeros(1, d)
    p["head_ln_w"], p["head_ln_b"] = torch.ones(1, d), torch.zeros(1, d)
    p["dec_b"] = torch.zeros(1, vocab)
    return p


def _linear(P: dict[str, torch.Tensor], name: str, x: torch.Tensor) -> torch.Tensor:
    """``x (S, N, in) @ W[s]ᵀ + b[s]`` for every seed."""
    return torch.baddbmm(P[f"{name}_b"], x, P[name].transpose(1, 2))


def _ln(P: dict[str, torch.Tensor], name: str, x: torch.Tensor) -> torch.Tensor:
    """LayerNorm over the last axis with per-seed affine parameters ``(S, 1, d)``."""
    return F.layer_norm(x, x.shape[-1:], eps=LN_EPS) * P[f"{name}_w"] + P[f"{name}_b"]


def encode(P: dict[str, torch.Tensor], ids: torch.Tensor, cfg: MlmConfig) -> torch.Tensor:
    """Hidden states ``(S, B·L, d)`` of the encoder for token ids ``(S, B, L)``."""
    S, B, L = ids.shape
    d, H = cfg.d_model, cfg.n_heads
    seeds = torch.arange(S, device=ids.device)[:, None, None]
    x = P["tok_emb"][seeds, ids] + P["pos_emb"][:, None, :L]  # (S, B, L, d)
    x = _ln(P, "emb_ln", x.reshape(S, B * L, d))
    for i in range(cfg.n_layers):
        heads = lambda t: t.view(S, B, L, H, d // H).transpose(2, 3)  # noqa: E731  (S, B, H, L, dh)
        q, k, v = (heads(_linear(P, f"l{i}_{n}", x)) for n in ("q", "k", "v"))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // H), dim=-1)
        z = (att @ v).transpose(2, 3).reshape(S, B * L, d)
        x = _ln(P, f"l{i}_ln1", x + _linear(P, f"l{i}_o", z))
        h = F.gelu(_linear(P, f"l{i}_in", x))
        x = _ln(P, f"l{i}_ln2", x + _linear(P, f"l{i}_out", h))
    return x


def mlm_loss_acc(P: dict[str, torch.Tensor], inputs: torch.Tensor, targets: torch.Tensor, select: torch.Tensor,
                 cfg: MlmConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-seed CE *sums*, correct counts and selected counts over the selected positions.

    The MLM head runs only at selected positions: each seed's are gathered into ``(S, K, d)``
    with K the largest count, the padding masked out of the sums.
    """
    S = inputs.shape[0]
    x = encode(P, inputs, cfg)  # (S, N, d)
    sel = select.reshape(S, -1)
    counts = sel.sum(1)
    K = max(int(counts.max()), 1)
    # Selected positions first (stable), then padding positions that the mask drops.
    order = torch.argsort((~sel).to(torch.int8), dim=1, stable=True)[:, :K]
    valid = torch.arange(K, device=x.device)[None] < counts[:, None]
    xs = x.gather(1, order[..., None].expand(-1, -1, x.shape[-1]))
    t = _ln(P, "head_ln", F.gelu(_linear(P, "head", xs)))
    logits = torch.baddbmm(P["dec_b"], t, P["tok_emb"].transpose(1, 2))  # (S, K, V)
    y = targets.reshape(S, -1).gather(1, order)
    ce = F.cross_entropy(logits.reshape(S * K, -1), y.reshape(-1), reduction="none").view(S, K)
    loss = (ce * valid).sum(1)
    correct = ((logits.argmax(-1) == y) & valid).sum(1)
    return loss, correct, counts


# --------------------------------------------------------------------------- problem


def decays(name: str) -> bool:
    """Whether parameter ``name`` gets weight decay: as in BERT, every weight matrix and embedding
    does; biases (``*_b``) and LayerNorm gains (``*ln*_w``) do not."""
    return not (name.endswith("_b") or ("ln" in name and name.endswith("_w")))


def decay_split(params: dict[str, torch.Tensor]) -> tuple[list, list]:
    """``(decayed, not decayed)`` parameter lists, in ``params`` order (see :func:`decays`)."""
    return ([v for k, v in params.items() if decays(k)], [v for k, v in params.items() if not decays(k)])


class MlmProblem(BatchedProblem):
    """S seeds of the small BERT as one batched model, trained with one AdamW."""

    def __init__(self, cfg: MlmConfig, seeds: list[RunSeeds], device: torch.device, data: MlmData | None = None):
        self.cfg = cfg
        self.device = device
        self.data = data if data is not None else load_data(cfg)
        self.vocab = self.data.tokenizer.vocab_size
        per_seed = [init_params(cfg, self.vocab, torch.Generator().manual_seed(rs.init)) for rs in seeds]
        self.params = stack_params(per_seed, device)
        decay, no_decay = decay_split(self.params)
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, foreach=True,
        )
        self.order_generators = [torch.Generator().manual_seed(rs.order) for rs in seeds]
        self.train_ids = torch.from_numpy(self.data.train).to(device)
        self.n_train = len(self.train_ids)
        # Evaluation sets are masked once by the study's split stream (the same for every seed).
        gen = torch.Generator().manual_seed(split_stream(cfg))
        k = cfg.train_eval_size
        train_eval = self.data.train[:k] if 0 < k < self.n_train else self.data.train
        self.eval_sets = {}
        for name, arr in (("val", self.data.val), ("train", train_eval)):
            ids = torch.from_numpy(arr)
            inputs, select = mask_tokens(ids, cfg.mask_prob, self.vocab, gen)
            self.eval_sets[name] = (inputs.to(device), ids.to(device), select.to(device))
        self.full_batch = False
        self.steps_per_epoch = math.ceil(self.n_train / cfg.batch_size)
        self.total_steps = cfg.epochs * self.steps_per_epoch
        self._step = 0  # optimiser steps taken (drives the learning-rate schedule)
        self._cursor = 0
        self._order: torch.Tensor | None = None  # (S, n_train): this epoch's sequence order per seed

    def lr_at(self, step: int) -> float:
        """Learning rate of optimiser step ``step`` (0-based): linear warm-up, then linear decay to 0."""
        cfg = self.cfg
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        if not cfg.decay:
            return cfg.lr
        return cfg.lr * max(0.0, (self.total_steps - step) / max(1, self.total_steps - cfg.warmup_steps))

    def train_step(self, measure: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        bs = self.cfg.batch_size
        if self._cursor == 0:
            # A new epoch: each seed shuffles the training sequences with its own generator.
            self._order = torch.stack([torch.randperm(self.n_train, generator=g) for g in self.order_generators]).to(self.device)
        rows = self._order[:, self._cursor * bs : (self._cursor + 1) * bs]
        self._cursor = (self._cursor + 1) % self.steps_per_epoch
        ids = self.train_ids[rows]  # (S, B, L)
        # Dynamic masking: each seed's selections from its own order stream.
        masked = [mask_tokens(ids[i].cpu(), self.cfg.mask_prob, self.vocab, g) for i, g in enumerate(self.order_generators)]
        inputs = torch.stack([m[0] for m in masked]).to(self.device)
        select = torch.stack([m[1] for m in masked]).to(self.device)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self._step)
        self.optimizer.zero_grad(set_to_none=True)
        loss_tot, correct, counts = mlm_loss_acc(self.params, inputs, ids, select, self.cfg)
        n = counts.clamp_min(1)
        # Sum of per-seed means: every seed receives exactly its own gradient.
        (loss_tot / n).sum().backward()
        self.optimizer.step()
        self._step += 1
        return loss_tot.detach() / n, correct / n

    def extra_state(self, i: int) -> dict[str, np.ndarray]:
        out = {"step": np.asarray(self._step), "cursor": np.asarray(self._cursor)}
        if self._cursor:
            out["order"] = self._order[i].cpu().numpy()
        return out

    def load_extra_states(self, states: list[dict[str, np.ndarray]]) -> None:
        self._step = int(states[0].get("step", 0))
        self._cursor = int(states[0].get("cursor", 0))
        if self._cursor:
            self._order = torch.from_numpy(np.stack([s["order"] for s in states])).to(self.device)

    @torch.no_grad()
    def evaluate(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-seed mean CE and accuracy over the selected positions of the fixed-masked set."""
        inputs, ids, select = self.eval_sets["train" if split == "train" else "val"]
        S = self.n_seeds
        loss = torch.zeros(S, dtype=torch.float64, device=self.device)
        correct = torch.zeros(S, dtype=torch.float64, device=self.device)
        total = 0
        for a, b, c in zip(inputs.split(EVAL_CHUNK), ids.split(EVAL_CHUNK), select.split(EVAL_CHUNK)):
            ex = lambda t: t[None].expand(S, *t.shape)  # noqa: E731  (every seed sees the same set)
            l, k, n = mlm_loss_acc(self.params, ex(a), ex(b), ex(c), self.cfg)
            loss += l.double()
            correct += k.double()
            total += int(n[0])
        total = max(total, 1)
        return loss / total, correct / total

    #: validation sequences in the function group's probe (every seed sees the same, fixed-masked)
    PROBE_SEQUENCES = 64

    @torch.no_grad()
    def probe(self) -> Probe:
        """The function group's inputs at the masked positions of the first validation sequences:
        the logits over the vocabulary, the head's output, the per-token cross-entropy."""
        inputs, ids, select = (t[: self.PROBE_SEQUENCES] for t in self.eval_sets["val"])
        S = self.n_seeds
        P = {k: v.detach() for k, v in self.params.items()}
        ex = lambda t: t[None].expand(S, *t.shape)  # noqa: E731  (every seed sees the same set)
        x = encode(P, ex(inputs), self.cfg)  # (S, N, d)
        pos = torch.nonzero(select.reshape(-1), as_tuple=False)[:, 0]  # the same positions for every seed
        t = _ln(P, "head_ln", F.gelu(_linear(P, "head", x[:, pos])))
        logits = torch.baddbmm(P["dec_b"], t, P["tok_emb"].transpose(1, 2))
        y = ids.reshape(-1)[pos]
        n = len(pos)
        losses = F.cross_entropy(logits.reshape(S * n, -1), y.repeat(S), reduction="none").view(S, n)
        return Probe(logits, t, losses)

    def weight_groups(self) -> WeightGroups:
        # reference.md B4 (HF BERT): per layer K, Q, V (whole, not split per head), the attention
        # output dense, FFN in and FFN out are the matrices and w_all; b_all the FFN biases only.
        # Embeddings, LayerNorms and the MLM head are excluded.
        P = {k: v.detach() for k, v in self.params.items()}
        L = range(self.cfg.n_layers)
        square = [P[f"l{i}_{n}"] for i in L for n in ("k", "q", "v", "o")]
        ffn_in, ffn_out = [P[f"l{i}_in"] for i in L], [P[f"l{i}_out"] for i in L]
        return WeightGroups(
            matrices=[torch.stack(square, 1), torch.stack(ffn_in, 1), torch.stack(ffn_out, 1)],
            weights=square + ffn_in + ffn_out,
            biases=[P[f"l{i}_{n}_b"] for i in L for n in ("in", "out")],
        )


class MlmTask(Task):
    name = "mlm"
    config_class = MlmConfig
    presets = PRESETS
    problem_class = MlmProblem
    step_unit = "step"
    convergence_metric = "val_loss"
    convergence_direction = "below"

    def load_data(self, cfg: MlmConfig) -> MlmData:
        return load_data(cfg)

    def describe_data(self, cfg: MlmConfig, data: MlmData | None = None) -> dict[str, Any]:
        data = load_data(cfg) if data is None else data
        return {
            "source": data.source,
            "description": data.description,
            "tokens": data.n_words,
            "tokenizer": f"word-level, built from the training sequences: {data.tokenizer.vocab_size} entries "
                         f"({len(SPECIALS)} special), unknown-token rate {data.unk_rate:.3f}",
            "n_train": int(len(data.train)),
            "n_val": int(len(data.val)),
            "seq_len": cfg.seq_len,
            "masking": f"{cfg.mask_prob:g} of tokens selected; 80% [MASK], 10% random word, 10% unchanged; "
                       "training masks per step from each seed's order stream, evaluation masks fixed",
            "model": f"post-LN BERT encoder: {cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} heads, "
                     f"d_ff {cfg.d_ff}, GELU, learned positions, tied MLM decoder",
            "train_eval": f"train_loss/train_acc on {min(cfg.train_eval_size or len(data.train), len(data.train))} "
                          "fixed training sequences",
            "fingerprint": fingerprint({"train": data.train, "val": data.val},
                                       {"vocabulary": list(data.tokenizer.itos)}),
        }
