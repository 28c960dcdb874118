"""SCALE-Sim's systolic mapping (cycles and buffer accesses), checked against hand arithmetic,
and npusim's first-order buffer / DRAM / stall model on tiny hand-built programs."""

import math

import numpy as np
import pytest

from npusim.cost.mapping import (
    gemm_dims,
    layer_mapping,
    liveness,
    network_mapping,
    param_bits,
    program_precision,
    stored_bits,
    systolic_gemm,
)
from npusim.hw.config import NPUConfig
from npusim.ir.program import Node, TensorSpec
from tests.npusim.programs import conv_program, finish


def npu(**over):
    return NPUConfig.preset("edge16").with_overrides(over)


# (M, K, N, rows R, cols C, dataflow) -> (folds, cycles per fold, total, ifmap, filter, ofmap)
HAND = [
    # 3x3 conv 16->32 on an 8x8 output, 16x16 array: M = 64, K = 3*3*16 = 144, N = 32
    # os: Sr,Sc,T = M,N,K: folds ceil(64/16)*ceil(32/16) = 4*2 = 8; 16+16+144-2 = 174; 8*174 = 1392
    #     ifmap M*K*ceil(N/C) = 64*144*2 = 18432; filter K*N*ceil(M/R) = 144*32*4 = 18432;
    #     ofmap M*N = 2048
    (64, 144, 32, 16, 16, "os", (8, 174, 1392, 18432, 18432, 2048)),
    # ws: Sr,Sc,T = K,N,M: folds ceil(144/16)*ceil(32/16) = 9*2 = 18; 2*16+16+64-2 = 110; 1980
    #     ifmap 64*144*2 = 18432; filter K*N = 4608; ofmap M*N*ceil(K/R) = 2048*9 = 18432
    (64, 144, 32, 16, 16, "ws", (18, 110, 1980, 18432, 4608, 18432)),
    # is: Sr,Sc,T = K,M,N: folds 9*ceil(64/16) = 36; 32+16+32-2 = 78; 36*78 = 2808
    #     ifmap K*M = 9216; filter K*N*ceil(M/C) = 4608*4 = 18432; ofmap 2048*9 = 18432
    (64, 144, 32, 16, 16, "is", (36, 78, 2808, 9216, 18432, 18432)),
    # a tall 8-row x 4-column array (R != C catches a swapped R/C): M = 10, K = 20, N = 6
    # os: folds ceil(10/8)*ceil(6/4) = 2*2 = 4; 8+4+20-2 = 30; 120
    #     ifmap 10*20*2 = 400; filter 20*6*ceil(10/8) = 240; ofmap 60
    (10, 20, 6, 8, 4, "os", (4, 30, 120, 400, 240, 60)),
    # ws: folds ceil(20/8)*ceil(6/4) = 3*2 = 6; 16+4+10-2 = 28; 168
    #     ifmap 400; filter 120; ofmap 60*3 = 180
    (10, 20, 6, 8, 4, "ws", (6, 28, 168, 400, 120, 180)),
    # is: folds ceil(20/8)*ceil(10/4) = 3*3 = 9; 16+4+6-2 = 24; 216
    #     ifmap K*M = 200; filter 120*ceil(10/4) = 360; ofmap 180
    (10, 20, 6, 8, 4, "is", (9, 24, 216, 200, 360, 180)),
    # linear 64 -> 10 (M = 1) on 16x16
    # os: folds 1*1 = 1; 16+16+64-2 = 94
    (1, 64, 10, 16, 16, "os", (1, 94, 94, 64, 640, 10)),
    # ws: folds ceil(64/16)*ceil(10/16) = 4; 32+16+1-2 = 47; 188; ofmap 10*4 = 40
    (1, 64, 10, 16, 16, "ws", (4, 47, 188, 64, 640, 40)),
    # is: folds ceil(64/16)*ceil(1/16) = 4; 32+16+10-2 = 56; 224; filter 640*ceil(1/16) = 640
    (1, 64, 10, 16, 16, "is", (4, 56, 224, 64, 640, 40)),
    # a 32x32 array on the same conv: os folds ceil(64/32)*ceil(32/32) = 2; 32+32+144-2 = 206; 412
    (64, 144, 32, 32, 32, "os", (2, 206, 412, 64 * 144, 144 * 32 * 2, 2048)),
    # ws: folds ceil(144/32)*1 = 5; 64+32+64-2 = 158; 790; ofmap 2048*5 = 10240
    (64, 144, 32, 32, 32, "ws", (5, 158, 790, 64 * 144, 4608, 10240)),
]


