"""cnnkit.reference convolutions against torch.nn.functional in float64, the page's loop and hand values."""

from __future__ import annotations

import ast
import pathlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import cnnkit.reference as R

TOL = 1e-10


def _conv_cases(count: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    cases = []
    for index in range(count):
        groups = int(rng.integers(1, 4))
        kernel = tuple(int(v) for v in rng.integers(1, 5, size=2))
        dilation = tuple(int(v) for v in rng.integers(1, 3, size=2))
        padding = tuple(int(v) for v in rng.integers(0, 3, size=2))
        span = [d * (k - 1) + 1 for k, d in zip(kernel, dilation)]
        size = tuple(max(1, s - 2 * p + int(rng.integers(0, 7))) for s, p in zip(span, padding))
        cases.append(
            dict(
                batch=int(rng.integers(1, 4)),
                c_in=groups * int(rng.integers(1, 4)),
                c_out=groups * int(rng.integers(1, 4)),
                size=size,
                kernel=kernel,
                stride=tuple(int(v) for v in rng.integers(1, 4, size=2)),
                padding=padding,
                dilation=dilation,
                groups=groups,
                bias=bool(rng.integers(0, 2)),
                seed=seed * 1000 + index,
            )
        )
    return cases


def _tensors(case: dict, rng: np.random.Generator):
    x = rng.standard_normal((case["batch"], case["c_in"], *case["size"]))
    w = rng.standard_normal((case["c_out"], case["c_in"] // case["groups"], *case["kernel"]))
    b = rng.standard_normal(case["c_out"]) if case["bias"] else None
    return x, w, b


def _torch_conv(x, w, b, **kwargs) -> np.ndarray:
    tb = None if b is None else torch.from_numpy(b)
    return F.conv2d(torch.from_numpy(x), torch.from_numpy(w), tb, **kwargs).numpy()


@pytest.mark.parametrize("case", _conv_cases(40, seed=3), ids=lambda c: "-".join(map(str, c.values())))
def test_conv2d_forward_equals_torch(case):
    rng = np.random.default_rng(case["seed"])
    x, w, b = _tensors(case, rng)
    kwargs = {k: case[k] for k in ("stride", "padding", "dilation", "groups")}
    got = R.conv2d_forward(x, w, b, **kwargs)
    expected = _torch_conv(x, w, b, **kwargs)
    assert got.shape == expected.shape and got.dtype == np.float64
    np.testing.assert_allclose(got, expected, rtol=0, atol=TOL)


@pytest.mark.parametrize("seed", range(8))
def test_loop_equals_vectorized_and_torch(seed):
    rng = np.random.default_rng(seed)
    kernel, stride, padding = int(rng.integers(1, 4)), int(rng.integers(1, 3)), int(rng.integers(0, 2))
    x = rng.standard_normal((2, 3, kernel + int(rng.integers(0, 6)), kernel + int(rng.integers(0, 6))))
    w = rng.standard_normal((4, 3, kernel, kernel))
    b = rng.standard_normal(4) if seed % 2 else None
    loop = R.conv2d_forward_loop(x, w, b, stride, padding)
    np.testing.assert_allclose(loop, R.conv2d_forward(x, w, b, stride, padding), rtol=0, atol=TOL)
    np.testing.assert_allclose(loop, _torch_conv(x, w, b, stride=stride, padding=padding), rtol=0, atol=TOL)


def test_page_formula_by_hand():
    # Output[c_out, i, j] = sum_{c_in} sum_{m,n} Input[c_in, i+m, j+n] * Filter[c_out, c_in, m, n] + bias[c_out]
    x = np.arange(9.0).reshape(1, 1, 3, 3)
    w = np.array([[[[1.0, 0.0], [0.0, -1.0]]], [[[1.0, 1.0], [1.0, 1.0]]]])
    b = np.array([0.5, -1.0])
    expected = np.array([[[[-3.5, -3.5], [-3.5, -3.5]], [[7.0, 11.0], [19.0, 23.0]]]])
    np.testing.assert_array_equal(R.conv2d_forward(x, w, b), expected)
    np.testing.assert_array_equal(R.conv2d_forward_loop(x, w, b), expected)


def test_float32_stays_float32_and_loop_gives_float64():
    x = np.ones((1, 2, 4, 4), np.float32)
    w = np.ones((3, 2, 3, 3), np.float32)
    out = R.conv2d_forward(x, w, padding=1)
    assert out.dtype == np.float32 and out[0, 0, 1, 1] == 18.0 and out[0, 0, 0, 0] == 8.0
    assert R.conv2d_forward_loop(x, w, None, padding=1).dtype == np.float64


@pytest.mark.parametrize("seed", range(6))
def test_depthwise_and_separable_equal_torch(seed):
    rng = np.random.default_rng(100 + seed)
    c_in, multiplier, c_out = int(rng.integers(1, 5)), int(rng.integers(1, 3)), int(rng.integers(1, 6))
    kernel, stride, padding, dilation = (
        3,
        int(rng.integers(1, 3)),
        int(rng.integers(0, 3)),
        int(rng.integers(1, 3)),
    )
    x = rng.standard_normal((2, c_in, 9, 8))
    dw = rng.standard_normal((c_in * multiplier, 1, kernel, kernel))
    dwb = rng.standard_normal(c_in * multiplier)
    pw = rng.standard_normal((c_out, c_in * multiplier, 1, 1))
    pwb = rng.standard_normal(c_out)
    geometry = dict(stride=stride, padding=padding, dilation=dilation)
    hidden = _torch_conv(x, dw, dwb, groups=c_in, **geometry)
    np.testing.assert_allclose(R.depthwise_conv2d(x, dw, dwb, **geometry), hidden, rtol=0, atol=TOL)
    np.testing.assert_allclose(R.conv1x1(hidden, pw, pwb), _torch_conv(hidden, pw, pwb), rtol=0, atol=TOL)
    np.testing.assert_allclose(
        R.depthwise_separable_conv2d(x, dw, pw, dwb, pwb, **geometry),
        _torch_conv(hidden, pw, pwb),
        rtol=0,
        atol=TOL,
    )


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: R.conv2d_forward(np.zeros((1, 3, 5, 5)), np.zeros((2, 4, 3, 3))), r"input has 3 channels but weight expects 4"),
        (lambda: R.conv2d_forward(np.zeros((1, 4, 5, 5)), np.zeros((6, 1, 3, 3)), groups=2), r"input has 4 channels but weight expects 2 .*groups=2"),
        (lambda: R.conv2d_forward(np.zeros((1, 4, 5, 5)), np.zeros((3, 2, 3, 3)), groups=2), r"groups=2 must divide the 3 output channels"),
        (lambda: R.conv2d_forward(np.zeros((1, 2, 5, 5)), np.zeros((3, 2, 3, 3)), np.zeros(4)), r"bias must have shape \(3,\).*got \(4,\)"),
        (lambda: R.conv2d_forward(np.zeros((2, 5, 5)), np.zeros((3, 2, 3, 3))), r"input must be 4-D .*got shape \(2, 5, 5\)"),
        (lambda: R.conv2d_forward(np.zeros((1, 2, 5, 5)), np.zeros((3, 2, 3))), r"weight must be 4-D"),
        (lambda: R.conv2d_forward(np.zeros((1, 2, 2, 5)), np.zeros((3, 2, 3, 3))), r"size=2 .*kernel=3"),
        (lambda: R.conv2d_forward(np.zeros((1, 2, 5, 5)), np.zeros((3, 2, 3, 3)), stride=(1, 2, 3)), r"stride must be"),
        (lambda: R.conv2d_forward_loop(np.zeros((1, 3, 5, 5)), np.zeros((2, 4, 3, 3)), None), r"input has 3 channels but weight expects 4"),
        (lambda: R.depthwise_conv2d(np.zeros((1, 3, 5, 5)), np.zeros((4, 1, 3, 3))), r"C_in=3 .*got \(4, 1, 3, 3\)"),
        (lambda: R.conv1x1(np.zeros((1, 3, 5, 5)), np.zeros((4, 3, 3, 3))), r"\(C_out, C_in, 1, 1\)"),
    ],
)  # fmt: skip
def test_shape_errors_name_the_dimensions(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_reference_package_never_imports_torch():
    for path in pathlib.Path(R.__file__).parent.glob("*.py"):
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module.split(".")[0])
        assert "torch" not in imported, (path.name, imported)
