"""Tests of quantize/quantizers.py against the closed forms of docs/methods.md.

Every gradient test writes the formula out again here (float64, independent of the module's
helpers) and compares it with what autograd produces through the quantizer.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from quantize.quantizers import (
    DSQ_ALPHA_BOUNDS,
    METHODS,
    DSQQuantizer,
    LGLSQQuantizer,
    LSQQuantizer,
    Quantizer,
    asr_min_slope,
    asr_round,
    asr_slope,
    default_k_grid,
    make_quantizer,
    quantizer_parameters,
)

FAST = settings(max_examples=40, deadline=None)

# (signed, narrow) triples covering the three integer ranges.
RANGES = [(True, True), (True, False), (False, False)]


def qrange(bits: int, signed: bool, narrow: bool) -> tuple[int, int]:
    """Integer range written out independently of npusim.ir.arith."""
    if not signed:
        return 0, 2**bits - 1
    hi = 2 ** (bits - 1) - 1
    return (-hi if narrow else -hi - 1), hi


def bview(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return t if t.dim() == 0 else t.view(-1, *([1] * (x.dim() - 1)))


def sum_per_channel(t: torch.Tensor, per_channel: bool) -> torch.Tensor:
    return t.reshape(t.shape[0], -1).sum(dim=1) if per_channel else t.sum()


def tensor_from(seed: int, shape: tuple[int, ...], spread: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64) * spread


def asr_slope_ref(u: torch.Tensor, k: float) -> torch.Tensor:
    r = u - torch.floor(u) - 0.5
    return k / (2.0 * math.atan(k / 2.0) * (1.0 + (k * r) ** 2))


def build(method: str, bits: int, signed: bool, narrow: bool, per_channel: bool,
          channels: int, **opts) -> Quantizer:
    q = make_quantizer(method, bits, signed, narrow, per_channel, channels, **opts)
    return q.double().train()


# ----------------------------------------------------------------------------------------------
# Forward: the hard grid, int_repr, broadcast
# ----------------------------------------------------------------------------------------------

CASES = [
    # (shape, per_channel, role)
    ((6, 3, 3, 3), True, "weight"),
    ((5, 7), True, "weight"),
    ((4, 3, 5, 5), False, "activation"),
    ((9, 11), False, "weight"),
]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("signed,narrow", RANGES)
@pytest.mark.parametrize("shape,per_channel,role", CASES)
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_forward_on_grid(method, signed, narrow, shape, per_channel, role, bits):
    torch.manual_seed(0)
    q = make_quantizer(method, bits, signed, narrow, per_channel, shape[0], role=role).train()
    x = (torch.randn(shape) * 2.0).requires_grad_(True)
    x_hat = q(x)
    assert x_hat.shape == x.shape and x_hat.dtype == torch.float32
    s = q.scale()
    assert s.shape == ((shape[0],) if per_channel else ())
    assert bool(torch.all(s > 0))
    ratio = (x_hat / bview(s, x)).detach().double()
    assert torch.allclose(ratio, torch.round(ratio), rtol=1e-5, atol=1e-5)
    lo, hi = qrange(bits, signed, narrow)
    assert torch.round(ratio).min() >= lo and torch.round(ratio).max() <= hi
    ints = q.int_repr(x)
    assert ints.dtype == torch.int64
    assert torch.equal(ints, torch.round(ratio).long())
    assert int(ints.min()) >= lo and int(ints.max()) <= hi
    # The forward value is bit-exactly scale * int_repr, with the scale broadcast on axis 0.
    assert torch.equal(x_hat.detach(), ints.to(s.dtype) * bview(s, x))
    # The backward reaches the input.
    x_hat.sum().backward()
    assert x.grad is not None and bool(torch.all(torch.isfinite(x.grad)))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", [(4, 3, 2, 2), (4, 6)])
def test_per_channel_broadcast_matches_row_by_row(method, shape):
    torch.manual_seed(1)
    w = torch.randn(shape) * torch.tensor([0.1, 1.0, 5.0, 0.01]).view(-1, *([1] * (len(shape) - 1)))
    q = make_quantizer(method, 4, True, True, True, shape[0]).eval()
    out = q(w)
    s = q.scale()
    assert len(set(s.tolist())) == 4  # genuinely different scales per channel
    for c in range(shape[0]):
        expect = torch.round(w[c] / s[c]).clamp(q.qmin, q.qmax) * s[c]
        assert torch.equal(out[c], expect)
    assert torch.equal(q.int_repr(w)[2], torch.round(w[2] / s[2]).clamp(q.qmin, q.qmax).long())


@pytest.mark.parametrize("method", METHODS)
def test_eval_forward_equals_training_value_and_skips_graph(method):
    torch.manual_seed(2)
    q = make_quantizer(method, 3, False)
    x = torch.rand(8, 5) * 4
    q.init_from(x)
    q.eval()
    with torch.no_grad():
        a = q(x)
    assert not a.requires_grad
    b = q(x.requires_grad_(True))
    assert torch.equal(a, b.detach())


def test_per_channel_rejects_wrong_axis():
    q = make_quantizer("lsq", 4, True, True, True, 3)
    with pytest.raises(ValueError, match="axis 0"):
        q(torch.randn(4, 2))


# ----------------------------------------------------------------------------------------------
# LSQ gradients
# ----------------------------------------------------------------------------------------------


def lsq_grad_scale(q: Quantizer, x: torch.Tensor) -> float:
    n = x.numel() // x.shape[0] if (q.role == "activation" or q.per_channel) else x.numel()
    return 1.0 / math.sqrt(n * q.qmax)


@st.composite
def lsq_setup(draw):
    bits = draw(st.integers(2, 8))
    signed, narrow = draw(st.sampled_from(RANGES))
    per_channel = draw(st.booleans())
    role = "weight" if per_channel else draw(st.sampled_from(["weight", "activation"]))
    shape = draw(st.sampled_from([(3, 4), (2, 3, 2, 2), (5, 6)]))
    seed = draw(st.integers(0, 2**31 - 1))
    factor = draw(st.floats(0.05, 4.0))
    return bits, signed, narrow, per_channel, role, shape, seed, factor


def run_grads(q: Quantizer, x: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = x.clone().requires_grad_(True)
    out = q(x)
    up = tensor_from(seed + 1, tuple(x.shape), 1.0)
    (out * up).sum().backward()
    return out, x.grad, up


@FAST
@given(lsq_setup())
def test_lsq_gradients_match_closed_form(setup):
    bits, signed, narrow, per_channel, role, shape, seed, factor = setup
    q = build("lsq", bits, signed, narrow, per_channel, shape[0], role=role)
    x = tensor_from(seed, shape)
    q.init_from(x)
    with torch.no_grad():
        q.step.mul_(factor)  # move off the init so every region (clipped or not) occurs
    out, dx, up = run_grads(q, x, seed)
    s = bview(q.step.detach(), x)
    u = x / s
    lo, hi = qrange(bits, signed, narrow)
    inside = (u >= lo) & (u <= hi)
    assert torch.equal(out.detach(), torch.round(u).clamp(lo, hi) * s)
    torch.testing.assert_close(dx, up * inside, rtol=1e-12, atol=1e-12)
    coef = torch.where(u < lo, float(lo), torch.where(u > hi, float(hi), torch.round(u) - u))
    ds = sum_per_channel(up * coef, per_channel) * lsq_grad_scale(q, x)
    torch.testing.assert_close(q.step.grad, ds, rtol=1e-10, atol=1e-12)


@FAST
@given(lsq_setup())
def test_lsq_matches_reference_autograd_implementation(setup):
    """Esser et al.'s code: grad_scale + round_pass through torch.clamp."""
    bits, signed, narrow, per_channel, role, shape, seed, factor = setup
    q = build("lsq", bits, signed, narrow, per_channel, shape[0], role=role)
    x = tensor_from(seed, shape)
    q.init_from(x)
    with torch.no_grad():
        q.step.mul_(factor)
    _, dx, up = run_grads(q, x, seed)

    step = q.step.detach().clone().requires_grad_(True)
    xr = x.clone().requires_grad_(True)
    g = lsq_grad_scale(q, x)
    s = (step - step * g).detach() + step * g
    s = bview(s, x)
    lo, hi = qrange(bits, signed, narrow)
    v = torch.clamp(xr / s, lo, hi)
    v = (v.round() - v).detach() + v
    ((v * s) * up).sum().backward()
    torch.testing.assert_close(dx, xr.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(q.step.grad, step.grad, rtol=1e-9, atol=1e-12)


def test_lsq_gradient_scale_definitions():
    w = make_quantizer("lsq", 4, True, True, True, 8)
    assert w.grad_scale(torch.zeros(8, 3, 3, 3)) == pytest.approx(1 / math.sqrt(27 * 7))
    wt = make_quantizer("lsq", 4, True, False, role="weight")
    assert wt.grad_scale(torch.zeros(8, 3, 3, 3)) == pytest.approx(1 / math.sqrt(216 * 7))
    a = make_quantizer("lsq", 4, False)
    assert a.grad_scale(torch.zeros(32, 16, 5, 5)) == pytest.approx(1 / math.sqrt(400 * 15))
    assert make_quantizer("lsq", 4, False, grad_scale=False).grad_scale(torch.zeros(3, 4)) == 1.0


# ----------------------------------------------------------------------------------------------
# LG-LSQ: ASR, SSG, MDE
# ----------------------------------------------------------------------------------------------


@FAST
@given(lsq_setup(), st.floats(0.5, 50.0))
def test_asr_dx_matches_closed_form(setup, k):
    bits, signed, narrow, per_channel, role, shape, seed, factor = setup
    q = build("lglsq", bits, signed, narrow, per_channel, shape[0], role=role,
              asr=True, ssg=False, mde=False, k=k, asr_roles=("weight", "activation"),
              asr_unit_rms=False)
    k = float(q.k)  # the k the quantizer holds
    x = tensor_from(seed, shape)
    q.init_from(x)
    with torch.no_grad():
        q.step.mul_(factor)
    _, dx, up = run_grads(q, x, seed)
    s = bview(q.step.detach(), x)
    u = x / s
    lo, hi = qrange(bits, signed, narrow)
    inside = (u >= lo) & (u <= hi)
    torch.testing.assert_close(dx, up * inside * asr_slope_ref(u, k), rtol=1e-10, atol=1e-12)
    # ssg off: the step gradient is LSQ's.
    coef = torch.where(u < lo, float(lo), torch.where(u > hi, float(hi), torch.round(u) - u))
    ds = sum_per_channel(up * coef, per_channel) * lsq_grad_scale(q, x)
    torch.testing.assert_close(q.step.grad, ds, rtol=1e-10, atol=1e-12)


@FAST
@given(lsq_setup(), st.floats(0.5, 50.0))
def test_ssg_ds_matches_closed_form(setup, k):
    bits, signed, narrow, per_channel, role, shape, seed, factor = setup
    q = build("lglsq", bits, signed, narrow, per_channel, shape[0], role=role,
              asr=False, ssg=True, mde=False, k=k)
    k = float(q.k)  # the k the quantizer holds
    x = tensor_from(seed, shape)
    q.init_from(x)
    with torch.no_grad():
        q.step.mul_(factor)
    _, dx, up = run_grads(q, x, seed)
    s = bview(q.step.detach(), x)
    u = x / s
    lo, hi = qrange(bits, signed, narrow)
    inside = (u >= lo) & (u <= hi)
    torch.testing.assert_close(dx, up * inside, rtol=1e-12, atol=1e-12)  # asr off: STE
    inner = torch.round(u) - u * asr_slope_ref(u, k)
    coef = torch.where(u < lo, float(lo), torch.where(u > hi, float(hi), inner))
    ds = sum_per_channel(up * coef, per_channel) * lsq_grad_scale(q, x)
    torch.testing.assert_close(q.step.grad, ds, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("signed,narrow", RANGES)
def test_lglsq_with_everything_off_is_exactly_lsq(per_channel, signed, narrow):
    torch.manual_seed(3)
    shape = (4, 3, 3, 3)
    role = "weight" if per_channel else "activation"
    a = make_quantizer("lsq", 3, signed, narrow, per_channel, 4, role=role).train()
    b = make_quantizer("lglsq", 3, signed, narrow, per_channel, 4, role=role,
                       ssg=False, asr=False, mde=False).train()
    x = torch.randn(shape) * 2
    up = torch.randn(shape)
    results = []
    for q in (a, b):
        xi = x.clone().requires_grad_(True)
        for _ in range(3):  # several steps: init, then a moved step
            xi.grad = None
            q.step.grad = None
            out = q(xi)
            (out * up).sum().backward()
            results.append((out.detach().clone(), xi.grad.clone(), q.step.grad.clone()))
            with torch.no_grad():
                q.step.sub_(0.5 * q.step.grad)
    n = len(results) // 2
    for (oa, xa, sa), (ob, xb, sb) in zip(results[:n], results[n:]):
        assert torch.equal(oa, ob) and torch.equal(xa, xb) and torch.equal(sa, sb)


@pytest.mark.parametrize("k", [0.5, 2.0, 7.0, 50.0])
def test_asr_properties(k):
    f = torch.arange(-5, 6, dtype=torch.float64)
    # Equal to u at integers and half-integers.
    torch.testing.assert_close(asr_round(f, k), f, rtol=0, atol=1e-12)
    torch.testing.assert_close(asr_round(f + 0.5, k), f + 0.5, rtol=0, atol=1e-12)
    # Average slope over a unit interval is 1 (composite Simpson on a fine grid).
    n = 200_000
    u = torch.linspace(2.0, 3.0, n + 1, dtype=torch.float64)[:-1]
    u = torch.cat([u, torch.tensor([3.0 - 1e-15], dtype=torch.float64)])
    y = asr_slope(u, k)
    w = torch.ones(n + 1, dtype=torch.float64)
    w[1:-1:2], w[2:-1:2] = 4.0, 2.0
    assert float((w * y).sum() / (3 * n)) == pytest.approx(1.0, abs=1e-6)
    # Positive everywhere, smallest at r = +-0.5, equal to the closed form there.
    dense = torch.linspace(-4, 4, 100_001, dtype=torch.float64)
    sl = asr_slope(dense, k)
    assert bool(torch.all(sl > 0))
    assert float(sl.min()) == pytest.approx(float(asr_min_slope(k)), rel=1e-9)
    assert float(asr_min_slope(k)) == pytest.approx(k / (2 * math.atan(k / 2) * (1 + k * k / 4)))
    # Increasing, and the slope is the derivative of the soft round (autograd agrees).
    assert bool(torch.all(torch.diff(asr_round(dense, k)) > 0))
    uu = (torch.rand(1000, dtype=torch.float64) * 8 - 4).requires_grad_(True)
    asr_round(uu, k).sum().backward()
    torch.testing.assert_close(uu.grad, asr_slope_ref(uu.detach(), k), rtol=1e-12, atol=1e-12)


def test_asr_tends_to_round_as_k_grows():
    u = torch.rand(10_000, dtype=torch.float64) * 10 - 5
    errs = [float((asr_round(u, k) - torch.round(u)).abs().mean()) for k in (1, 10, 100, 1000)]
    assert errs == sorted(errs, reverse=True) and errs[-1] < 1e-2


def mde_bruteforce(u: np.ndarray, grid: np.ndarray, min_slope: float, objective: str) -> float:
    """Plain NumPy: argmin E(k) over grid values whose minimum ASR slope meets the floor."""
    best_k, best_e = None, math.inf
    for k in grid:
        slope_min = min(k / (2 * math.atan(k / 2) * (1 + (k * r) ** 2)) for r in (-0.5, 0.5))
        if slope_min < min_slope:
            continue
        f = np.floor(u)
        r = u - f - 0.5
        asr = f + 0.5 + np.arctan(k * r) / (2 * math.atan(k / 2))
        e = float(np.mean((asr - np.round(u)) ** 2))
        if objective == "balanced":
            e += float(np.mean((asr - u) ** 2))
        if e < best_e:
            best_k, best_e = float(k), e
    return best_k


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), min_slope=st.floats(0.01, 0.5),
       spread=st.floats(0.2, 20.0), objective=st.sampled_from(["balanced", "round"]))
