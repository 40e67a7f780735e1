"""CIFAR ResNet-18 (reference.md A4): standard, and "destabilised" without BatchNorm and residuals.

Model: torchvision's ResNet-18 layout — four stages of two BasicBlocks, widths ``w, 2w, 4w, 8w``
(``w = width``; the reference's 64), stride 2 at the start of stages 2–4, a 1×1-conv + BN
downsample where the shape changes — with the reference's CIFAR stem: a 3×3 stride-1 conv
(no bias) and no max-pool; then global average pooling and a linear classifier.
``batchnorm=false`` drops every BatchNorm; ``residual=false`` drops the skip additions (the
downsample branch is then unused: the reference builds and computes it but never adds it,
so its weights get no gradient either way). Both false is the paper's destabilised variant.

Initialisation follows what the reference's model gets: block convs and downsample convs
Kaiming-normal (fan_out, ReLU) as torchvision initialises them, the replaced 3×3 stem conv and
the classifier PyTorch's default U(±1/√fan_in), BN weight 1 and bias 0.

Seed batching (grouped convolution): S seeds are one network whose channels are the seeds'
channels side by side, ``(B, S·C, H, W)``, every conv a ``groups=S`` conv over the stacked
kernels ``(S·out, in, kh, kw)``, so seed s's channels only ever see seed s's kernels and
inputs. Each seed's own augmented images occupy its three input channels. BatchNorm over the
S·C channels normalises every channel over (batch, H, W) — exactly each seed's own statistics —
and keeps per-seed running statistics. The loss is the sum of the per-seed batch means, so
every seed gets exactly its own gradient and one AdamW (elementwise) equals S optimisers.
``tests/test_task_cifar.py`` checks this against a plain per-seed ``nn.Module``.

Data (``source``; ``study.json`` records it under ``data``): ``cifar10`` / ``cifar100`` read
the python-pickle batches in ``data_dir`` (``--data-dir``; ``auto`` picks whichever is
there); without a directory the task uses a **generated** CIFAR-style set
(:func:`latent.collect.data.cifar.generate_images`: 32×32 colour images, 10 shape/fill classes),
because no installed package ships CIFAR. Training images get the reference's augmentation —
RandomCrop(32, padding 4, reflect), then a random horizontal flip — drawn per seed from its
order stream; all images are normalised per channel (CIFAR-100: the reference's constants).

Checkpoints every ``log_every`` optimiser steps (``step_unit = "step"``) as the reference.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F

from latent.errors import UserError

from ..fingerprint import fingerprint
from ..function_space import Probe, probe_rows
from ..metrics import WeightGroups
from ..seeds import RunSeeds
from ..config import AdamWConfig
from .base import RowProblem, Task, Variant, VariantCombination, cross_entropy_sums, stack_params

log = logging.getLogger("latent.collect")

SOURCES = ("auto", "generated", "cifar10", "cifar100")
STAGES = 4
BLOCKS_PER_STAGE = 2
PAD = 4  # RandomCrop padding
BN_EPS, BN_MOMENTUM = 1e-5, 0.1


@dataclass(frozen=True)
class CifarConfig(AdamWConfig):
    """CIFAR ResNet-18 study config (every field can be set with ``--set key=value``).

    Attributes
    ----------
    source : {"auto", "generated", "cifar10", "cifar100"}
        Where the images come from (module docstring); ``auto``: the CIFAR in ``data_dir`` if
        given, else generated.
    data_dir : str or None
        Directory with the extracted CIFAR python batches (``latent collect --data-dir``).
    data_seed : int
        Seed of the generated set (the same images for every run of a study).
    n_train, n_val : int
        Generated: images generated for training and validation. CIFAR files: ``n_train``
        training images used (0: all 50,000) and ``n_val`` test images used for validation
        (0: all 10,000), chosen by the split seed.
    train_eval_size : int
        ``train_loss``/``train_acc`` at a checkpoint are measured, without augmentation, on
        this fixed subset of each run's training images (0: all of them).
    width : int
        Channels of the first stage (64 in the reference); the stages have w, 2w, 4w, 8w.
    batchnorm, residual : bool
        BatchNorm layers and residual additions (both false: the destabilised variant).
    augment : bool
        Random crop (padding 4, reflect) and horizontal flip of training images.
    lr, weight_decay, beta1, beta2, eps : float
        AdamW hyper-parameters.
    batch_size : int
        Minibatch size per seed; the last batch of an epoch is smaller.
    epochs : int
        Training length in epochs.
    log_every : int
        Checkpoint interval in optimiser **steps**.
    split_seed : int or None
        Which training subset / validation subset / train-eval subset the study uses. An integer
        (default 0): one for the whole study, as CIFAR's fixed split in the reference. None: each
        run its own, from its seed.
    threshold : float
        Convergence: the first checkpoint with ``val_acc`` > threshold.
    """

    source: str = "auto"
    data_dir: Optional[str] = None
    data_seed: int = 0
    n_train: int = 2000
    n_val: int = 300
    train_eval_size: int = 200
    width: int = 4
    batchnorm: bool = True
    residual: bool = True
    augment: bool = True
    batch_size: int = 16
    epochs: int = 10
    log_every: int = 20
    threshold: float = 0.6

    def validate(self) -> None:
        self.validate_training()
        if self.source not in SOURCES:
            raise UserError(f"source must be one of {', '.join(SOURCES)}, got {self.source!r}")
        if self.data_dir is not None and self.source not in ("auto", "cifar10", "cifar100"):
            raise UserError(f"data_dir (--data-dir) reads CIFAR python batches; it does not apply to source={self.source!r}")
        if self.source in ("cifar10", "cifar100") and self.data_dir is None:
            raise UserError(f"source={self.source} needs the directory with the CIFAR python batches: pass --data-dir DIR")
        for name in ("width", "batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("n_train", "n_val", "train_eval_size"):
            if getattr(self, name) < 0:
                raise UserError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.resolved_source() == "generated" and (self.n_train < 1 or self.n_val < 1):
            raise UserError("the generated set needs n_train >= 1 and n_val >= 1 (0 means 'all' only for CIFAR files)")

    def resolved_source(self) -> str:
        if self.source != "auto":
            return self.source
        return "files" if self.data_dir is not None else "generated"


PRESETS: dict[str, dict[str, Any]] = {
    # Laptop CPU (docs/tasks.md has the measured times): the generated 10-class set (2,000 train
    # / 300 val images), ResNet-18 at width 4 (stages 4-8-16-32 channels), the reference's AdamW,
    # augmentation and normalisation, batch 16 (125 steps/epoch; per step of compute it learns
    # faster than 32 here), 10 epochs, a checkpoint every 20 steps (as the reference).
    "default": {},
    # reference.md A4 as the reference code runs it: CIFAR-100 (needs --data-dir), width 64,
    # AdamW 1e-3 with the code's weight decay 0.01 (the paper's table says 1.0: --set
    # weight_decay=1.0), batch 256, 100 epochs, a checkpoint every 20 steps, val_acc > 0.6
    # (destabilised: --set batchnorm=false --set residual=false --set threshold=0.4). Validation
    # uses all 10,000 test images; train metrics a fixed 5,120-image subset (the 20 batches the
    # reference's logged train accuracy covers).
    "paper": dict(source="cifar100", n_train=0, n_val=0, train_eval_size=5120, width=64, lr=1e-3,
                  weight_decay=0.01, batch_size=256, epochs=100, log_every=20, threshold=0.6),
}


# --------------------------------------------------------------------------- data


@functools.lru_cache(maxsize=2)
def _generate(n_train: int, n_val: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from ..data.cifar import generate_images

    return generate_images(n_train + n_val, seed)


@dataclass
class CifarData:
    """One study's images ``x (N, 3, 32, 32) uint8`` and labels; rows ``[:pool]`` are the training pool."""

    x: np.ndarray
    y: np.ndarray
    pool: int
    source: str
    n_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    description: str

    def split(self, cfg: CifarConfig, split_seed: int) -> tuple[np.ndarray, np.ndarray]:
        """A run's training rows (in random order; the first ``train_eval_size`` are its
        train-evaluation subset) and validation rows."""
        rng = np.random.Generator(np.random.PCG64(split_seed))
        train = rng.permutation(self.pool)
        val = np.arange(self.pool, len(self.y))
        if self.source != "generated":
            if cfg.n_train:
                train = train[: cfg.n_train]
            if cfg.n_val:
                val = np.sort(rng.permutation(val)[: cfg.n_val])
        return train, val