@pytest.mark.parametrize("m, k, n, rows, cols, df, want", HAND)
def test_systolic_gemm_hand_computed(m, k, n, rows, cols, df, want):
    got = systolic_gemm(m, k, n, rows, cols, df)
    assert (got["folds"], got["cycles_per_fold"], got["compute_cycles"], got["ifmap_sram_reads"],
            got["filter_sram_reads"], got["ofmap_sram_writes"]) == want


def test_systolic_gemm_rejects_bad_dataflow():
    with pytest.raises(ValueError, match="dataflow"):
        systolic_gemm(4, 4, 4, 4, 4, "rs")


def test_mapping_efficiency_is_used_pes_over_folds():
    # os, M = 20 on R = 16 rows: folds 2 row folds x 1 col fold, rows used 16 and 4, cols 8 of 16
    got = systolic_gemm(20, 5, 8, 16, 16, "os")
    assert got["mapping_efficiency"] == pytest.approx((16 * 8 + 4 * 8) / (2 * 256))


def _conv_16_32():
    # 3x3 conv, 16 -> 32 channels, 10x10 input, no padding -> 8x8 output
    rng = np.random.default_rng(0)
    w = rng.integers(-7, 8, size=(32, 16, 3, 3))
    return conv_program(w, np.zeros(32, int), (16, 10, 10), x_bits=4, w_bits=4)


@pytest.mark.parametrize("df, cycles", [("os", 1392), ("ws", 1980), ("is", 2808)])
def test_layer_mapping_conv_matches_hand_numbers(df, cycles):
    prog = _conv_16_32()
    row = layer_mapping(prog, "l", npu(**{"array.dataflow": df}))
    assert (row["M"], row["K"], row["N"], row["groups"]) == (64, 144, 32, 1)
    assert row["compute_cycles"] == cycles
    assert row["macs"] == 64 * 144 * 32
    assert row["utilization"] == pytest.approx(row["macs"] / (cycles * 256))


def test_depthwise_groups_run_back_to_back():
    # depthwise 3x3 on 8 channels, 8x8 input -> 6x6: per group M = 36, K = 9, N = 1
    # os on 16x16: folds ceil(36/16)*ceil(1/16) = 3; 16+16+9-2 = 39 per fold; 117 per group;
    # 8 groups back to back = 936 cycles; ifmap 36*9*1 per group -> 2592
    w = np.ones((8, 1, 3, 3), int)
    prog = conv_program(w, np.zeros(8, int), (8, 8, 8), groups=8, x_bits=4, w_bits=4)
    assert gemm_dims(prog, prog.nodes[0]) == (36, 9, 1, 8)
    row = layer_mapping(prog, "l", npu())
    assert row["compute_cycles"] == 936
    assert row["folds"] == 24
    assert row["ifmap_sram_reads"] == 36 * 9 * 8
    assert row["macs"] == 36 * 9 * 8


def test_linear_is_a_1x1_conv_on_a_1x1_map():
    w = np.ones((10, 64), int)
    prog = conv_program(w, np.zeros(10, int), (64,), op="linear", requant=False)
    assert gemm_dims(prog, prog.nodes[0]) == (1, 64, 10, 1)
    assert layer_mapping(prog, "l", npu())["compute_cycles"] == 94


