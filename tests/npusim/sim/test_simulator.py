"""The simulator's kernels against the independent oracle, op by op, mode by mode."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from npusim.hw.config import NPUConfig
from npusim.ir.program import Node, TensorSpec
from npusim.ir.requant import RequantSpec, node_requant
from npusim.sim.simulator import SimulationError, Simulator
from npusim.sim.threads import parallel
from tests.npusim import naive
from tests.npusim.programs import conv_program, finish

MODES = ["exact", "wrap", "saturate"]


def npu(**over):
    return NPUConfig.preset("edge16").with_overrides(over)


@st.composite
def conv_case(draw):
    groups_kind = draw(st.sampled_from(["dense", "grouped", "depthwise"]))
    cg = draw(st.integers(1, 3))
    g = 1 if groups_kind == "dense" else draw(st.integers(2, 3))
    c = cg * g
    if groups_kind == "depthwise":
        cg, c = 1, g
    o = g * draw(st.integers(1, 3))
    k = draw(st.sampled_from([1, 2, 3]))
    stride = draw(st.integers(1, 2))
    pad = draw(st.integers(0, k // 2 + (k == 2)))
    h = draw(st.integers(k, 6))
    wd = draw(st.integers(k, 6))
    n = draw(st.integers(1, 2))
    x_bits = draw(st.sampled_from([2, 4, 8]))
    x_signed = draw(st.booleans())
    w_bits = draw(st.sampled_from([2, 3, 4, 8]))
    seed = draw(st.integers(0, 2 ** 32 - 1))
    rng = np.random.default_rng(seed)
    xlo, xhi = (-(1 << (x_bits - 1)), (1 << (x_bits - 1)) - 1) if x_signed else (0, (1 << x_bits) - 1)
    wq = (1 << (w_bits - 1)) - 1
    # steer into the extremes so narrow accumulators overflow often
    x = rng.choice([xlo, xhi, 0, rng.integers(xlo, xhi + 1)], size=(n, c, h, wd)).astype(np.int64)
    w = rng.choice([-wq, wq, 0, 1], size=(o, cg, k, k)).astype(np.int64)
    bias = rng.integers(-2000, 2000, size=o)
    return dict(x=x, w=w, bias=bias, stride=stride, pad=pad, groups=g, x_bits=x_bits,
                x_signed=x_signed, w_bits=w_bits)


@pytest.mark.slow
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv_case(), st.sampled_from(["os", "ws", "is"]), st.integers(1, 5),
       st.sampled_from(MODES), st.sampled_from(MODES), st.integers(0, 8), st.integers(0, 8),
       st.booleans())
def test_conv_accumulators_match_oracle(case, dataflow, rows, pe_mode, acc_mode, dpe, dacc, fast):
    """Both the fast path (exact GEMM + order-faithful re-simulation of at-risk outputs) and
    the all-sequential kernel equal the oracle, values and event counts."""
    prod_bits = case["x_bits"] + case["w_bits"] + 1
    pe_bits, acc_bits = prod_bits + min(dpe, dacc), prod_bits + dacc  # pe <= acc (NPUConfig)
    prog = conv_program(case["w"], case["bias"], case["x"].shape[1:], x_bits=case["x_bits"],
                        x_signed=case["x_signed"], w_bits=case["w_bits"], stride=case["stride"],
                        padding=case["pad"], groups=case["groups"], requant=False)
    cfg = npu(**{"array.dataflow": dataflow, "array.rows": rows, "precision.pe_acc_bits": pe_bits,
                 "precision.acc_bits": acc_bits, "precision.pe_overflow": pe_mode,
                 "precision.acc_overflow": acc_mode})
    res = Simulator(cfg, engine="auto" if fast else "reference").run(prog, case["x"])
    ref, pe_ovf, acc_ovf = naive.conv2d_acc(
        case["x"], case["w"], case["bias"], case["stride"], case["pad"], case["groups"], 0,
        dataflow=dataflow, rows=rows, pe_bits=pe_bits, pe_mode=pe_mode, acc_bits=acc_bits,
        acc_mode=acc_mode)
    np.testing.assert_array_equal(res.outputs["y"], ref)
    row = res.stats.iloc[0]
    if dataflow == "os":
        assert row["acc_overflows"] == acc_ovf
    else:
        assert (row["pe_overflows"], row["acc_overflows"]) == (pe_ovf, acc_ovf)


@pytest.mark.slow
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv_case(), st.sampled_from(["half_away", "half_up", "half_even"]),
       st.sampled_from(["fixed", "pow2", "float"]), st.sampled_from([8, 16, 32]),
       st.floats(1e-4, 0.2), st.integers(2, 8), st.booleans())
def test_conv_requantization_matches_oracle(case, rounding, scale_mode, mbits, s_y, y_bits, relu):
    rq = RequantSpec(scale_mode=scale_mode, multiplier_bits=mbits, rounding=rounding,
                     add_frac_bits=16)
    y_signed = not relu
    lo = 0 if relu else -(1 << (y_bits - 1))
    hi = (1 << y_bits) - 1 if relu else (1 << (y_bits - 1)) - 1
    prog = conv_program(case["w"], case["bias"], case["x"].shape[1:], x_bits=case["x_bits"],
                        x_signed=case["x_signed"], w_bits=case["w_bits"], stride=case["stride"],
                        padding=case["pad"], groups=case["groups"], s_y=s_y, y_bits=y_bits,
                        y_signed=y_signed, rq_settings=rq)
    cfg = npu(**{"requant.scale_mode": scale_mode, "requant.multiplier_bits": mbits,
                 "requant.rounding": rounding})
    res = Simulator(cfg).run(prog, case["x"])
    acc, _, _ = naive.conv2d_acc(case["x"], case["w"], case["bias"], case["stride"],
                                 case["pad"], case["groups"], 0)
    node = prog.nodes[0]
    if scale_mode == "float":
        mf = np.array([naive.ort_multiplier(0.02, s, s_y) for s in prog.tensors["l.weight"].scale],
                      dtype=np.float32)
        ref = naive.requantize_float(acc, mf, 0, lo, hi)
    else:
        p = node_requant(prog, node, rq)
        if scale_mode == "pow2":  # shift-only hardware: one rounding of acc / 2^n
            ref = np.empty_like(acc)
            for idx in np.ndindex(acc.shape):
                v = naive.round_shift(int(acc[idx]), int(p.n[idx[1]]), rounding)
                ref[idx] = min(max(v, lo), hi)
        else:
            ref = naive.requantize(acc, p.m0, p.n, rounding, mbits, 0, lo, hi)
    np.testing.assert_array_equal(res.outputs["y"], ref)


def test_wrap_at_both_levels_equals_exact_sum_wrapped_once():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(3, 8, 6, 6))
    w = rng.integers(-127, 128, size=(4, 8, 3, 3))
    bias = rng.integers(-5000, 5000, size=4)
    prog = conv_program(w, bias, x.shape[1:], padding=1, requant=False)
    exact = Simulator(npu()).run(prog, x).outputs["y"]
    for dataflow in ("os", "ws"):
        cfg = npu(**{"array.dataflow": dataflow, "array.rows": 4, "precision.acc_bits": 17,
                     "precision.pe_acc_bits": 17, "precision.overflow": "wrap"})
        res = Simulator(cfg).run(prog, x)
        np.testing.assert_array_equal(res.outputs["y"], naive_wrap(exact, 17))
        assert res.stats.iloc[0]["acc_overflows"] + res.stats.iloc[0]["pe_overflows"] > 0


def test_run_many_plans_what_only_the_program_decides_once():
    """The simulators of one `run_many` share the program's pieces of their plans (bounds,
    int64 weights, requant records, the int8 weight packing for the same `signs`) and keep
    their own where the NPU decides (acc widths); results equal separate runs; the memo is
    gone afterwards."""
    from npusim.sim.simulator import run_many

    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(2, 8, 6, 6))
    w = rng.integers(-127, 128, size=(4, 8, 3, 3))
    prog = conv_program(w, rng.integers(-500, 500, size=4), x.shape[1:], padding=1)
    cfgs = [npu(), npu(**{"precision.acc_bits": 28, "precision.pe_acc_bits": 28}),
            npu(**{"precision.acc_bits": 17, "precision.pe_acc_bits": 17,
                   "precision.overflow": "wrap"})]
    sims = [Simulator(c) for c in cfgs]
    many = run_many(sims, prog, x)
    plans = [s._plan_cache[1][0] for s in sims]
    assert plans[0].weight is plans[1].weight is plans[2].weight
    assert plans[0].rq is plans[1].rq is plans[2].rq
    if sims[0].engine.int8_kind and plans[0].prep is not None:
        assert plans[0].prep is plans[1].prep  # both wide: no sign columns, one packing
        assert plans[2].prep is None or plans[2].prep.signs  # the narrow one packs its own
    assert all(s._memo is None for s in sims)
    assert Simulator(cfgs[0]).plan(prog)[0].weight is not plans[0].weight
    for c, got in zip(cfgs, many):
        one = Simulator(c).run(prog, x)
        np.testing.assert_array_equal(got.outputs["y"], one.outputs["y"])
        assert got.stats.equals(one.stats)


def naive_wrap(a, bits):
    return np.vectorize(lambda v: naive.wrap(int(v), bits))(a)


def _add_program(shape, sa, sb, sy, relu=False, rq=None):
    """add(a, b) where b is a relabelled copy of a (1x1 max pool) with its own scale."""
    tensors = {"a": TensorSpec(shape, 8, True, sa), "b": TensorSpec(shape, 8, True, sb),
               "y": TensorSpec(shape, 8, not relu, sy)}
    lo, hi = tensors["y"].int_range()
    nodes = [Node("copy", "maxpool2d", ["a"], "b", {"kernel": 1, "stride": 1, "padding": 0}),
             Node("add", "add", ["a", "b"], "y", {"clamp": [lo, hi]})]
    return finish(nodes, tensors, {}, "a", ["y"], rq.to_dict() if rq else None)


@pytest.mark.slow
@settings(max_examples=100, deadline=None)
@given(st.floats(0.001, 0.5), st.floats(0.001, 0.5), st.floats(0.001, 0.5), st.integers(0, 20),
       st.sampled_from(["half_away", "half_up", "half_even"]), st.booleans(), st.integers(0, 2 ** 31))
def test_residual_add_matches_oracle(sa, sb, sy, frac, rounding, relu, seed):
    rq = RequantSpec(rounding=rounding, add_frac_bits=frac)
    shape = (2, 3, 3)
    prog = _add_program(shape, sa, sb, sy, relu=relu, rq=rq)
    x = np.random.default_rng(seed).integers(-128, 128, size=(2, *shape))
    cfg = npu(**{"requant.rounding": rounding, "requant.add_frac_bits": frac})
    try:
        got = Simulator(cfg).run(prog, x).outputs["y"]
    except SimulationError as e:  # a rescaled input that cannot fit a 64-bit product
        assert "requantization product" in str(e)
        reject()
    p = node_requant(prog, prog.nodes[1], rq)
    lo, hi = prog.nodes[1].attrs["clamp"]
    ref = naive.add(x, x, 0, 0, int(p.m0[0]), int(p.n[0]), int(p.m0[1]), int(p.n[1]), frac,
                    rounding, 32, 0, lo, hi)
    np.testing.assert_array_equal(got, ref)


def test_memory_passes_of_a_big_batch_run_on_every_thread():
    """`node_work` (per image, times the batch) decides a node's threads: a residual add of
    64 maps of 16 x 28 x 28 (no MACs, ~2 ms of passes over memory on one thread) runs on
    every thread, the same add of one image on one; a conv counts its MACs where they are
    more."""
    from npusim.sim import simulator as sim_mod

    prog = _add_program((16, 28, 28), 0.1, 0.2, 0.3)
    add = prog.nodes[1]
    assert parallel(64 * sim_mod.node_work(prog, add, 0))
    assert not parallel(sim_mod.node_work(prog, add, 0))
    assert sim_mod.node_work(prog, add, 1 << 30) == 1 << 30
    x = np.random.default_rng(0).integers(-128, 128, size=(64, 16, 28, 28))
    for n, want in ((64, None), (1, 1)):
        sim = Simulator(npu())
        sim.run(prog, x[:n])
        assert sim._threads_set["n"] == (want or sim._threads)  # the add runs last


def _pool_program(op, shape, kernel, stride, padding=0, s_in=0.1, s_out=0.1):
    c, h, w = shape
    if op == "global_avgpool":
        out = (c, 1, 1)
        attrs = {}
    else:
        out = (c, (h + 2 * padding - kernel) // stride + 1, (w + 2 * padding - kernel) // stride + 1)
        attrs = {"kernel": kernel, "stride": stride, "padding": padding}
    tensors = {"x": TensorSpec(shape, 8, False, s_in), "y": TensorSpec(out, 8, False, s_out)}
    if op != "maxpool2d":
        attrs["clamp"] = [0, 255]
    return finish([Node("p", op, ["x"], "y", attrs)], tensors, {}, "x", ["y"])


@pytest.mark.parametrize("kernel, stride, padding", [(2, 2, 0), (3, 2, 1), (3, 1, 1)])
def test_maxpool_matches_oracle(kernel, stride, padding):
    x = np.random.default_rng(1).integers(0, 256, size=(2, 3, 7, 7))
    prog = _pool_program("maxpool2d", (3, 7, 7), kernel, stride, padding)
    got = Simulator(npu()).run(prog, x).outputs["y"]
    np.testing.assert_array_equal(got, naive.maxpool2d(x, kernel, stride, padding))


@pytest.mark.parametrize("rounding", ["half_away", "half_up", "half_even"])
def test_avgpools_match_oracle(rounding):
    x = np.random.default_rng(2).integers(0, 256, size=(2, 3, 6, 6))
    rq = RequantSpec(rounding=rounding)
    cfg = npu(**{"requant.rounding": rounding})
    for op, acc in [("avgpool2d", naive.avgpool_acc(x, 2, 2, 0)),
                    ("global_avgpool", naive.global_avgpool_acc(x, 0)[:, :, None, None])]:
        prog = _pool_program(op, (3, 6, 6), 2, 2, s_in=0.1, s_out=0.07)
        got = Simulator(cfg).run(prog, x).outputs["y"]
        p = node_requant(prog, prog.nodes[0], rq)
        ref = naive.requantize(acc, np.repeat(p.m0, 3), np.repeat(p.n, 3), rounding, 32, 0, 0, 255)
        np.testing.assert_array_equal(got, ref)


def test_embed_matches_oracle():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, size=(2, 3, 4, 4))
    lut = rng.integers(0, 16, size=(3, 256, 4))
    tensors = {"x": TensorSpec((3, 4, 4), 8, False), "e.lut": TensorSpec((3, 256, 4), 4, False),
               "y": TensorSpec((12, 4, 4), 4, False, 0.1)}
    prog = finish([Node("e", "embed", ["x"], "y")], tensors, {"e.lut": lut.astype(np.uint8)},
                  "x", ["y"])
    got = Simulator(npu()).run(prog, x).outputs["y"]
    np.testing.assert_array_equal(got, naive.embed(x, lut))


def test_linear_matches_oracle_and_argmax_takes_lowest_tie():
    rng = np.random.default_rng(4)
    x = rng.integers(0, 256, size=(5, 20))
    w = rng.integers(-127, 128, size=(6, 20))
    w[3] = w[1]  # identical rows: tied logits
    bias = np.zeros(6, np.int64)
    prog = conv_program(w, bias, (20,), requant=False, op="linear")
    res = Simulator(npu()).run(prog, x)
    ref, _, _ = naive.linear_acc(x, w, bias, 0)
    np.testing.assert_array_equal(res.logits, ref)
    np.testing.assert_array_equal(res.predictions, naive.argmax_lowest(ref))


def test_refuses_programs_the_npu_cannot_run():
    w = np.full((2, 1, 3, 3), 127)
    prog = conv_program(w, [0, 0], (1, 4, 4), requant=False)
    with pytest.raises(SimulationError, match="max_weight_bits"):
        Simulator(npu(**{"array.max_weight_bits": 4})).run(prog, np.zeros((1, 1, 4, 4), np.uint8))
    with pytest.raises(SimulationError, match="single product needs 16 bits"):
        Simulator(npu(**{"precision.acc_bits": 12, "precision.pe_acc_bits": 12})).run(
            prog, np.zeros((1, 1, 4, 4), np.uint8))
    with pytest.raises(SimulationError, match=r"images: expected shape \(N, 1, 4, 4\)"):
        Simulator(npu()).run(prog, np.zeros((1, 2, 4, 4), np.uint8))
    with pytest.raises(SimulationError, match=r"images: expected integers in \[0, 255\]"):
        Simulator(npu()).run(prog, np.full((1, 1, 4, 4), 300))


def test_stats_count_what_happened():
    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, size=(4, 4, 5, 5))
    w = rng.integers(-127, 128, size=(3, 4, 3, 3))
    w[0] = 0
    prog = conv_program(w, [10, -10, 0], x.shape[1:], padding=1, requant=False)
    res = Simulator(npu()).run(prog, x)
    row = res.stats.iloc[0]
    acc = res.outputs["y"]
    assert row["macs_per_image"] == 3 * 25 * 36
    assert row["acc_min"] == acc.min() and row["acc_max"] == acc.max()
    assert row["acc_overflows"] == 0
    # the observed bits are what the running sums needed, never more than the exact bound
    assert row["observed_bits"] <= row["bound_l1_bits"] <= row["bound_dtype_bits"]
    nz_ref = sum(int(np.count_nonzero(
        np.pad(x[b], ((0, 0), (1, 1), (1, 1)))[:, i:i + 3, j:j + 3] * w[o]))
        for b in range(4) for o in range(3) for i in range(5) for j in range(5))
    assert row["nonzero_macs"] == nz_ref
    trace = Simulator(npu()).run(prog, x, trace=True).traces
    np.testing.assert_array_equal(trace["y"], acc)


@pytest.mark.parametrize("c, o, k, groups", [(16, 16, 3, 1), (32, 64, 3, 1), (24, 24, 3, 24),
                                             (64, 10, 1, 1)])
def test_fast_path_equals_order_faithful_kernel_on_realistic_layers(c, o, k, groups):
    """Layer sizes where fast conv libraries switch algorithms (Winograd is not exact):
    the fast path must still equal the all-sequential kernel, value for value."""
    rng = np.random.default_rng(c + o)
    x = rng.integers(0, 16, size=(3, c, 14, 14))
    w = rng.integers(-7, 8, size=(o, c // groups, k, k))
    bias = rng.integers(-300, 300, size=o)
    prog = conv_program(w, bias, x.shape[1:], x_bits=4, w_bits=4, padding=k // 2,
                        groups=groups, requant=False)
    for over in ({}, {"precision.acc_bits": 11, "precision.pe_acc_bits": 11,
                      "precision.overflow": "saturate", "array.dataflow": "ws"}):
        cfg = npu(**over)
        fast = Simulator(cfg).run(prog, x)
        slow = Simulator(cfg, engine="reference").run(prog, x)
        np.testing.assert_array_equal(fast.outputs["y"], slow.outputs["y"])
        cols = ["pe_overflows", "acc_overflows", "nonzero_macs", "acc_min", "acc_max"]
        assert fast.stats[cols].equals(slow.stats[cols])


def test_exact_conv2d_is_exact_where_fast_algorithms_are_not():
    from npusim.sim.exact_conv import exact_conv2d

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(4, 32, 16, 16))
    w = rng.integers(-127, 128, size=(32, 32, 3, 3))
    got = exact_conv2d(x, w, 1, 1)
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(2, 3))
    ref = np.einsum("nchwij,ocij->nohw", win, w)
    np.testing.assert_array_equal(got, ref)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["int8 where it can", "float only"])
def test_run_many_shares_and_equals_separate_runs_on_a_network(engine):
    """A width sweep over a whole ResNet-8 (adds, pooling, classifier) through `run_many`:
    every configuration's logits, traces and statistics equal its own run (sharing engine
    sums, exact results and whole node outputs between configurations must be invisible),
    with the int8 engine (where this CPU has one) and with the float engine alone."""
    import torch

    name = "float" if engine == "float only" else "auto"

    from models import create_model
    from models.training import set_input_stats
    from npusim.data import load_dataset
    from npusim.sim.simulator import run_many
    from quantize import QuantConfig, build_program, calibrate, quantize_model

    data = load_dataset("digits", "train")
    torch.manual_seed(0)
    model = create_model("resnet8", num_classes=10, in_channels=1, width=0.25)
    set_input_stats(model, data)
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(data.images[:128]).float())
    model.eval()
    q = quantize_model(model, QuantConfig(weight_bits=4, act_bits=4), input_shape=data.input_shape)
    calibrate(q, torch.from_numpy(data.images[:64]).float())
    prog = build_program(q)
    x = data.images[:10]
    base = NPUConfig.preset("edge16")
    cfgs = [base] + [base.with_overrides({"precision.acc_bits": b, "precision.pe_acc_bits": b,
                                          "precision.overflow": m, "array.dataflow": d})
                     for b in (13, 15, 24) for m in ("wrap", "saturate") for d in ("os", "ws")]
    many = run_many([Simulator(c, name) for c in cfgs], prog, x, trace=True, batch_size=4)
    for cfg, got in zip(cfgs, many):
        one = Simulator(cfg, name).run(prog, x, trace=True, batch_size=4)
        np.testing.assert_array_equal(got.logits, one.logits)
        assert got.traces.keys() == one.traces.keys()
        for k in one.traces:
            np.testing.assert_array_equal(got.traces[k], one.traces[k])
        assert got.stats.equals(one.stats)
    # at least one narrow configuration differs somewhere (the sweep is not trivial)
    assert any(not np.array_equal(m.logits, many[0].logits) for m in many[1:]) or \
        any(int(m.stats["acc_overflows"].fillna(0).sum()) for m in many[1:])


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 3), st.integers(1, 5), st.integers(1, 9), st.integers(1, 9),
       st.sampled_from([np.uint8, np.int8, np.int16]), st.integers(0, 2 ** 32 - 1))
def test_channels_last_equals_numpy(n, c, h, w, dtype, seed):
    """The simulator's input layout change (`kernels.channels_last_kernel`; one channel as a
    view) equals NumPy's transpose, contiguous, for every shape and dtype it takes."""
    from npusim.sim.simulator import _channels_last

    info = np.iinfo(dtype)
    x = np.random.default_rng(seed).integers(info.min, int(info.max) + 1, (n, c, h, w)).astype(dtype)
    y = _channels_last(x)
    assert y.flags.c_contiguous and y.dtype == x.dtype
    np.testing.assert_array_equal(y, x.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(_channels_last(x[:, :, ::2]), x[:, :, ::2].transpose(0, 2, 3, 1))
    swapped = x.astype(x.dtype.newbyteorder(">" if x.dtype.byteorder != ">" else "<"))
    np.testing.assert_array_equal(_channels_last(swapped), x.transpose(0, 2, 3, 1))