def load_data(cfg: CifarConfig) -> CifarData:
    """The study's images for ``cfg`` (resolving ``source="auto"``), checked against the config."""
    from ..data.cifar import CHANNEL_STATS

    source = cfg.resolved_source()
    if source == "generated":
        x, y = _generate(cfg.n_train, cfg.n_val, cfg.data_seed)
        pool = x[: cfg.n_train].astype(np.float64) / 255.0
        mean = tuple(float(v) for v in pool.mean((0, 2, 3)))
        std = tuple(float(v) for v in pool.std((0, 2, 3)))
        desc = (f"generated CIFAR-style set (no CIFAR files given; --data-dir reads them): 32x32 RGB, 10 classes "
                f"(5 shapes x solid/striped fill, random position, size, rotation, colours, shading, noise), "
                f"data_seed {cfg.data_seed}")
        return CifarData(x, y, cfg.n_train, "generated", 10, mean, std, desc)
    from ..data.cifar import load_cifar

    # Read afresh every time: files may change between collections (the fingerprint catches that).
    d = load_cifar(Path(cfg.data_dir).expanduser().resolve())
    if source != "files" and d["kind"] != source:
        raise UserError(f"source={source} but {cfg.data_dir} holds {d['kind'].upper()} batches")
    pool = len(d["y_train"])
    if cfg.n_train > pool:
        raise UserError(f"n_train={cfg.n_train} but {d['kind'].upper()} has only {pool} training images")
    if cfg.n_val > len(d["y_test"]):
        raise UserError(f"n_val={cfg.n_val} but {d['kind'].upper()} has only {len(d['y_test'])} test images")
    mean, std = CHANNEL_STATS[d["kind"]]
    return CifarData(np.concatenate([d["x_train"], d["x_test"]]), np.concatenate([d["y_train"], d["y_test"]]), pool,
                     d["kind"], d["n_classes"], mean, std, f"{d['kind'].upper()} python batches in {d['dir']}")