def test_mde_search_minimises_error_subject_to_slope_floor(seed, min_slope, spread, objective):
    grid = default_k_grid()
    q = build("lglsq", 4, False, False, False, 1, min_slope=min_slope, asr=True, ssg=True,
              mde_objective=objective)
    x = tensor_from(seed, (16, 20), spread).abs()
    q(x)
    s = float(q.scale())
    u = (x / s).numpy().ravel()
    u = u[(u >= q.qmin) & (u <= q.qmax)]
    want = mde_bruteforce(u, grid.numpy(), min_slope, objective)
    assert float(q.k) == pytest.approx(want, rel=1e-9)
    # Feasibility: the chosen k's minimum slope meets the floor.
    assert float(asr_min_slope(float(q.k))) >= min_slope


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), spread=st.floats(0.05, 20.0))
def test_round_mde_error_is_non_increasing_in_k(seed, spread):
    """Why the first design's search always landed on the largest feasible k: each
    |ASR_k(u) - round(u)| shrinks with k, so E(k) is non-increasing."""
    q = make_quantizer("lglsq", 4, True, mde_objective="round")
    u = tensor_from(seed, (4000,), spread)
    e = q.mde_error(u, default_k_grid())
    assert bool(torch.all(torch.diff(e) <= 1e-15))


