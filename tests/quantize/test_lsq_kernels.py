import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from quantize import lsq_kernels
from quantize.quantizers import _LSQFunction


def _torch_forward(x, s, qmin, qmax):
    return (x / s).round().clamp(qmin, qmax) * s


def _torch_backward(x, s, grad, qmin, qmax, per_channel):
    u = x / s
    inside = (u >= qmin) & (u <= qmax)
    coef = torch.where(inside, u.round().clamp(qmin, qmax) - u, u.round().clamp(qmin, qmax))
    dims = tuple(range(1 if per_channel else 0, x.dim()))
    return grad * inside, (coef * grad).sum(dim=dims) if dims else coef * grad


def _case(seed, dtype, per_channel, shape, qmin, qmax):
    """Inputs around and beyond the range, exact ties (k + 1/2) * s, zeros, non-finite
    values; one step per channel (dim 0) or one for all."""
    rng = np.random.default_rng(seed)
    c = shape[0] if per_channel else 1
    s = rng.uniform(0.01, 2.0, c)
    sb = s.reshape(-1, *[1] * (len(shape) - 1)) if per_channel else s[0]
    k = rng.integers(qmin - 3, qmax + 4, shape).astype(np.float64)
    x = np.where(rng.random(shape) < 0.3, (k + 0.5) * sb,
                 rng.uniform(qmin - 5, qmax + 5, shape) * sb)
    x[rng.random(shape) < 0.05] = 0.0
    flat = x.reshape(-1)
    if flat.size > 4:
        flat[:3] = [np.nan, np.inf, -np.inf]
    step = torch.tensor(s if per_channel else s[0], dtype=dtype)
    return torch.tensor(x, dtype=dtype), step


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2 ** 32 - 1), st.sampled_from([torch.float32, torch.float64]),
       st.booleans(), st.lists(st.integers(1, 9), min_size=1, max_size=4),
       st.sampled_from([(0, 255), (-128, 127), (-7, 7), (0, 1), (-1, 0)]))
def test_kernels_equal_torchs_formulas(seed, dtype, per_channel, shape, rng_q):
    """Forward and input gradient bit for bit (ties to even, NaN kept, +-inf and NaN outside
    the range), the step gradient to float rounding, per tensor and per channel."""
    qmin, qmax = rng_q
    x, step = _case(seed, dtype, per_channel, tuple(shape), qmin, qmax)
    s = step.view(-1, *[1] * (x.dim() - 1)) if per_channel else step
    got = lsq_kernels.forward(x, step, qmin, qmax)
    assert got.dtype == dtype and got.shape == x.shape
    torch.testing.assert_close(got, _torch_forward(x, s, qmin, qmax), rtol=0, atol=0,
                               equal_nan=True)
    grad = torch.tensor(np.random.default_rng(seed + 1).normal(size=x.shape), dtype=dtype)
    gx, gs = lsq_kernels.backward(x, step, grad, qmin, qmax, True)
    want_gx, want_gs = _torch_backward(x, s, grad, qmin, qmax, per_channel)
    torch.testing.assert_close(gx, want_gx, rtol=0, atol=0, equal_nan=True)
    assert gs.shape == step.shape
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(gs, want_gs.reshape(step.shape), rtol=tol, atol=tol,
                               equal_nan=True)
    none, gs2 = lsq_kernels.backward(x, step, grad, qmin, qmax, False)
    assert none is None
    torch.testing.assert_close(gs2, gs, rtol=0, atol=0, equal_nan=True)


def test_many_blocks_and_a_transposed_gradient():
    """Tensors of several parallel tasks per channel, a gradient that is not contiguous."""
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.normal(size=(3, 5, 80, 90)) * 4, dtype=torch.float32)
    step = torch.tensor([0.05, 0.1, 0.02], dtype=torch.float32)
    grad = torch.tensor(rng.normal(size=(3, 5, 90, 80)), dtype=torch.float32).transpose(2, 3)
    assert not grad.is_contiguous() and x[0].numel() > 2 * lsq_kernels._BLOCK
    s = step.view(-1, 1, 1, 1)
    assert torch.equal(lsq_kernels.forward(x, step, -8, 7), _torch_forward(x, s, -8, 7))
    gx, gs = lsq_kernels.backward(x, step, grad, -8, 7, True)
    want_gx, want_gs = _torch_backward(x, s, grad, -8, 7, True)
    assert torch.equal(gx, want_gx)
    torch.testing.assert_close(gs, want_gs, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("dtype, kernels", [(torch.float32, True), (torch.bfloat16, False)])
def test_the_autograd_node_takes_the_kernels_where_usable(monkeypatch, dtype, kernels):
    """`_LSQFunction` runs the kernels on CPU float32/float64, torch's ops otherwise (here
    bfloat16), with the same values and gradients either way."""
    calls = []
    real = lsq_kernels.forward
    monkeypatch.setattr(lsq_kernels, "forward", lambda *a: calls.append(1) or real(*a))
    x = (torch.linspace(-3, 3, 64, dtype=dtype).reshape(4, 16) * 7).requires_grad_(True)
    step = torch.tensor(0.5, dtype=dtype, requires_grad=True)
    y = _LSQFunction.apply(x, step, 0.25, -8, 7)
    (y * torch.arange(64, dtype=dtype).reshape(4, 16)).sum().backward()
    assert bool(calls) == kernels
    xd = x.detach()
    assert torch.equal(y.detach(), _torch_forward(xd, step.detach(), -8, 7))
    want_gx, want_gs = _torch_backward(xd, step.detach(),
                                       torch.arange(64, dtype=dtype).reshape(4, 16), -8, 7,
                                       False)
    assert torch.equal(x.grad, want_gx)
    torch.testing.assert_close(step.grad, want_gs * 0.25, rtol=1e-2, atol=1e-2)