@pytest.mark.parametrize("storage, wb", [("packed", 3), ("pad4", 4), ("pad8", 8)])
def test_sram_bits_use_operand_and_stored_widths(storage, wb):
    # 3-bit weights, 4-bit activations, 8-bit outputs; os, 16x16: M = 64, K = 144, N = 32
    rng = np.random.default_rng(1)
    w = rng.integers(-3, 4, size=(32, 16, 3, 3))
    prog = conv_program(w, np.zeros(32, int), (16, 10, 10), x_bits=4, w_bits=3)
    cfg = npu(**{"memory.weight_storage": storage, "precision.acc_bits": 24})
    row = layer_mapping(prog, "l", cfg)
    assert row["act_sram_read_bits"] == 18432 * 4
    meta = 32 * (32 + 32 + 8)  # bias int32, multiplier 32 b, shift 8 b per channel
    assert row["weight_sram_read_bits"] == 18432 * wb + meta
    assert row["acc_sram_write_bits"] == 2048 * 24 and row["acc_sram_read_bits"] == 2048 * 24
    assert row["act_sram_write_bits"] == 2048 * 8
    assert row["param_bits"] == 32 * 16 * 9 * wb + meta


def test_stored_bits_rounding():
    assert [stored_bits(b, "packed") for b in (2, 3, 5, 8)] == [2, 3, 5, 8]
    assert [stored_bits(b, "pad4") for b in (2, 3, 4, 5, 8)] == [4, 4, 4, 8, 8]
    assert [stored_bits(b, "pad8") for b in (2, 3, 8, 9)] == [8, 8, 8, 16]


# ------------------------------------------------------------------ residual program, DRAM

def residual_program():
    """x (4x6x6 uint8) -> c1 (3x3 conv, 4-bit out) -> c2 (3x3 conv, 8-bit signed) -> add(c2, c1)."""
    rng = np.random.default_rng(2)
    shape = (4, 6, 6)
    tensors = {
        "x": TensorSpec(shape, 8, False, 0.02),
        "h1": TensorSpec(shape, 4, False, 0.1),
        "h2": TensorSpec(shape, 8, True, 0.05),
        "y": TensorSpec(shape, 4, False, 0.1),
    }
    arrays = {}
    nodes = []
    for name, src, dst in (("c1", "x", "h1"), ("c2", "h1", "h2")):
        tensors[f"{name}.weight"] = TensorSpec((4, 4, 3, 3), 4, True, [0.01] * 4)
        tensors[f"{name}.bias"] = TensorSpec((4,), 32, True)
        arrays[f"{name}.weight"] = rng.integers(-7, 8, size=(4, 4, 3, 3)).astype(np.int8)
        arrays[f"{name}.bias"] = np.zeros(4, np.int32)
        lo, hi = tensors[dst].int_range()
        nodes.append(Node(name, "conv2d", [src], dst, {"stride": 1, "padding": 1, "groups": 1,
                                                        "requant": True, "clamp": [lo, hi]}))
    nodes.append(Node("add", "add", ["h2", "h1"], "y", {"clamp": [0, 15]}))
    return finish(nodes, tensors, arrays, "x", ["y"])


# bits of each activation tensor: x 144*8, h1 144*4, h2 144*8, y 144*4
X, H1, H2, Y = 1152, 576, 1152, 576
CONV_PARAMS = 144 * 4 + 4 * 32 + 4 * 32 + 4 * 8  # weights + bias + multiplier + shift = 864
ADD_PARAMS = 2 * 32 + 2 * 8  # one multiplier and shift per input = 80


def test_liveness_keeps_the_residual_branch():
    prog = residual_program()
    live = liveness(prog, program_precision(prog, npu()))
    # c1: x + h1; c2: h1 (still needed by add) + h2; add: h1 + h2 + y
    assert live == {"c1": X + H1, "c2": H1 + H2, "add": H1 + H2 + Y}