def test_round_mde_picks_largest_feasible_k_off_grid_and_smallest_on_ties():
    grid = default_k_grid()
    feasible = grid[asr_min_slope(grid) >= 0.05]
    q = build("lglsq", 4, False, False, False, 1, min_slope=0.05, mde_objective="round")
    q(torch.rand(32, 8, dtype=torch.float64) * 4)
    assert float(q.k) == pytest.approx(float(feasible.max()))
    # Data exactly on the grid: ASR_k(u) == round(u) for every k, E ties at 0 -> smallest k.
    q2 = build("lglsq", 4, False, False, False, 1, min_slope=0.05, mde_objective="round")
    q2.init_from(torch.ones(4, 4, dtype=torch.float64))
    s = float(q2.scale())
    x = torch.randint(0, 16, (8, 8)).double() * s
    q2(x)
    assert float(q2.k) == pytest.approx(float(feasible.min()))


def _mde_k(u: torch.Tensor) -> float:
    """The k the default (balanced) MDE search picks for the scaled values `u` (step 1)."""
    q = build("lglsq", 4, True, False, False, 1, role="activation", min_slope=0.01)
    q.init_from(torch.ones(4, dtype=torch.float64))
    with torch.no_grad():
        q.step.fill_(1.0)
    q(u)
    return float(q.k)


