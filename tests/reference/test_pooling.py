"""cnnkit.reference pooling against torch.nn.functional in float64 and hand values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import cnnkit.reference as R

TOL = 1e-10


def _pool_cases(count: int, seed: int, dilation: bool) -> list[dict]:
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(count):
        kernel = tuple(int(v) for v in rng.integers(1, 5, size=2))
        dil = tuple(int(v) for v in rng.integers(1, 3, size=2)) if dilation else (1, 1)
        padding = tuple(int(rng.integers(0, k // 2 + 1)) for k in kernel)
        span = [d * (k - 1) + 1 for k, d in zip(kernel, dil)]
        stride = None if rng.integers(0, 4) == 0 else tuple(int(v) for v in rng.integers(1, 4, size=2))
        cases.append(
            dict(
                size=tuple(max(1, s - 2 * p) + int(rng.integers(0, 7)) for s, p in zip(span, padding)),
                kernel=kernel,
                stride=stride,
                padding=padding,
                dilation=dil,
                ceil_mode=bool(rng.integers(0, 2)),
                count_include_pad=bool(rng.integers(0, 2)),
            )
        )
    return cases


def _ids(case: dict) -> str:
    return "-".join(map(str, case.values()))


def _input(size, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((2, 3, *size))


@pytest.mark.parametrize("case", _pool_cases(20, seed=7, dilation=True), ids=_ids)
def test_max_pool2d_equals_torch(case):
    x = _input(case["size"], seed=1)
    args = (case["kernel"], case["stride"], case["padding"], case["dilation"], case["ceil_mode"])
    expected = F.max_pool2d(torch.from_numpy(x), *args).numpy()
    got = R.max_pool2d(x, *args)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=TOL)


@pytest.mark.parametrize("case", _pool_cases(20, seed=11, dilation=False), ids=_ids)
def test_avg_pool2d_equals_torch(case):
    x = _input(case["size"], seed=2)
    args = (case["kernel"], case["stride"], case["padding"], case["ceil_mode"], case["count_include_pad"])
    expected = F.avg_pool2d(torch.from_numpy(x), *args).numpy()
    got = R.avg_pool2d(x, *args)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=TOL)


def test_avg_pool2d_ceil_mode_divisors_by_hand():
    # 1x1x3x3 ones, k=2, s=2, p=1, ceil_mode: windows along an axis are [-1, 1) and [1, 3);
    # counting padding the divisor per axis is 2 and 2, input-only it is 1 and 2.
    x = np.ones((1, 1, 3, 3))
    np.testing.assert_array_equal(R.avg_pool2d(x, 2, 2, 1, ceil_mode=True)[0, 0], [[0.25, 0.5], [0.5, 1.0]])
    np.testing.assert_array_equal(
        R.avg_pool2d(x, 2, 2, 1, True, count_include_pad=False)[0, 0], np.ones((2, 2))
    )


def test_max_pool2d_by_hand_and_padding_is_minus_infinity():
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    np.testing.assert_array_equal(R.max_pool2d(x, 2)[0, 0], [[5.0, 7.0], [13.0, 15.0]])
    negative = -np.ones((1, 1, 2, 2))
    np.testing.assert_array_equal(R.max_pool2d(negative, 2, 1, 1)[0, 0], -np.ones((3, 3)))


def test_global_avg_pool2d_equals_torch():
    x = _input((5, 7), seed=3)
    got = R.global_avg_pool2d(x)
    assert got.shape == (2, 3, 1, 1)
    np.testing.assert_allclose(got, F.adaptive_avg_pool2d(torch.from_numpy(x), 1).numpy(), rtol=0, atol=TOL)
    np.testing.assert_allclose(got[..., 0, 0], x.mean(axis=(2, 3)), rtol=0, atol=TOL)


ADAPTIVE = [
    ((7, 5), 3),
    ((7, 5), (2, 4)),
    ((4, 4), (6, 3)),
    ((9, 10), (4, None)),
    ((5, 5), 1),
    ((3, 8), (3, 8)),
]


@pytest.mark.parametrize(("size", "output_size"), ADAPTIVE)
def test_adaptive_pools_equal_torch(size, output_size):
    x = _input(size, seed=4)
    tx = torch.from_numpy(x)
    np.testing.assert_allclose(
        R.adaptive_avg_pool2d(x, output_size),
        F.adaptive_avg_pool2d(tx, output_size).numpy(),
        rtol=0,
        atol=TOL,
    )
    np.testing.assert_array_equal(
        R.adaptive_max_pool2d(x, output_size), F.adaptive_max_pool2d(tx, output_size).numpy()
    )


def test_adaptive_bins_by_hand():
    # H=5 -> 3 bins: [0, 2), [1, 4), [3, 5) by start=floor(i*5/3), end=ceil((i+1)*5/3)
    x = np.arange(5.0).reshape(1, 1, 5, 1)
    np.testing.assert_allclose(R.adaptive_avg_pool2d(x, (3, 1))[0, 0, :, 0], [0.5, 2.0, 3.5])
    np.testing.assert_array_equal(R.adaptive_max_pool2d(x, (3, 1))[0, 0, :, 0], [1.0, 3.0, 4.0])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: R.max_pool2d(np.zeros((1, 1, 4, 4)), 2, padding=2),
            r"padding=2 must be at most half the kernel",
        ),
        (lambda: R.max_pool2d(np.zeros((4, 4)), 2), r"x must be 4-D .*got shape \(4, 4\)"),
        (lambda: R.avg_pool2d(np.zeros((1, 1, 1, 4)), 3), r"size=1"),
        (lambda: R.adaptive_avg_pool2d(np.zeros((1, 1, 4, 4)), (0, 2)), r"positive ints"),
        (lambda: R.adaptive_max_pool2d(np.zeros((1, 1, 4, 4)), (1, 2, 3)), r"an int, None or a pair"),
        (lambda: R.global_avg_pool2d(np.zeros((3, 4, 4))), r"4-D"),
    ],
)
def test_pooling_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()
