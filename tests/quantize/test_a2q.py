"""Accumulator-aware training (A2Q / A2Q+): budgets by construction, export checks, and the
NPU never overflowing at the width a model was trained for."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from npusim.data import load_dataset
from npusim.hw.config import NPUConfig
from npusim.report.inspect import bounds_table
from npusim.sim.simulator import Simulator
from quantize import QuantConfig, QuantConfigError, QuantizeError, build_program
from quantize.a2q import A2QQuantizer, budget, l1_ball_projection, l1_budget_violations
from quantize.integer_eval import run_integer
from tests.quantize.test_export import make_q


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", "train"), load_dataset("digits", "test").subset(32)


# ------------------------------------------------------------------ budget formulas


@pytest.mark.parametrize("p, n", [(12, 4), (16, 4), (10, 2), (20, 8)])
def test_budgets_match_the_papers_at_zero_bias(p, n):
    zero = torch.zeros(1)
    # A2Q+ (unsigned inputs): the paper's relaxed (2^P - 2) / (2^N - 1)
    assert budget(p, 0, 2 ** n - 1, zero, plus=True).item() == (2 ** p - 2) // (2 ** n - 1)
    # A2Q, signed inputs: the paper's (2^(P-1) - 1) * 2^(1-N)
    assert budget(p, -2 ** (n - 1), 2 ** (n - 1) - 1, zero, plus=False).item() == \
        (2 ** (p - 1) - 1) // 2 ** (n - 1)
    # A2Q+, signed inputs: no relaxation
    assert budget(p, -2 ** (n - 1), 2 ** (n - 1) - 1, zero, plus=True).item() == \
        (2 ** (p - 1) - 1) // 2 ** (n - 1)
    # a bias takes its share
    b = torch.tensor([100.0])
    assert budget(p, 0, 2 ** n - 1, b, plus=False).item() == (2 ** (p - 1) - 1 - 100) // (2 ** n - 1)


def _project_reference(v: np.ndarray, r: float) -> np.ndarray:
    """Projection onto {||x||_1 <= r} by bisection on the soft threshold (independent of the
    sort-based closed form under test)."""
    if np.abs(v).sum() <= r:
        return v.copy()
    lo, hi = 0.0, float(np.abs(v).max())
    for _ in range(200):
        mid = (lo + hi) / 2
        if np.maximum(np.abs(v) - mid, 0).sum() > r:
            lo = mid
        else:
            hi = mid
    return np.sign(v) * np.maximum(np.abs(v) - hi, 0)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 5), st.integers(1, 40), st.integers(0, 2 ** 31 - 1),
       st.floats(0.01, 50.0))
def test_l1_ball_projection_matches_a_bisection_reference(c, k, seed, radius):
    v = np.random.default_rng(seed).normal(size=(c, k)) * np.random.default_rng(seed).uniform(0.1, 10)
    r = np.full(c, radius)
    got = l1_ball_projection(torch.from_numpy(v), torch.from_numpy(r)).numpy()
    for i in range(c):
        np.testing.assert_allclose(got[i], _project_reference(v[i], radius), atol=1e-7 * (1 + radius))
        assert np.abs(got[i]).sum() <= radius * (1 + 1e-9) + 1e-12


# ------------------------------------------------------------------ by construction


def _worst_running_sums(q: np.ndarray, bias: np.ndarray, xlo: int, xhi: int):
    """Largest and smallest running sum over every order: all positive (negative) terms first."""
    pos = np.maximum(q * xlo, q * xhi).clip(min=0).sum(axis=1)
    neg = np.minimum(q * xlo, q * xhi).clip(max=0).sum(axis=1)
    return bias + pos, bias + neg


@pytest.mark.parametrize("mode", ["a2q", "a2q+"])
@pytest.mark.parametrize("x_range", [(0, 15), (-8, 7), (0, 255)])
def test_budget_holds_after_every_step_under_adversarial_gradients(mode, x_range):
    torch.manual_seed(0)
    p, c = 12, 6
    wq = A2QQuantizer(4, True, narrow=True, per_channel=True, channels=c, role="weight",
                      acc_bits=p, mode=mode, x_range=x_range)
    w = torch.nn.Parameter(torch.randn(c, 3, 3, 3))
    wq.init_from(w.detach())
    bias = torch.randint(-300, 300, (c,))
    wq.set_bias_abs(bias.abs().float())
    new = wq.init_norm(w.detach())
    with torch.no_grad():
        w.copy_(new)
    opt = torch.optim.SGD([w, *wq.quant_parameters()], lr=1.0)
    gen = torch.Generator().manual_seed(1)
    for step in range(40):
        opt.zero_grad()
        wq(w).sum().backward()
        # adversarial gradients: huge random pushes on the weights, the norm always up and the
        # step down (a smaller step means larger integers)
        w.grad = torch.randn(w.shape, generator=gen) * 10.0
        wq.norm.grad = -torch.full_like(wq.norm, 100.0)
        wq.step.grad = wq.step.detach() * 0.5
        opt.step()
        q = wq.int_repr(w.detach())
        assert l1_budget_violations(q, bias, *x_range, p) == [], f"step {step}"
        hi, lo = _worst_running_sums(q.reshape(c, -1).numpy(), bias.numpy(), *x_range)
        assert hi.max() <= 2 ** (p - 1) - 1 and lo.min() >= -2 ** (p - 1)
    # the adversary drove every channel's learned norm past its budget: the clamp held
    assert bool((wq.norm.detach() > wq.scale() * wq.budgets()).all())
    # and the forward is the NPU's integers times the step
    torch.testing.assert_close(wq(w), wq.int_repr(w).float() * wq.scale().view(-1, 1, 1, 1))


def test_a2q_plus_uses_its_relaxed_budget():
    w = torch.randn(4, 128) * 0.3
    got = {}
    for mode in ("a2q", "a2q+"):
        wq = A2QQuantizer(4, True, narrow=True, per_channel=True, channels=4, role="weight",
                          acc_bits=12, mode=mode, x_range=(0, 15), init="scale")
        wq.init_from(w)
        wq.init_norm(w)
        got[mode] = wq.int_repr(w).abs().sum(dim=1)
        assert bool((got[mode] <= wq.budgets()).all())
    assert wq.budgets()[0].item() == 2 * 2047 // 15
    assert got["a2q+"].sum() > got["a2q"].sum()  # more of the weights survive


def test_a2q_options_are_validated():
    with pytest.raises(ValueError, match="acc_bits"):
        A2QQuantizer(4, True, narrow=True, per_channel=True, channels=2, acc_bits=1)
    with pytest.raises(ValueError, match="mode"):
        A2QQuantizer(4, True, narrow=True, per_channel=True, channels=2, mode="a2q++")
    with pytest.raises(ValueError, match="x_range"):
        A2QQuantizer(4, True, narrow=True, per_channel=True, channels=2, x_range=(1, 5))
    with pytest.raises(QuantConfigError, match="a2q.mode"):
        QuantConfig.from_json('{"a2q": {"mode": "x"}}')
    with pytest.raises(QuantConfigError, match="a2q.bias_frac"):
        QuantConfig.from_json('{"a2q": {"bias_frac": 1.5}}')
    # without A2Q the accumulator must still hold a product; with it, the budget does that
    with pytest.raises(QuantConfigError, match="acc_bits"):
        QuantConfig.make(acc_bits=10)
    assert QuantConfig.make(acc_bits=10, a2q={}).acc_bits == 10


def test_a2q_needs_an_lsq_style_method(digits):
    with pytest.raises(QuantizeError, match="a2q: needs an LSQ-style method"):
        make_q("resnet8", digits[0], QuantConfig(method="pact", acc_bits=16, a2q={}))


# ------------------------------------------------------------------ export and the NPU


def test_export_records_p_and_bounds_agree(digits):
    train, test = digits
    cfg = QuantConfig(weight_bits=4, act_bits=4, acc_bits=14, a2q={"mode": "a2q+"},
                      overrides=[{"pattern": "fc", "acc_bits": 16}])
    _, q = make_q("resnet8", train, cfg)
    prog = build_program(q)
    table = bounds_table(prog)
    expect = {n.name: (16 if n.name == "fc" else 14) for n in prog.nodes
              if n.op in ("conv2d", "linear")}
    assert dict(zip(table["layer"], table["trained_acc_bits"])) == expect
    assert table["fits_trained_width"].all()
    assert (table["bound_l1_bits"] <= table["trained_acc_bits"]).all()


def test_export_refuses_a_broken_budget(digits, monkeypatch):
    train, _ = digits
    _, q = make_q("resnet8", train, QuantConfig(weight_bits=4, act_bits=4, acc_bits=12, a2q={}))
    build_program(q)  # fine as trained
    conv = type(q.layers["stem"])
    orig = conv.int_weight
    monkeypatch.setattr(conv, "int_weight",
                        lambda self, s_x: (orig(self, s_x) * 3).clamp(-7, 7))
    with pytest.raises(QuantizeError, match="A2Q budget broken.*12-bit accumulator"):
        build_program(q)


@pytest.mark.slow
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(p=st.integers(10, 16), mode=st.sampled_from(["a2q", "a2q+"]), bits=st.sampled_from([2, 3, 4]),
       seed=st.integers(0, 10_000))
def test_a_model_trained_for_p_never_overflows_at_p(digits, p, mode, bits, seed):
    train, _ = digits
    cfg = QuantConfig(weight_bits=bits, act_bits=bits, first_layer_bits=bits, last_layer_bits=bits,
                      acc_bits=p, a2q={"mode": mode})
    _, q = make_q("resnet8", train, cfg, seed=seed % 7)
    # a few training steps with random targets move weights, norms, steps and BN (at lr 0.5
    # an activation step could collapse to the 1e-8 floor, an unexportable model: p=10, a2q+,
    # 3 bits, seed 107)
    opt = torch.optim.SGD(q.parameters(), lr=0.2)
    q.train()
    x = torch.from_numpy(train.images[:16]).float()
    for _ in range(2):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(q(x), torch.randint(0, 10, (16,))).backward()
        opt.step()
    prog = build_program(q)
    rng = np.random.default_rng(seed)
    shape = (12, *train.input_shape)
    images = np.concatenate([  # the input range's corners, noise, and real digits
        np.zeros((1, *shape[1:])), np.full((1, *shape[1:]), 255),
        rng.choice([0, 255], size=(4, *shape[1:])), rng.integers(0, 256, size=(4, *shape[1:])),
        train.images[16:18]]).astype(np.uint8)
    ref = run_integer(prog, images)
    for mode_ovf in ("exact", "wrap", "saturate"):
        for dataflow in ("os", "ws"):
            npu = NPUConfig.preset("edge16").with_overrides({
                "precision.acc_bits": p, "precision.pe_acc_bits": p,
                "precision.overflow": mode_ovf, "precision.pe_overflow": mode_ovf,
                "array.dataflow": dataflow})
            res = Simulator(npu).run(prog, images)
            assert int(res.stats["acc_overflows"].sum()) == 0
            assert int(res.stats["pe_overflows"].sum()) == 0
            np.testing.assert_array_equal(res.logits, ref)
    assert (bounds_table(prog)["bound_l1_bits"] <= p).all()