def test_balanced_mde_choice_depends_on_the_data_and_is_interior():
    """Values near integers want a gentle ASR, values near half-integers a sharp one; neither
    choice is an end of the grid (the first design always returned the grid's largest k)."""
    g = torch.Generator().manual_seed(0)
    base = torch.randint(-5, 5, (20000,), generator=g).double()
    jitter = 0.1 * torch.randn(20000, generator=g, dtype=torch.float64)
    near_int, near_mid = _mde_k(base + jitter), _mde_k(base + 0.5 + jitter)
    uniform = _mde_k(torch.rand(20000, generator=g, dtype=torch.float64) * 10 - 5)
    grid = default_k_grid()
    feasible = grid[asr_min_slope(grid) >= 0.01]
    assert near_int < uniform < near_mid
    for k in (near_int, uniform, near_mid):
        assert float(feasible.min()) < k < float(feasible.max())


def test_asr_on_activations_rescaled_to_unit_rms():
    x = torch.rand(64, 8, dtype=torch.float64) * 3
    q = build("lglsq", 2, False, False, False, 1, role="activation", asr=True, ssg=False,
              mde=False, k=20.0, asr_roles=("weight", "activation"))
    q.init_from(x)
    xi = x.clone().requires_grad_(True)
    q(xi).sum().backward()
    u = x / q.scale()
    inside = (u >= q.qmin) & (u <= q.qmax)
    g = xi.grad[inside]
    assert float(g.pow(2).mean().sqrt()) == pytest.approx(1.0, rel=1e-9)
    assert bool(torch.all(xi.grad[~inside] == 0))
    # Not an activation ASR by default: weights only.
    d = make_quantizer("lglsq", 2, False, role="activation", mde=False)
    xd = x.clone().requires_grad_(True)
    d(xd).sum().backward()
    ud = x / d.scale()
    assert bool(torch.all(xd.grad[(ud >= d.qmin) & (ud <= d.qmax)] == 1.0))


