"""The op table: every op declared once, and validation, kernels and cost all read it."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from npusim.ir import program as program_mod
from npusim.ir.ops import OPS, Attr, OpDef
from npusim.ir.program import IntegerProgram, Node, ProgramError, TensorSpec
from npusim.sim.simulator import KERNELS
from tests.npusim.programs import conv_program


def _conv():
    rng = np.random.default_rng(0)
    w = rng.integers(-8, 8, size=(4, 2, 3, 3))
    return conv_program(w, rng.integers(-50, 50, size=4), (4, 6, 6), stride=2, padding=1,
                        groups=2)


def test_every_op_has_a_kernel_a_mac_rule_and_a_shape_rule():
    assert set(KERNELS) == set(OPS)
    for name, op in OPS.items():
        assert op.name == name
        assert callable(op.shape) and callable(op.macs)
        assert op.inputs >= 1
        # requantizing ops give both the real and the float-mode multipliers
        assert (op.real_multipliers is None) == (op.float_multipliers is None)
        # ops on the MAC array map to a GEMM; the others give vector work or none
        assert (op.gemm is not None) == (op.unit == "array")
        assert (op.vector_ops is not None) == (op.unit == "vector")


def test_gemm_dims_multiply_to_the_mac_count():
    prog = _conv()
    node = prog.nodes[0]
    m, k, n, g = OPS["conv2d"].gemm(prog, node)
    assert m * k * n * g == OPS["conv2d"].macs(prog, node) == (2 * 3 * 3) * (4 * 3 * 3)  # K x outputs


@pytest.mark.parametrize("attrs, expect", [
    ({"stride": 0}, "attrs.stride: expected an int in [1, 64], got 0"),
    ({"padding": -1}, "attrs.padding: expected an int in [0, 3]"),
    ({"groups": True}, "attrs.groups: expected an int >= 1, got True"),
    ({"requant": 1}, "attrs.requant: expected true/false"),
    ({"clamp": [5, 1]}, "attrs.clamp: expected [lo, hi] with lo <= hi"),
    ({"acc_bits_target": 63}, "attrs.acc_bits_target: expected an int [2, 62], got 63"),
    ({"dilation": 2}, "attrs: conv2d has no attribute 'dilation'"),
])
def test_attributes_are_checked_against_the_table(attrs, expect):
    prog = _conv()
    prog.nodes[0].attrs.update(attrs)
    with pytest.raises(ProgramError) as e:
        prog.validate("f.safetensors")
    msg = str(e.value)
    assert msg.startswith("f.safetensors: node 'l': ") and expect in msg, msg


def test_a_missing_required_attribute_is_named():
    prog = _conv()
    del prog.nodes[0].attrs["groups"]
    with pytest.raises(ProgramError, match="node 'l': attrs: missing 'groups'"):
        prog.validate()


def _toy_program(attrs, out_shape=(3, 4, 4), inputs=("x",)):
    tensors = {"x": TensorSpec((3, 4, 4), 8, False, 0.1), "y": TensorSpec(out_shape, 8, False, 0.1)}
    return IntegerProgram(nodes=[Node("t", "shift_right", list(inputs), "y", attrs)],
                          tensors=tensors, arrays={}, input="x", outputs=["y"],
                          requant=copy.deepcopy(_conv().requant))


def test_adding_an_op_is_one_declaration(monkeypatch):
    toy = OpDef("shift_right", 1, (Attr("bits", "int", 0, 7, default=1),), (),
                lambda ins, arrays, attrs: tuple(ins[0]), "vector",
                vector_ops=lambda program, node: 48)
    with pytest.raises(ProgramError, match="unknown op 'shift_right'"):
        _toy_program({}).validate()
    monkeypatch.setattr(program_mod, "OPS", {**OPS, "shift_right": toy})
    _toy_program({}).validate()
    _toy_program({"bits": 7}).validate()
    for attrs, out, inputs, expect in [
            ({"bits": 8}, (3, 4, 4), ("x",), "attrs.bits: expected an int [0, 7], got 8"),
            ({"mode": 1}, (3, 4, 4), ("x",), "has no attribute 'mode'"),
            ({}, (3, 2, 2), ("x",), "output: shape [3, 2, 2] does not match the computed [3, 4, 4]"),
            ({}, (3, 4, 4), ("x", "x"), "shift_right takes 1 input(s), got 2")]:
        with pytest.raises(ProgramError) as e:
            _toy_program(attrs, out, inputs).validate()
        assert expect in str(e.value), str(e.value)


def test_every_op_has_a_one_sentence_meaning():
    """The program-format reference prints each op's `doc`; none may be missing."""
    for name, op in OPS.items():
        assert op.doc.strip(), name
