"""Fixed-point <WL, FL> rounding vs an independent NumPy reference (Hypothesis)."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from quantize.marvin.fixed_point import (
    fixed_grad,
    frac_bits_for,
    int_limits,
    quantize_fixed,
    vanish_threshold,
)


def ref_nearest(x: np.ndarray, wl: int, fl: int) -> np.ndarray:
    """Plain float64 reference: ties to even (np.rint), saturate, scale back."""
    lo, hi = -(2 ** (wl - 1)), 2 ** (wl - 1) - 1
    return np.clip(np.rint(x.astype(np.float64) * 2.0 ** fl), lo, hi) / 2.0 ** fl


def ref_stochastic(x: np.ndarray, r: np.ndarray, wl: int, fl: int) -> np.ndarray:
    lo, hi = -(2 ** (wl - 1)), 2 ** (wl - 1) - 1
    return np.clip(np.floor(x.astype(np.float64) * 2.0 ** fl + r), lo, hi) / 2.0 ** fl


floats = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, width=32)
formats = st.tuples(st.integers(2, 24), st.integers(-8, 30))


@settings(max_examples=200, deadline=None)
@given(arrays(np.float32, st.integers(1, 64), elements=floats), formats)
def test_nearest_matches_numpy(x, fmt):
    wl, fl = fmt
    got = quantize_fixed(torch.from_numpy(x), wl, fl).numpy()
    np.testing.assert_array_equal(got, ref_nearest(x, wl, fl).astype(np.float32))


@settings(max_examples=100, deadline=None)
@given(arrays(np.float64, st.integers(1, 64), elements=st.floats(-1e4, 1e4)), formats)
def test_nearest_float64_path_matches_numpy(x, fmt):
    wl, fl = fmt
    got = quantize_fixed(torch.from_numpy(x), wl, fl).numpy()
    np.testing.assert_array_equal(got, ref_nearest(x, wl, fl))


@settings(max_examples=200, deadline=None)
@given(arrays(np.float32, st.integers(1, 64), elements=floats), formats,
       st.integers(0, 2 ** 31 - 1))
def test_stochastic_matches_numpy_given_the_same_noise(x, fmt, seed):
    wl, fl = fmt
    r = np.random.default_rng(seed).random(x.shape).astype(np.float32)
    got = quantize_fixed(torch.from_numpy(x), wl, fl, "stochastic",
                         noise=torch.from_numpy(r)).numpy()
    # the float32 sum x*2^FL + r is what the tensor path rounds; reproduce it in float32
    u = (x.astype(np.float32) * np.float32(2.0 ** fl) + r).astype(np.float32)
    lo, hi = int_limits(wl)
    want = (np.clip(np.floor(u.astype(np.float64)), lo, hi) / 2.0 ** fl).astype(np.float32)
    np.testing.assert_array_equal(got, want)


def test_ties_round_to_even_and_saturate():
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, 1000.0, -1000.0])
    got = quantize_fixed(x, 4, 0)
    assert got.tolist() == [0.0, 2.0, 2.0, -0.0, -2.0, 7.0, -8.0]


def test_stochastic_rounding_is_unbiased_and_stays_on_neighbours():
    x = torch.full((200_000,), 0.3)
    gen = torch.Generator().manual_seed(0)
    q = quantize_fixed(x, 8, 2, "stochastic", generator=gen)
    assert set(q.unique().tolist()) == {0.25, 0.5}
    p_up = float((q == 0.5).float().mean())  # expected (0.3 - 0.25) / 0.25 = 0.2
    assert abs(p_up - 0.2) < 4 * math.sqrt(0.2 * 0.8 / x.numel())
    assert abs(float(q.mean()) - 0.3) < 1e-3


@settings(max_examples=200, deadline=None)
@given(st.floats(1e-6, 1e6), st.integers(2, 32))
def test_frac_bits_fit_the_largest_magnitude_exactly(m, wl):
    fl = frac_bits_for(m, wl)
    hi = 2 ** (wl - 1) - 1
    assert hi * 2.0 ** -fl >= m          # fits
    assert hi * 2.0 ** -(fl + 1) < m     # one more fractional bit would saturate


def test_frac_bits_edge_cases():
    assert frac_bits_for(0.0, 8) == 7
    assert frac_bits_for(1.0, 8) == 6
    assert frac_bits_for(127.0, 8) == 0
    assert frac_bits_for(128.0, 8) == -1
    with pytest.raises(ValueError):
        frac_bits_for(float("inf"), 8)
    with pytest.raises(ValueError):
        int_limits(1)
    assert vanish_threshold(3) == 2.0 ** -4


def test_fixed_grad_is_identity_forward_and_quantizes_backward():
    x = torch.tensor([0.1, -0.2, 0.3], requires_grad=True)
    y = fixed_grad(x, 4, "nearest")
    assert torch.equal(y, x)
    g = torch.tensor([0.11, -0.52, 0.97])
    y.backward(g)
    fl = frac_bits_for(0.97, 4)
    assert torch.equal(x.grad, quantize_fixed(g, 4, fl))