def test_mde_runs_every_n_training_steps_only():
    q = build("lglsq", 4, False, False, False, 1, mde_every=3, k=2.0)
    x = torch.rand(8, 8, dtype=torch.float64) * 3
    q.init_from(x)
    q.eval()
    q(x)
    assert float(q.k) == 2.0  # eval never searches
    q.train()
    q(x)
    k1 = float(q.k)
    assert k1 != 2.0
    q.k.fill_(2.0)
    q(x)
    q(x)
    assert float(q.k) == 2.0  # steps 1 and 2 skip the search
    q(x)
    assert float(q.k) == k1


def test_mde_anneal_schedule():
    q = make_quantizer("lglsq", 4, False, mde_mode="anneal", k=2.0, k_final=20.0)
    assert float(q.k) == pytest.approx(2.0)
    q.set_progress(0.5)
    assert float(q.k) == pytest.approx(math.sqrt(2.0 * 20.0))
    q.set_progress(1.0)
    assert float(q.k) == pytest.approx(20.0)
    q.set_progress(3.0)  # clipped
    assert float(q.k) == pytest.approx(20.0)
    q.train()(torch.rand(4, 4))
    assert float(q.k) == pytest.approx(20.0)  # anneal mode never searches
    lsq = make_quantizer("lsq", 4, False)
    lsq.set_progress(0.5)  # a no-op everywhere else, so a trainer can call it on all


# ----------------------------------------------------------------------------------------------
# PACT
# ----------------------------------------------------------------------------------------------


@FAST
@given(st.integers(2, 8), st.sampled_from(RANGES), st.booleans(), st.integers(0, 2**31 - 1),
       st.floats(0.2, 5.0))
def test_pact_gradients_match_closed_form(bits, rng, per_channel, seed, alpha0):
    signed, narrow = rng
    shape = (3, 5, 4)
    role = "weight" if per_channel else "activation"
    q = build("pact", bits, signed, narrow, per_channel, 3, role=role, alpha_init=alpha0)
    x = tensor_from(seed, shape)
    out, dx, up = run_grads(q, x, seed)
    a = bview(q.alpha.detach(), x)
    s = a / q.qmax
    qlo = -q.qmax if signed else 0
    assert torch.equal(out.detach(), torch.round(x / s).clamp(qlo, q.qmax) * s)
    above = x >= a
    below = (x <= -a) if signed else torch.zeros_like(above)
    inside = ~above & ((x > -a) if signed else (x >= 0))
    torch.testing.assert_close(dx, up * inside, rtol=0, atol=0)
    da = sum_per_channel(up * above - up * below, per_channel)
    torch.testing.assert_close(q.alpha.grad, da, rtol=1e-12, atol=1e-12)


def test_pact_init_from_first_batch_percentile():
    x = torch.arange(1, 1001, dtype=torch.float32).view(10, 100)
    q = make_quantizer("pact", 4, False)
    q(x)
    assert float(q.alpha.detach()) == pytest.approx(999.0)  # nearest-rank 99.9th percentile
    q(x * 10)
    assert float(q.alpha.detach()) == pytest.approx(999.0)  # only the first batch initialises
    w = torch.randn(3, 4)
    qw = make_quantizer("pact", 4, True, True, True, 3)
    qw.init_from(w)
    torch.testing.assert_close(qw.alpha.detach(), w.abs().amax(dim=1))


# ----------------------------------------------------------------------------------------------
# DSQ
# ----------------------------------------------------------------------------------------------


@FAST
@given(st.integers(2, 6), st.sampled_from(RANGES), st.booleans(), st.integers(0, 2**31 - 1),
       st.floats(0.01, 0.99), st.floats(0.3, 3.0))
