"""The CIFAR ResNet on oneDNN's AVX2 kernels: a clean exit and the right gradients.

On CPUs without AVX-512, torch 2.13.0's oneDNN picks ``jit_1x1:avx2`` for the weight gradient of
the 1x1 stride-2 downsample convs. With a channels-last source and fewer than 8 input channels
that kernel writes past its workspace (oneDNN #6035): heap corruption (``double free or
corruption``, a segmentation fault) with one thread, a hang with two, wrong gradients on some
machines. The smallest reproducer, in plain torch::

    x = torch.randn(16, 4, 32, 32).contiguous(memory_format=torch.channels_last)
    w = torch.randn(8, 4, 1, 1, requires_grad=True)
    F.conv2d(x, w, stride=2).sum().backward()        # ONEDNN_MAX_CPU_ISA=AVX2, one thread: crashes

(fine with 1 or >= 8 input channels, stride 1, an NCHW source, or AVX-512 kernels). One-seed
CIFAR training reached it: the augmentation's crop gather hands the network channels-last
images, and the default width 4 gives the stage-2 downsample conv 4 input channels.
``latent.collect.tasks.cifar.forward`` now runs the network in NCHW.

Each check runs in a child process with ``ONEDNN_MAX_CPU_ISA=AVX2``, which makes oneDNN use the
same kernels on any x86 machine, so a crash fails one test here instead of killing the suite,
and a hang is a timeout. The child compares every gradient with the same step in float64.
(Turning oneDNN off is no workaround: torch's native float32 convolutions gave a weight gradient
11 % off float64 on a one-seed batch at initialisation, against 3e-6 for oneDNN's kernels.)
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap

import pytest

pytestmark = [
    pytest.mark.cifar,
    pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="oneDNN's x86 kernels"),
]

CHILD = textwrap.dedent(
    """
    import faulthandler, json, sys
    faulthandler.enable()
    import torch
    from latent.collect.seeds import RunSeeds
    from latent.collect.tasks.cifar import CifarConfig, CifarProblem, forward
    from latent.collect.tasks.base import cross_entropy_sums

    seeds, overrides, threads = json.loads(sys.argv[1])
    torch.set_num_threads(threads)
    cfg = CifarConfig(**overrides)
    pr = CifarProblem(cfg, [RunSeeds.derive(s, cfg.split_seed) for s in seeds], torch.device("cpu"))
    for _ in range(2):  # the steps the collector takes: augmented crops, forward, backward, AdamW
        pr.train_step()
    # One more batch, by hand, twice: in float32 (oneDNN's AVX2 kernels), then in float64.
    S, b = len(seeds), cfg.batch_size
    rows = pr.train_idx[:, :b]
    gen = torch.Generator().manual_seed(7)
    if cfg.augment:  # crops and flips, as `_loss_acc` draws them in training
        x = pr.images(rows, torch.randint(0, 9, (S, b, 2), generator=gen), torch.rand(S, b, generator=gen) < 0.5)
    else:
        x = pr.images(rows)

    def grads(params, stats, images):
        loss, _ = cross_entropy_sums(forward(params, stats, images, cfg, train=True), pr.y[rows])
        loss.sum().backward()
        return {k: p.grad for k, p in params.items() if p.grad is not None}

    copy = lambda dtype: {k: (m.to(dtype), v.to(dtype)) for k, (m, v) in pr.bn_stats.items()}
    for p in pr.params.values():
        p.grad = None
    fast = grads(pr.params, copy(torch.float32), x)  # oneDNN's AVX2 kernels
    # The truth: the same step in float64 (torch's native kernels; oneDNN has no float64 convs).
    P64 = {k: p.detach().double().requires_grad_(True) for k, p in pr.params.items()}
    truth = grads(P64, copy(torch.float64), x.double())
    err = {k: float((fast[k].double() - t).abs().max() / t.abs().max().clamp_min(1e-30)) for k, t in truth.items()}
    print(json.dumps(err))
    """
)


def run_child(seeds, overrides, threads, timeout=120):
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps([seeds, overrides, threads])], env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"child exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


TINY = dict(n_train=32, n_val=16, train_eval_size=16, batch_size=16)


@pytest.mark.parametrize("threads", [1, 2])
def test_one_seed_downsample_weight_gradient_on_avx2_kernels(threads):
    # The faulting call: one seed, width 4 (stage 2's downsample conv has 4 input channels),
    # augmented crops. Before the fix: exit 134/139 with one thread; with two, a crash or a hang.
    err = run_child([0], dict(TINY, width=4), threads)
    assert set(err) >= {"b2_down", "b4_down", "b6_down", "stem", "fc_w"}
    assert max(err.values()) < 1e-4, err


@pytest.mark.parametrize("seeds,overrides", [
    ([0, 1], dict(width=4)),                                      # grouped convolutions
    ([3], dict(width=2, batchnorm=False, residual=False)),       # destabilised (no downsample branch)
    ([5], dict(width=6, augment=False)),                          # whole images, 6 input channels
])
def test_resnet_gradients_on_avx2_kernels(seeds, overrides):
    err = run_child(seeds, dict(TINY, **overrides), 1)
    assert max(err.values()) < 1e-4, err