# --------------------------------------------------------------------------- model


def block_specs(width: int) -> list[tuple[int, int, int]]:
    """``(in_channels, out_channels, stride)`` of the 8 BasicBlocks."""
    specs, c = [], width
    for stage in range(STAGES):
        out = width * 2**stage
        for b in range(BLOCKS_PER_STAGE):
            stride = 2 if stage > 0 and b == 0 else 1
            specs.append((c, out, stride))
            c = out
    return specs


def _kaiming_fan_out(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    fan_out = shape[0] * shape[2] * shape[3]
    return torch.randn(shape, generator=gen, dtype=torch.float32) * math.sqrt(2.0 / fan_out)


def _uniform_fan_in(shape: tuple[int, ...], fan_in: int, gen: torch.Generator) -> torch.Tensor:
    bound = 1.0 / math.sqrt(fan_in)
    return (torch.rand(shape, generator=gen, dtype=torch.float32) * 2 - 1) * bound


def init_params(cfg: CifarConfig, n_classes: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """One seed's parameters (module docstring for the initialisation). BN affine parameters are
    ``(C,)``; everything else keeps its torch layout."""
    w = cfg.width
    p: dict[str, torch.Tensor] = {"stem": _uniform_fan_in((w, 3, 3, 3), 27, gen)}
    if cfg.batchnorm:
        p["stem_bn_w"], p["stem_bn_b"] = torch.ones(w), torch.zeros(w)
    for i, (cin, cout, stride) in enumerate(block_specs(w)):
        p[f"b{i}_conv1"] = _kaiming_fan_out((cout, cin, 3, 3), gen)
        p[f"b{i}_conv2"] = _kaiming_fan_out((cout, cout, 3, 3), gen)
        if cfg.batchnorm:
            for j in (1, 2):
                p[f"b{i}_bn{j}_w"], p[f"b{i}_bn{j}_b"] = torch.ones(cout), torch.zeros(cout)
        if stride != 1 or cin != cout:
            p[f"b{i}_down"] = _kaiming_fan_out((cout, cin, 1, 1), gen)
            if cfg.batchnorm:
                p[f"b{i}_down_bn_w"], p[f"b{i}_down_bn_b"] = torch.ones(cout), torch.zeros(cout)
    fan_in = 8 * w
    p["fc_w"] = _uniform_fan_in((n_classes, fan_in), fan_in, gen)
    p["fc_b"] = _uniform_fan_in((n_classes,), fan_in, gen)
    return p


def bn_names(cfg: CifarConfig) -> list[str]:
    """Prefixes of the BatchNorm layers (``<prefix>_w``/``_b`` parameters, running stats by prefix)."""
    if not cfg.batchnorm:
        return []
    names = ["stem_bn"]
    for i, (cin, cout, stride) in enumerate(block_specs(cfg.width)):
        names += [f"b{i}_bn1", f"b{i}_bn2"] + ([f"b{i}_down_bn"] if stride != 1 or cin != cout else [])
    return names


def forward(P: dict[str, torch.Tensor], stats: dict[str, tuple[torch.Tensor, torch.Tensor]], x: torch.Tensor,
            cfg: CifarConfig, train: bool, penultimate: bool = False):
    """Logits ``(S, B, classes)`` of S seeds for images ``x (S, B, 3, 32, 32)`` (seed s sees ``x[s]``),
    and the pooled features ``(S, B, 8w)`` when ``penultimate``.

    ``stats`` maps each BN prefix to its running ``(mean, var)`` of shape ``(S, C)``; in training
    mode they are updated in place (momentum 0.1) and the batch statistics are used.
    """
    S, B = x.shape[:2]

    def conv(h, name, stride=1, padding=1):
        w = P[name]
        return F.conv2d(h, w.reshape(S * w.shape[1], *w.shape[2:]), stride=stride, padding=padding, groups=S)

    def bn(h, prefix):
        if not cfg.batchnorm:
            return h
        mean, var = stats[prefix]
        return F.batch_norm(h, mean.view(-1), var.view(-1), P[f"{prefix}_w"].reshape(-1), P[f"{prefix}_b"].reshape(-1),
                            training=train, momentum=BN_MOMENTUM, eps=BN_EPS)

    # Seed s owns channels 3s..3s+2. The network runs in plain NCHW, whatever strides x has: on CPUs
    # without AVX-512, oneDNN's 1x1 strided weight-gradient kernel (jit_1x1:avx2) writes past its
    # buffer on a channels-last source with fewer than 8 input channels (oneDNN #6035: heap
    # corruption, or a hang with two threads), which the stage-2 downsample conv of one seed at
    # width <= 7 is. tests/test_cifar_native.py holds the reproducer.
    h = x.transpose(0, 1).reshape(B, S * 3, *x.shape[3:]).contiguous()
    h = F.relu(bn(conv(h, "stem"), "stem_bn"))
    for i, (cin, cout, stride) in enumerate(block_specs(cfg.width)):
        out = F.relu(bn(conv(h, f"b{i}_conv1", stride), f"b{i}_bn1"))
        out = bn(conv(out, f"b{i}_conv2"), f"b{i}_bn2")
        if cfg.residual:
            skip = bn(conv(h, f"b{i}_down", stride, 0), f"b{i}_down_bn") if f"b{i}_down" in P else h
            out = out + skip
        h = F.relu(out)
    feats = h.mean((2, 3)).view(B, S, -1).transpose(0, 1)  # (S, B, 8w)
    logits = torch.baddbmm(P["fc_b"][:, None, :], feats, P["fc_w"].transpose(1, 2))
    return (logits, feats) if penultimate else logits


# --------------------------------------------------------------------------- problem


class CifarProblem(RowProblem):
    """S seeds of the CIFAR ResNet-18 as one grouped-convolution network, trained with one AdamW."""

    def __init__(self, cfg: CifarConfig, seeds: list[RunSeeds], device: torch.device, data: CifarData | None = None):
        self.cfg = cfg
        self.device = device
        self.data = data if data is not None else load_data(cfg)
        self.n_classes = self.data.n_classes
        # Images are stored once, padded for the random crop (reflect, as the reference); the
        # unpadded image is the centre crop.
        mode = "reflect" if cfg.augment else "constant"
        self.x_pad = torch.from_numpy(np.pad(self.data.x, ((0, 0), (0, 0), (PAD, PAD), (PAD, PAD)), mode=mode)).to(device)
        self.y = torch.from_numpy(self.data.y).to(device)
        self.mean = torch.tensor(self.data.mean, device=device).view(3, 1, 1) * 255.0
        self.std = torch.tensor(self.data.std, device=device).view(3, 1, 1) * 255.0
        per_seed = [init_params(cfg, self.n_classes, torch.Generator().manual_seed(rs.init)) for rs in seeds]
        self.params = stack_params(per_seed, device)
        S = len(seeds)
        self.bn_stats = {
            name: (torch.zeros(S, self.params[f"{name}_w"].shape[1], device=device),
                   torch.ones(S, self.params[f"{name}_w"].shape[1], device=device))
            for name in bn_names(cfg)
        }
        self.optimizer = torch.optim.AdamW(
            list(self.params.values()), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
            weight_decay=cfg.weight_decay, foreach=True,
        )
        self.order_generators = [torch.Generator().manual_seed(rs.order) for rs in seeds]
        splits = [self.data.split(cfg, rs.split) for rs in seeds]
        train_idx = torch.from_numpy(np.stack([s[0] for s in splits])).to(device)  # (S, n_train)
        k = cfg.train_eval_size
        self._init_rows(
            train_idx,
            torch.from_numpy(np.stack([s[1] for s in splits])).to(device),
            cfg.batch_size,
            train_idx[:, :k] if 0 < k < train_idx.shape[1] else None,
        )
        self.n_train = train_idx.shape[1]
        self.full_batch = False  # BN train-mode statistics differ from an eval pass: always evaluate
        self.EVAL_CHUNK = max(1, 4096 // S)  # images per seed per evaluation chunk

    # -- images ------------------------------------------------------------------------

    def images(self, rows: torch.Tensor, offsets: torch.Tensor | None = None, flips: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised float images ``(S, B, 3, 32, 32)`` for ``rows (S, B)``: crops at ``offsets
        (S, B, 2)`` (top, left) of the padded images (None: the centre, i.e. the image itself),
        mirrored where ``flips (S, B)``."""
        S, B = rows.shape
        if offsets is None:
            img = self.x_pad[rows.reshape(-1), :, PAD:PAD + 32, PAD:PAD + 32]
        else:
            ar = torch.arange(32, device=self.device)
            iy = (offsets[..., 0].reshape(-1, 1) + ar)[:, :, None]  # (SB, 32, 1)
            ix = (offsets[..., 1].reshape(-1, 1) + ar)[:, None, :]  # (SB, 1, 32)
            n = rows.reshape(-1)[:, None, None]
            # Advanced indices come first: (SB, 32, 32, 3). Copied to NCHW: channels-last crops
            # reach a faulting oneDNN kernel on AVX2 CPUs (`forward`).
            img = self.x_pad[n, :, iy, ix].permute(0, 3, 1, 2).contiguous()
        img = img.reshape(S, B, 3, 32, 32)
        if flips is not None:
            img = torch.where(flips[:, :, None, None, None], img.flip(-1), img)
        return (img.float() - self.mean) / self.std

    def _logits(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        return forward(self.params, self.bn_stats, x, self.cfg, train)

    # -- training ----------------------------------------------------------------------

    def _loss_acc(self, rows: torch.Tensor, train: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        offsets = flips = None
        if train and self.cfg.augment:
            # Each seed's crop offsets and flips come from its own order stream (the reference's
            # augmentation randomness follows the run seed).
            b = rows.shape[1]
            draws = [(torch.randint(0, 2 * PAD + 1, (b, 2), generator=g), torch.rand(b, generator=g) < 0.5)
                     for g in self.order_generators]
            offsets = torch.stack([d[0] for d in draws]).to(self.device)
            flips = torch.stack([d[1] for d in draws]).to(self.device)
        return cross_entropy_sums(self._logits(self.images(rows, offsets, flips), train=train), self.y[rows])

    #: probe images per seed for the function group (the ResNet forward is the cost)
    PROBE = 128

    @torch.no_grad()
    def probe(self) -> Probe:
        """The function group's inputs on each seed's probe images (evaluation mode, no augmentation)."""
        rows = probe_rows(self.val_idx, self.PROBE)
        P = {k: v.detach() for k, v in self.params.items()}
        logits, feats = forward(P, self.bn_stats, self.images(rows), self.cfg, False, penultimate=True)
        S, n, c = logits.shape
        losses = F.cross_entropy(logits.reshape(S * n, c), self.y[rows].reshape(-1), reduction="none").view(S, n)
        return Probe(logits, feats, losses)

    def extra_state(self, i: int) -> dict[str, np.ndarray]:
        out = super().extra_state(i)
        out.update({f"bn/{name}/{k}": t[i].cpu().numpy().copy() for name, ts in self.bn_stats.items()
                    for k, t in zip(("mean", "var"), ts)})
        return out

    def load_extra_states(self, states: list[dict[str, np.ndarray]]) -> None:
        for name, ts in self.bn_stats.items():
            for k, t in zip(("mean", "var"), ts):
                t.copy_(torch.from_numpy(np.stack([s[f"bn/{name}/{k}"] for s in states])))
        super().load_extra_states(states)

    def weight_groups(self) -> WeightGroups:
        # reference.md B4: the stem and the 16 block convs as conv tensors, fc as a matrix; w_all
        # is those 17 convs + fc (no 1x1 downsample convs, no BN), b_all the fc bias only.
        P = {k: v.detach() for k, v in self.params.items()}
        convs = [P["stem"]] + [P[f"b{i}_conv{j}"] for i in range(len(block_specs(self.cfg.width))) for j in (1, 2)]
        return WeightGroups(matrices=[P["fc_w"][:, None]], convs=convs, weights=convs + [P["fc_w"]], biases=[P["fc_b"]])


class CifarTask(Task):
    name = "cifar"
    config_class = CifarConfig
    presets = PRESETS
    variants = (
        Variant("no-batchnorm", sets={"batchnorm": False}, suffix="-nobn"),  # drop every BatchNorm
        Variant("no-residual", sets={"residual": False}, suffix="-nores"),  # drop the residual additions
    )
    # reference.md E1: without both, the paper's destabilised ResNet, converged at val_acc > 0.4
    variant_combinations = (VariantCombination(frozenset({"no-batchnorm", "no-residual"}), "-destab", {"threshold": 0.4}),)
    problem_class = CifarProblem
    step_unit = "step"
    # Grouped convolutions got slower with a second thread: 40 default seeds took 690 s with 2
    # threads on an idle 2-core machine and 565 s with 1 (bench/RESULTS.md).
    default_threads = 1

    def load_data(self, cfg: CifarConfig) -> CifarData:
        return load_data(cfg)

    def describe_data(self, cfg: CifarConfig, data: CifarData | None = None) -> dict[str, Any]:
        data = load_data(cfg) if data is None else data
        train, val = data.split(cfg, 0)
        variant = {(True, True): "standard", (False, False): "destabilised (no BatchNorm, no residuals)",
                   (True, False): "no residuals", (False, True): "no BatchNorm"}[(cfg.batchnorm, cfg.residual)]
        return {
            "source": data.source,
            "description": data.description,
            "n_classes": data.n_classes,
            "n_train": int(len(train)),
            "n_val": int(len(val)),
            "normalize": {"mean": [round(v, 4) for v in data.mean], "std": [round(v, 4) for v in data.std]},
            "augment": "RandomCrop(32, padding=4, reflect) + RandomHorizontalFlip, per seed from its order stream"
            if cfg.augment else "none",
            "model": f"ResNet-18 (3x3 stem, no max-pool), widths {cfg.width}-{2 * cfg.width}-{4 * cfg.width}-{8 * cfg.width}, {variant}",
            "train_eval": f"train_loss/train_acc on {min(cfg.train_eval_size or len(train), len(train))} fixed training images, no augmentation",
            "fingerprint": fingerprint({"x": data.x, "y": data.y}),
        }
