"""The float-mode residual add equals ONNX Runtime's QLinearAdd bit for bit, ties included."""

from fractions import Fraction

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from npusim.ir import arith

F32 = np.float32


def ort_qlinearadd(a, b, s_a, zp_a, s_b, zp_b, s_y, zp_y, signed=False):
    """Run one com.microsoft QLinearAdd on flat u8 (or s8) arrays in ONNX Runtime."""
    dt, npdt = (TensorProto.INT8, np.int8) if signed else (TensorProto.UINT8, np.uint8)
    inits = [helper.make_tensor(n, TensorProto.FLOAT, [], [float(v)])
             for n, v in (("sa", s_a), ("sb", s_b), ("sy", s_y))]
    inits += [helper.make_tensor(n, dt, [], [int(v)]) for n, v in (("za", zp_a), ("zb", zp_b),
                                                                   ("zy", zp_y))]
    node = helper.make_node("QLinearAdd", ["a", "sa", "za", "b", "sb", "zb", "sy", "zy"], ["y"],
                            domain="com.microsoft")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("a", dt, [a.size]),
                                            helper.make_tensor_value_info("b", dt, [b.size])],
                              [helper.make_tensor_value_info("y", dt, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {"a": a.astype(npdt), "b": b.astype(npdt)})[0].astype(np.int64)


def ours(a, b, s_a, zp_a, s_b, zp_b, s_y, zp_y, signed=False):
    lo, hi = (-128, 127) if signed else (0, 255)
    mf = np.array([F32(s_a) / F32(s_y), F32(s_b) / F32(s_y)], np.float32)
    zero = np.zeros(2, np.int64)
    return arith.residual_add(a.reshape(1, -1), b.reshape(1, -1), zp_a, zp_b, zero, zero, mf, 20,
                              True, arith.HALF_EVEN, arith.HALF_EVEN, 32, zp_y, lo, hi).ravel()


ALL_A, ALL_B = (g.ravel() for g in np.meshgrid(np.arange(256), np.arange(256)))


@pytest.mark.parametrize("seed", range(6))
def test_random_scales_and_zero_points_every_input_pair(seed):
    rng = np.random.default_rng(seed)
    s_a, s_b, s_y = (F32(rng.uniform(0.005, 0.3)) for _ in range(3))
    zp_a, zp_b, zp_y = (int(rng.integers(0, 256)) for _ in range(3))
    ref = ort_qlinearadd(ALL_A, ALL_B, s_a, zp_a, s_b, zp_b, s_y, zp_y)
    np.testing.assert_array_equal(ours(ALL_A, ALL_B, s_a, zp_a, s_b, zp_b, s_y, zp_y), ref)


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("s_b", [0.25, 0.5, 0.75, 1.5])
def test_exact_ties_follow_the_output_zero_point_like_onnxruntime(signed, s_b):
    # s_a/s_y = 0.5: every odd (a - zp_a) puts the sum on an exact .5; the odd zp_y is inside the
    # rounded value, so rounding first and adding zp_y after (the old float mode) is off by one
    rng = np.random.default_rng(int(s_b * 4) + signed)
    a, b = (ALL_A - 128, ALL_B - 128) if signed else (ALL_A, ALL_B)
    zp_a, zp_b = (int(rng.integers(-20, 20)) for _ in range(2))
    zp_a, zp_b = (zp_a, zp_b) if signed else (zp_a + 128, zp_b + 128)
    zp_y = 7 if signed else 101
    ref = ort_qlinearadd(a, b, 0.5, zp_a, s_b, zp_b, 1.0, zp_y, signed)
    got = ours(a, b, 0.5, zp_a, s_b, zp_b, 1.0, zp_y, signed)
    np.testing.assert_array_equal(got, ref)
    exact = 0.5 * (a - zp_a) + s_b * (b - zp_b)
    lo, hi = (-128, 127) if signed else (0, 255)
    ties = (exact % 1 == 0.5) & (exact + zp_y > lo) & (exact + zp_y < hi)
    assert ties.sum() > 1000  # the ties are really there
    # round half to even of the value with zp_y inside, not rint(x) + zp_y
    np.testing.assert_array_equal(got[ties], np.rint(exact[ties] + zp_y).astype(np.int64))
    assert (np.rint(exact[ties]) + zp_y != got[ties]).all()


def test_fma_f32_rounds_once():
    rng = np.random.default_rng(1)
    for _ in range(3000):
        x = int(rng.integers(-(1 << 16), 1 << 16))
        y = F32(rng.uniform(-3, 3) * 2.0 ** int(rng.integers(-40, 10)))
        z = F32(rng.uniform(-300, 300) * 2.0 ** int(rng.integers(-30, 30)))
        exact = Fraction(x) * Fraction(float(y)) + Fraction(float(z))
        got = arith.fma_f32(x, y, z)
        # correctly rounded: no float32 is nearer, and a tie goes to the even one
        lo, hi = np.nextafter(got, F32(-np.inf)), np.nextafter(got, F32(np.inf))
        d = abs(Fraction(float(got)) - exact)
        for other in (lo, hi):
            d_other = abs(Fraction(float(other)) - exact)
            assert d < d_other or (d == d_other and np.array(got).view(np.int32) % 2 == 0)