def test_dsq_dx_matches_closed_form_and_forward_is_hard(bits, rng, per_channel, seed, alpha,
                                                         factor):
    signed, narrow = rng
    shape = (3, 4, 5)
    role = "weight" if per_channel else "activation"
    q = build("dsq", bits, signed, narrow, per_channel, 3, role=role, alpha_init=alpha)
    x = tensor_from(seed, shape)
    q.init_from(x)
    with torch.no_grad():
        q.upper.mul_(factor)
    out, dx, up = run_grads(q, x, seed)
    alpha = float(q.alpha.detach())  # as stored (float64 after .double(); the init was float32)
    lo, hi = qrange(bits, signed, narrow)
    uu = bview(q.upper.detach(), x)
    delta = uu / hi
    l = lo * delta
    # Hard forward, unchanged by the soft backward.
    assert torch.equal(out.detach(), torch.round(x / delta).clamp(lo, hi) * delta)
    k = math.log(2 / alpha - 1) / delta
    s = 1 / (1 - alpha)
    i = torch.floor((x - l) / delta).clamp(0, hi - lo - 1)
    m = l + (i + 0.5) * delta
    deriv = (delta / 2) * s * k * (1 - torch.tanh(k * (x - m)) ** 2)
    inside = (x >= l) & (x <= uu)
    torch.testing.assert_close(dx, up * torch.where(inside, deriv, 0.0), rtol=1e-9, atol=1e-12)
    assert bool(torch.all(torch.isfinite(q.upper.grad))) and bool(torch.isfinite(q.alpha.grad))
    # s = 1/tanh(k Delta / 2) (the paper's definition) equals 1/(1 - alpha).
    torch.testing.assert_close(1 / torch.tanh(k * delta / 2), torch.full_like(k, s))


def test_dsq_soft_curve_passes_through_grid_points():
    q = make_quantizer("dsq", 3, True, narrow=True, alpha_init=0.3, role="weight").double()
    q.init_from(torch.tensor([-2.0, 2.0], dtype=torch.float64))
    d = float(q.scale())
    grid = torch.arange(q.qmin, q.qmax + 1, dtype=torch.float64) * d
    torch.testing.assert_close(q.soft(grid), grid, rtol=0, atol=1e-12)
    # Smaller alpha: closer to the hard quantizer; alpha near 1: nearly the identity.
    x = torch.linspace(-1.9, 1.9, 10001, dtype=torch.float64)
    hard = torch.round(x / d) * d
    gaps = []
    with torch.no_grad():
        for a in (0.5, 0.2, 1e-2, 1e-4):
            q.alpha.fill_(a)
            gaps.append(float((q.soft(x) - hard).abs().mean()))
        q.alpha.fill_(0.999)
        near_id = float((q.soft(x) - x).abs().max())
    assert gaps == sorted(gaps, reverse=True) and gaps[-1] < 0.1 * d and gaps[0] > 0.2 * d
    assert near_id < 1e-3 * d


def test_dsq_init_and_parameters():
    w = torch.randn(5, 3, 2, 2)
    q = make_quantizer("dsq", 4, True, True, True, 5, init="range")
    q.init_from(w)
    torch.testing.assert_close(q.upper.detach(), w.abs().reshape(5, -1).amax(dim=1))
    torch.testing.assert_close(q.scale(), q.upper.detach() / 7)
    assert float(q.alpha.detach()) == pytest.approx(0.2)
    assert [id(p) for p in q.quant_parameters()] == [id(q.upper), id(q.alpha)]
    a = make_quantizer("dsq", 4, False, init_percentile=50.0, init="range")
    a(torch.arange(0, 101, dtype=torch.float32).view(1, 101))
    assert float(a.upper.detach()) == pytest.approx(50.0)


def test_dsq_mse_init_is_the_least_squared_error_candidate():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(4, 200, generator=g, dtype=torch.float64)
    q = make_quantizer("dsq", 2, True, True, True, 4).double()
    q.init_from(w)
    top = w.abs().amax(dim=1)
    for c in range(4):
        def err(u):
            d = u / q.qmax
            return float(((torch.round(w[c] / d).clamp(q.qmin, q.qmax) * d - w[c]) ** 2).sum())
        best = min((err(top[c] * i / 64), i) for i in range(1, 65))
        assert float(q.upper[c].detach()) == pytest.approx(float(top[c]) * best[1] / 64, rel=1e-12)
        assert float(q.upper[c].detach()) < float(top[c])  # Gaussian weights: the max is never best
    # More non-zero 2-bit weights than from the max (the first design's init).
    nz = float((q.int_repr(w) != 0).double().mean())
    r = make_quantizer("dsq", 2, True, True, True, 4, init="range").double()
    assert nz > float((r.int_repr(w) != 0).double().mean()) + 0.2


