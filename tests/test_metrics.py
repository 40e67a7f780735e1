"""latent.collect.metrics against hand-computed values and a brute-force SVD."""

import math

import numpy as np
import pytest
import torch

from latent.collect.metrics import REFERENCE_COLUMNS, WeightGroups, distribution_stats, matrix_metrics, reference_metrics


def _vals(d):
    return {k: float(v) for k, v in d.items()}


def test_diagonal_matrix_by_hand():
    m = _vals(matrix_metrics(torch.tensor([[3.0, 0.0], [0.0, -4.0]])))
    assert m["l1"] == pytest.approx(7.0)
    assert m["l2"] == pytest.approx(5.0)
    assert m["trace"] == pytest.approx(-1.0)
    assert m["spectral"] == pytest.approx(4.0)
    assert m["code_sparsity"] == pytest.approx(7.0 / 5.0)
    assert m["computational_sparsity"] == pytest.approx(-1.0 / 4.0)
    assert m["mean_singular_value"] == pytest.approx(3.5)
    assert m["var_singular_value"] == pytest.approx(0.5)  # unbiased: ((4-3.5)^2+(3-3.5)^2)/1


def test_non_square_trace_and_single_singular_value():
    # 1x3 row [1, 2, 2]: the only singular value is its norm 3; trace is the (0, 0) entry.
    m = _vals(matrix_metrics(torch.tensor([[1.0, 2.0, -2.0]])))
    assert m["l1"] == pytest.approx(5.0)
    assert m["l2"] == pytest.approx(3.0)
    assert m["trace"] == pytest.approx(1.0)
    assert m["spectral"] == pytest.approx(3.0)
    assert m["mean_singular_value"] == pytest.approx(3.0)
    assert math.isnan(m["var_singular_value"])  # one value: the reference's NaN


def test_wide_matrix_trace_uses_min_dimension():
    w = torch.arange(12.0).reshape(3, 4)  # diagonal 0, 5, 10
    assert float(matrix_metrics(w)["trace"]) == pytest.approx(15.0)
    assert float(matrix_metrics(w.T)["trace"]) == pytest.approx(15.0)


def test_small_singular_values_are_zeroed():
    m = _vals(matrix_metrics(torch.tensor([[1.0, 0.0], [0.0, 1e-7]])))
    assert m["mean_singular_value"] == pytest.approx(0.5)
    assert m["var_singular_value"] == pytest.approx(0.5)
    m = _vals(matrix_metrics(torch.tensor([[1.0, 0.0], [0.0, 1e-3]])))
    assert m["mean_singular_value"] == pytest.approx((1 + 1e-3) / 2)


def test_non_finite_matrix_gives_nan():
    w = torch.tensor([[1.0, float("inf")], [0.0, 1.0]])
    assert all(math.isnan(v) for v in _vals(matrix_metrics(w)).values())


def test_stack_matches_each_matrix_and_svdvals():
    gen = torch.Generator().manual_seed(0)
    stack = torch.randn(3, 4, 7, 5, generator=gen)
    batched = matrix_metrics(stack)
    for i in range(3):
        for j in range(4):
            w = stack[i, j]
            single = matrix_metrics(w)
            for key in single:
                assert float(batched[key][i, j]) == pytest.approx(float(single[key]), rel=1e-9)
            sv = torch.linalg.svdvals(w.double())
            assert float(single["spectral"]) == pytest.approx(float(sv[0]), rel=1e-9)
            assert float(single["mean_singular_value"]) == pytest.approx(float(sv.mean()), rel=1e-9)
            assert float(single["var_singular_value"]) == pytest.approx(float(sv.var()), rel=1e-7)
            assert float(single["l1"]) == pytest.approx(float(w.double().abs().sum()), rel=1e-12)


def test_distribution_stats_lower_median_and_unbiased_variance():
    st = distribution_stats(torch.tensor([[4.0, 1.0, 3.0, 2.0], [10.0, 10.0, 10.0, 10.0]]))
    assert st["median"].tolist() == [2.0, 10.0]  # lower of the two middle values
    assert st["mean"].tolist() == [2.5, 10.0]
    assert st["var"][0].item() == pytest.approx(5.0 / 3.0)  # sum of squares 5 over n-1 = 3
    assert st["var"][1].item() == 0.0