def test_param_bits_by_hand():
    prog = residual_program()
    prec = program_precision(prog, npu())
    assert sum(param_bits(prog, prog.node("c1"), prec).values()) == CONV_PARAMS
    assert sum(param_bits(prog, prog.node("add"), prec).values()) == ADD_PARAMS


def test_weights_resident_when_the_network_fits():
    prog = residual_program()
    kib = (2 * CONV_PARAMS + ADD_PARAMS) / 8192
    df = network_mapping(prog, npu(**{"memory.weight_sram_kib": kib}))
    assert df["weights_resident"].all() and (df["dram_weight_bits"] == 0).all()
    # the image is read once by its first reader, the output written once
    assert df["dram_activation_bits"].tolist() == [X, 0, Y]


@pytest.mark.parametrize("images", [1, 4])
def test_weights_read_once_per_batch_when_a_layer_fits(images):
    prog = residual_program()
    cfg = npu(**{"memory.weight_sram_kib": 1200 / 8192})  # each layer fits, not all three
    df = network_mapping(prog, cfg, images=images).set_index("layer")
    assert not df["weights_resident"].any()
    assert df.loc["c1", "dram_weight_bits"] == pytest.approx(CONV_PARAMS / images)
    assert df.loc["add", "dram_weight_bits"] == pytest.approx(ADD_PARAMS / images)


def test_weights_read_every_image_when_a_layer_does_not_fit():
    prog = residual_program()
    cfg = npu(**{"memory.weight_sram_kib": 800 / 8192})  # c1, c2 (864 b) do not fit; add does
    df = network_mapping(prog, cfg, images=4).set_index("layer")
    assert df.loc["c1", "dram_weight_bits"] == CONV_PARAMS
    assert df.loc["add", "dram_weight_bits"] == ADD_PARAMS / 4


def test_activations_spill_when_the_live_set_overflows():
    prog = residual_program()
    cfg = npu(**{"memory.activation_sram_kib": 2048 / 8192})
    df = network_mapping(prog, cfg).set_index("layer")
    # c1 (1728 b) and c2 (1728 b) fit; add (2304 b) spills: reads h2 + h1, writes y
    assert df["activation_spill"].tolist() == [False, False, True]
    assert df.loc["add", "dram_activation_bits"] == H2 + H1 + Y
    # a batch of 2 doubles the live set: every layer spills
    df2 = network_mapping(prog, cfg, images=2).set_index("layer")
    assert df2["activation_spill"].all()
    assert df2.loc["c1", "dram_activation_bits"] == X + H1
    assert df2.loc["c2", "dram_activation_bits"] == H1 + H2


def test_stalls_when_dram_is_slower_than_compute():
    prog = residual_program()
    cfg = npu(**{"memory.dram_bandwidth_bytes_per_cycle": 0.5,
                 "memory.weight_sram_kib": 1200 / 8192})  # not resident: read once per image
    df = network_mapping(prog, cfg).set_index("layer")
    # c1: os 16x16, M = 36, K = 36, N = 4: folds ceil(36/16)*1 = 3, 16+16+36-2 = 66 -> 198
    assert df.loc["c1", "compute_cycles"] == 198
    # DRAM: parameters once (batch 1) + the image: (864 + 1152) bits / 8 / 0.5 = 504 cycles
    assert df.loc["c1", "dram_cycles"] == math.ceil((CONV_PARAMS + X) / 8 / 0.5)
    assert df.loc["c1", "stall_cycles"] == 504 - 198
    assert df.loc["c1", "latency_us"] == pytest.approx(504 / 500.0)
    # add on the 16-lane vector unit: 144 outputs -> 9 cycles
    assert df.loc["add", "compute_cycles"] == 9
    fast = network_mapping(prog, npu(**{"memory.dram_bandwidth_bytes_per_cycle": 1e6}))
    assert (fast["stall_cycles"] == 0).all()