def test_dsq_gradient_scaling_is_lsq_g_and_alpha_mult():
    x = torch.randn(8, 3, 4, 4, dtype=torch.float64)
    grads = {}
    for gs in (False, True):
        q = make_quantizer("dsq", 3, False, role="activation", grad_scale=gs,
                           alpha_grad_mult=10.0).double()
        q.init_from(x.abs())
        q(x.abs().requires_grad_(True)).pow(2).sum().backward()
        grads[gs] = (q.upper.grad.clone(), q.alpha.grad.clone())
    n = 3 * 4 * 4
    torch.testing.assert_close(grads[True][0], grads[False][0] / math.sqrt(n * 7))
    torch.testing.assert_close(grads[True][1], grads[False][1] * 10 / math.sqrt(n))


def test_dsq_alpha_and_upper_move_under_training():
    """A short fit of a 2-bit DSQ quantizer to its input: alpha and u leave their init."""
    torch.manual_seed(0)
    w = torch.randn(8, 64, dtype=torch.float64)
    q = make_quantizer("dsq", 2, True, False, True, 8, alpha_grad_mult=10.0).double()
    q.init_from(w)
    u0, a0 = q.upper.detach().clone(), float(q.alpha.detach())
    wp = torch.nn.Parameter(w.clone())
    opt = torch.optim.SGD([wp, *q.quant_parameters()], lr=0.01, momentum=0.9)
    target = torch.randn(8, 64, dtype=torch.float64)
    for _ in range(200):
        opt.zero_grad()
        ((q(wp) - target) ** 2).mean().backward()
        opt.step()
    assert abs(float(q.alpha.detach()) - a0) > 0.01
    assert float((q.upper.detach() - u0).abs().max() / u0.abs().max()) > 0.01


# ----------------------------------------------------------------------------------------------
# Robustness under adversarial updates
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("direction", [1.0, -1.0])
@pytest.mark.parametrize("method", ["dsq", "lsq", "lglsq", "pact"])
def test_parameters_stay_valid_under_adversarial_updates(method, direction):
    torch.manual_seed(4)
    q = make_quantizer(method, 4, True, True, True, 4).train()
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    opt = torch.optim.SGD(q.quant_parameters(), lr=1e6)
    for step in range(100):
        opt.zero_grad()
        out = q(w)
        (direction * (out * w).sum()).backward()
        if step % 2:  # and every other step a huge raw push, whatever the loss says
            for p in q.quant_parameters():
                p.grad = torch.full_like(p, direction * 1e3)
        opt.step()
        s = q.scale()
        assert bool(torch.all(s > 0)) and bool(torch.all(torch.isfinite(s)))
        if isinstance(q, DSQQuantizer):
            a = q.alpha_value()
            lo, hi = (torch.tensor(b, dtype=a.dtype) for b in DSQ_ALPHA_BOUNDS)
            assert 0.0 < lo <= a <= hi < 1.0
    out = q(w)
    assert bool(torch.all(torch.isfinite(out)))
    ratio = (out / q.scale().view(-1, 1, 1, 1)).detach().double()
    assert torch.allclose(ratio, torch.round(ratio), atol=1e-4)
    out.sum().backward()
    assert all(bool(torch.all(torch.isfinite(p.grad))) for p in q.quant_parameters())


def test_clamped_parameter_still_gets_gradient_to_recover():
    q = make_quantizer("lsq", 4, False).train()
    x = torch.rand(4, 8) * 3
    q.init_from(x)
    with torch.no_grad():
        q.step.fill_(-5.0)
    assert float(q.scale()) > 0
    q(x).sum().backward()
    assert float(q.step.grad) != 0.0  # straight-through: not stuck at the floor


# ----------------------------------------------------------------------------------------------
# Initialisation
# ----------------------------------------------------------------------------------------------


def test_lsq_init_per_tensor_and_per_channel():
    torch.manual_seed(5)
    w = torch.randn(6, 4, 3, 3) * torch.arange(1, 7).view(-1, 1, 1, 1)
    q = make_quantizer("lsq", 4, True, True, True, 6)
    assert not q.initialized()
    q(w)
    assert q.initialized()
    expect = 2 * w.abs().reshape(6, -1).mean(dim=1) / math.sqrt(7)
    torch.testing.assert_close(q.step.detach(), expect)
    qt = make_quantizer("lglsq", 3, True, role="weight")
    qt.init_from(w)
    torch.testing.assert_close(qt.step.detach(), 2 * w.abs().mean() / math.sqrt(3))


@pytest.mark.parametrize("training", [True, False])
def test_activation_init_from_first_batch_only(training):
    torch.manual_seed(6)
    q = make_quantizer("lsq", 4, False).train(training)
    x1 = torch.rand(8, 10) * 2
    q(x1)
    s1 = q.scale().clone()
    torch.testing.assert_close(s1, 2 * x1.abs().mean() / math.sqrt(15))
    q(torch.rand(8, 10) * 50)
    assert torch.equal(q.scale(), s1)


def test_ste_activation_ema_and_frozen_eval():
    q = make_quantizer("ste", 4, False).train()
    q(torch.full((2, 3), 3.0))
    assert float(q.scale()) == pytest.approx(3.0 / 15)  # first batch sets the range
    q(torch.full((2, 3), 13.0))
    assert float(q.scale()) == pytest.approx((0.9 * 3.0 + 0.1 * 13.0) / 15)
    s = q.scale().clone()
    q.eval()
    q(torch.full((2, 3), 100.0))
    assert torch.equal(q.scale(), s)
    # int_repr never moves the EMA.
    q.train()
    q.int_repr(torch.full((2, 3), 100.0))
    assert torch.equal(q.scale(), s)


