"""Segment-based EM start: change points found where planted, none in pure noise, labels → parameters."""

import numpy as np
import pytest

from latent.segments import labels_from_segments, noise_scale, params_from_labels, run_segments, segment_run


def test_finds_planted_change_points():
    rng = np.random.default_rng(0)
    d = 6
    cuts = [40, 75, 160]
    means = rng.normal(0, 1, (4, d))
    means *= 2.0 / np.linalg.norm(means - np.roll(means, 1, axis=0), axis=1, keepdims=True)  # steps of size ~2
    state = np.searchsorted(cuts, np.arange(220), side="right")
    x = means[state] + rng.normal(size=(220, d))
    segs = run_segments(x, [220])[0]
    found = [a for a, _ in segs[1:]]
    assert len(found) == len(cuts)
    assert all(abs(f - c) <= 3 for f, c in zip(found, cuts)), found
    assert segs[0][0] == 0 and segs[-1][1] == 220
    assert all(b == a2 for (_, b), (a2, _) in zip(segs[:-1], segs[1:]))  # a partition, in order


def test_pure_noise_is_rarely_split():
    rng = np.random.default_rng(1)
    splits = [len(run_segments(rng.normal(size=(500, 14)), [500])[0]) - 1 for _ in range(50)]
    assert np.mean(np.array(splits) > 0) <= 0.1, splits


def test_noise_scale_ignores_jumps():
    rng = np.random.default_rng(2)
    x = np.repeat([0.0, 50.0, -30.0], 100)[:, None] + 0.5 * rng.normal(size=(300, 1))
    assert noise_scale(x, [300])[0] == pytest.approx(0.5, rel=0.15)


def test_segment_run_respects_penalty():
    x = np.concatenate([np.zeros((10, 1)), np.ones((10, 1))])
    # gain of the split at 10: (10·10/20)·1² = 5
    assert segment_run(x, penalty=4.9) == [(0, 10), (10, 20)]
    assert segment_run(x, penalty=5.1) == [(0, 20)]


def test_params_from_labels_by_hand():
    X = np.array([[0.0, 0], [0, 2], [2, 0], [10, 10], [10, 12], [12, 10], [0, 1], [1, 0]])
    labels = np.array([0, 0, 0, 1, 1, 1, 0, 0])
    p = params_from_labels(X, [6, 2], labels, 2)
    np.testing.assert_allclose(p["means"][0], X[labels == 0].mean(axis=0))
    np.testing.assert_allclose(p["means"][1], [32 / 3, 32 / 3])
    np.testing.assert_allclose(p["covars"][1], np.cov(X[labels == 1].T) + 1e-3 * np.eye(2))
    # add-one counts: starts (run 1 in 0, run 2 in 0) → [3, 1]/4; transitions 0→0 ×3 (2 + 1), 0→1, 1→1 ×2
    np.testing.assert_allclose(p["startprob"], [0.75, 0.25])
    np.testing.assert_allclose(p["transmat"], [[4 / 6, 2 / 6], [1 / 4, 3 / 4]])


def test_labels_follow_segments_and_k():
    rng = np.random.default_rng(3)
    runs = []
    for _ in range(4):
        state = np.repeat([0, 1, 2], [30, 20, 50])
        runs.append(np.array([[0, 0], [6, 0], [0, 6]])[state] + rng.normal(size=(100, 2)))
    X = np.concatenate(runs)
    segs = run_segments(X, [100] * 4)
    labels = labels_from_segments(X, [100] * 4, segs, 3, seed=0, weight_power=0.5)
    truth = np.tile(np.repeat([0, 1, 2], [30, 20, 50]), 4)
    conf = np.zeros((3, 3))
    np.add.at(conf, (truth, labels), 1)
    assert conf.max(axis=1).sum() / len(X) > 0.97
    # more states than distinct stretches still gives K labels
    assert len(np.unique(labels_from_segments(X, [100] * 4, segs, 8, 0, 1.0))) == 8


def test_more_states_than_stretches():
    X = np.random.default_rng(4).normal(size=(60, 2))  # noise: one stretch
    labels = labels_from_segments(X, [60], run_segments(X, [60]), 3, seed=0, weight_power=1.0)
    assert sorted(np.unique(labels)) == [0, 1, 2]