def test_reference_metrics_average_over_matrices_and_nanmean_variance():
    # Seed 0: diag(3, 4) and the row [1, 2, -2]; seed 1: twice those. Biases [1, 2] and [3].
    a = torch.tensor([[3.0, 0.0], [0.0, 4.0]])
    r = torch.tensor([[1.0, 2.0, -2.0]])
    groups = WeightGroups(
        matrices=[torch.stack([a, 2 * a])[:, None], torch.stack([r, 2 * r])[:, None]],
        weights=[torch.stack([a, 2 * a]), torch.stack([r, 2 * r])],
        biases=[torch.tensor([[1.0, 2.0], [2.0, 4.0]]), torch.tensor([[3.0], [6.0]])],
    )
    out = reference_metrics(groups)
    assert list(out) == list(REFERENCE_COLUMNS)
    assert out["l1"].tolist() == pytest.approx([(7 + 5) / 2, (14 + 10) / 2])
    assert out["l2"].tolist() == pytest.approx([(5 + 3) / 2, (10 + 6) / 2])
    assert out["trace"].tolist() == pytest.approx([(7 + 1) / 2, (14 + 2) / 2])
    assert out["spectral"].tolist() == pytest.approx([(4 + 3) / 2, (8 + 6) / 2])
    assert out["code_sparsity"].tolist() == pytest.approx([(7 / 5 + 5 / 3) / 2] * 2)
    assert out["computational_sparsity"].tolist() == pytest.approx([(7 / 4 + 1 / 3) / 2] * 2)
    assert out["mean_lambda"].tolist() == pytest.approx([(3.5 + 3) / 2, (7 + 6) / 2])
    # The row's variance is NaN and skipped: the column is the first matrix's variance alone.
    assert out["variance_lambda"].tolist() == pytest.approx([0.5, 2.0])
    weights0 = np.array([3, 0, 0, 4, 1, 2, -2], dtype=float)
    assert out["mean_w"][0].item() == pytest.approx(weights0.mean())
    assert out["median_w"][0].item() == 1.0  # sorted: -2 0 0 1 2 3 4
    assert out["var_w"][0].item() == pytest.approx(weights0.var(ddof=1))
    assert out["mean_b"].tolist() == pytest.approx([2.0, 4.0])
    assert out["median_b"].tolist() == [2.0, 4.0]
    assert out["var_b"].tolist() == pytest.approx([1.0, 4.0])


def test_conv_tensor_metrics_by_hand():
    from latent.collect.metrics import tensor_metrics

    # out=1, in=2, 2x2 kernels: slice 0 = [[3, 0], [0, 4]] (l1 7, l2 5), slice 1 = [[1, 1], [1, 1]] (l1 4, l2 2).
    w = torch.tensor([[[[3.0, 0.0], [0.0, -4.0]], [[1.0, 1.0], [1.0, 1.0]]]])
    m = _vals(tensor_metrics(w))
    assert m == pytest.approx({"l1": 5.5, "l2": 3.5, "code_sparsity": (7 / 5 + 4 / 2) / 2})


def test_cnn_columns_average_over_entries_that_have_them():
    # One conv entry (l1 5.5, l2 3.5) and one fc matrix diag(3, 4) (l1 7, l2 5, spectral 4).
    conv = torch.tensor([[[[3.0, 0.0], [0.0, -4.0]], [[1.0, 1.0], [1.0, 1.0]]]])[None]
    fc = torch.tensor([[3.0, 0.0], [0.0, 4.0]])[None, None]
    out = reference_metrics(WeightGroups(matrices=[fc], convs=[conv], weights=[conv, fc[:, 0]], biases=[]))
    assert out["l1"].item() == pytest.approx((5.5 + 7) / 2)
    assert out["l2"].item() == pytest.approx((3.5 + 5) / 2)
    assert out["spectral"].item() == pytest.approx(4.0)  # from the fc alone
    assert out["mean_lambda"].item() == pytest.approx(3.5)
    assert math.isnan(out["mean_b"].item())  # no biases included