def test_ste_percentile_range():
    q = make_quantizer("ste", 8, True, range="percentile", percentile=90.0)
    x = torch.arange(-100, 101, dtype=torch.float32).view(1, -1)
    q.train()(x)
    mag = x.abs().flatten().sort().values
    expect = mag[math.ceil(0.9 * mag.numel()) - 1]
    assert float(q.scale()) == pytest.approx(float(expect) / 127)


def test_ste_weight_scale_tracks_training():
    w = torch.nn.Parameter(torch.randn(3, 5))
    q = make_quantizer("ste", 4, True, True, True, 3)
    q(w)
    torch.testing.assert_close(q.scale(), w.detach().abs().amax(dim=1) / 7)
    with torch.no_grad():
        w.mul_(3.0)
    q(w)
    torch.testing.assert_close(q.scale(), w.detach().abs().amax(dim=1) / 7)
    assert q.quant_parameters() == []


# ----------------------------------------------------------------------------------------------
# Construction, validation, plumbing
# ----------------------------------------------------------------------------------------------


def test_make_quantizer_validation():
    with pytest.raises(ValueError, match="method"):
        make_quantizer("apot", 4, True)
    with pytest.raises(ValueError, match="method"):
        Quantizer(4, True, method="nope")
    for bad in (1, 17, 0, 4.0, True, "4"):
        with pytest.raises(ValueError, match="bits"):
            make_quantizer("lsq", bad, True)
    with pytest.raises(ValueError, match="momentun"):
        make_quantizer("ste", 4, False, momentun=0.1)
    with pytest.raises(ValueError, match="k_final"):
        make_quantizer("lsq", 4, False, k_final=3.0)  # an LG-LSQ option is not an LSQ option
    with pytest.raises(ValueError, match="mde_mode"):
        make_quantizer("lglsq", 4, False, mde_mode="random")
    with pytest.raises(ValueError, match="min_slope"):
        make_quantizer("lglsq", 4, False, min_slope=5.0)
    with pytest.raises(ValueError, match="alpha_init"):
        make_quantizer("dsq", 4, False, alpha_init=1.0)
    with pytest.raises(ValueError, match="range"):
        make_quantizer("ste", 4, False, range="mse")
    with pytest.raises(ValueError, match="role"):
        make_quantizer("lsq", 4, False, role="bias")
    with pytest.raises(ValueError, match="per_channel"):
        make_quantizer("lsq", 4, False, per_channel=True, channels=3, role="activation")
    with pytest.raises(ValueError, match="channels"):
        make_quantizer("lsq", 4, True, True, True, 0)
    assert make_quantizer("lsq", 2, True).qmax == 1
    assert make_quantizer("lsq", 16, False).qmax == 65535


def test_ranges_roles_and_dispatch():
    assert (make_quantizer("lsq", 4, True, True).qmin, make_quantizer("lsq", 4, True).qmin) == (-7, -8)
    assert (make_quantizer("lsq", 4, False).qmin, make_quantizer("lsq", 4, False).qmax) == (0, 15)
    assert make_quantizer("lsq", 4, True, True).role == "weight"
    assert make_quantizer("lsq", 4, True).role == "activation"
    q = Quantizer(4, False, method="dsq")
    assert isinstance(q, DSQQuantizer)
    assert isinstance(Quantizer(4, False), LSQQuantizer)
    assert isinstance(make_quantizer("lglsq", 4, False), LGLSQQuantizer)
    with pytest.raises(ValueError, match="method"):
        LSQQuantizer(4, False, method="dsq")


@pytest.mark.parametrize("method", METHODS)
def test_state_dict_roundtrip_and_deepcopy(method):
    torch.manual_seed(7)
    q = make_quantizer(method, 4, True, True, True, 3)
    w = torch.randn(3, 6)
    q(w)
    q2 = make_quantizer(method, 4, True, True, True, 3)
    q2.load_state_dict(q.state_dict())
    assert q2.initialized()
    assert torch.equal(q2(w), q(w)) and torch.equal(q2.int_repr(w), q.int_repr(w))
    q3 = copy.deepcopy(q)
    assert type(q3) is type(q) and torch.equal(q3(w), q(w))


def test_quantizer_parameters_collects_all_learned():
    model = torch.nn.ModuleDict({
        "a": make_quantizer("lsq", 4, False),
        "b": make_quantizer("dsq", 4, True, True, True, 2),
        "c": make_quantizer("ste", 4, False),
        "lin": torch.nn.Linear(2, 2),
    })
    ps = quantizer_parameters(model)
    assert [id(p) for p in ps] == [id(model["a"].step), id(model["b"].upper), id(model["b"].alpha)]
