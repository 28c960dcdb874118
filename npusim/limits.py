"""Caps a real NPU program never exceeds, checked before anything is allocated.

The one place these limits live: the file reader (`load_program` checks the safetensors header
against them before reading a byte of tensor data), program validation (`check_limits`) and the
checkpoint sidecar reader (`models.checkpoint`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

MAX_HEADER_BYTES = 100 * 2**20  # safetensors JSON header
MAX_TENSOR_ELEMENTS = 2**26  # one tensor (weights or one image's activations)
MAX_PROGRAM_BYTES = 2**30  # all arrays of a program together
MAX_DIMS = 4  # weights (O, I, kh, kw); activations (C, H, W)
MAX_SPATIAL = 4096  # height / width of an activation
MAX_CHANNELS = 65536  # channels / features of any tensor dimension but spatial ones
MAX_KERNEL = 64  # conv / pool kernel height and width
MAX_STRIDE = 64  # conv / pool stride
# padding: at most the kernel size for a conv, at most half of it for a pool (as in PyTorch)

# checkpoint sidecars (models.checkpoint)
MAX_WIDTH = 16.0  # channel width multiplier
MAX_CLASSES = 100_000
MAX_IN_CHANNELS = 1024

# safetensors dtypes an IntegerProgram may hold, with their item sizes
INT_DTYPES = {"I8": 1, "U8": 1, "I16": 2, "U16": 2, "I32": 4, "U32": 4, "I64": 8, "U64": 8}


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def check_shape(shape: Any, what: str, fail: Callable[[str], None]) -> int:
    """Check a shape is a list of at most MAX_DIMS non-negative ints with at most
    MAX_TENSOR_ELEMENTS elements; return the element count."""
    if not isinstance(shape, (list, tuple)) or not all(_is_int(d) and d >= 0 for d in shape):
        fail(f"{what}: shape: expected a list of non-negative ints, got {shape!r}")
    if len(shape) > MAX_DIMS:
        fail(f"{what}: shape: {len(shape)} dimensions, at most {MAX_DIMS} allowed")
    n = math.prod(shape)
    if n > MAX_TENSOR_ELEMENTS:
        fail(f"{what}: shape {list(shape)}: {n} elements, at most {MAX_TENSOR_ELEMENTS} allowed")
    return n


def _window(ctx: str, kernel: Any, stride: Any, pad: Any, pool: bool,
            fail: Callable[[str], None]) -> None:
    ks = kernel if isinstance(kernel, (list, tuple)) else [kernel]
    if not ks:
        fail(f"{ctx}: kernel: expected an int in [1, {MAX_KERNEL}], got {kernel!r}")
    for k in ks:
        if not (_is_int(k) and 1 <= k <= MAX_KERNEL):
            fail(f"{ctx}: kernel: expected an int in [1, {MAX_KERNEL}], got {k!r}")
    if not (_is_int(stride) and 1 <= stride <= MAX_STRIDE):
        fail(f"{ctx}: attrs.stride: expected an int in [1, {MAX_STRIDE}], got {stride!r}")
    most = min(ks) // 2 if pool else min(ks)
    if not (_is_int(pad) and 0 <= pad <= most):
        fail(f"{ctx}: attrs.padding: expected an int in [0, {most}] (kernel {min(ks)}), "
             f"got {pad!r}")


def check_limits(p: Any, fail: Callable[[str], None]) -> None:
    """Check an IntegerProgram's tensor shapes and window attributes against the caps above."""
    for node in p.nodes:
        ctx = f"node {node.name!r}"
        a = node.attrs
        w = p.arrays.get(f"{node.name}.weight")
        if node.op == "conv2d" and {"stride", "padding"} <= set(a) and w is not None \
                and w.ndim == 4:
            _window(ctx, [w.shape[2], w.shape[3]], a["stride"], a["padding"], False, fail)
        elif node.op in ("maxpool2d", "avgpool2d") and {"kernel", "stride"} <= set(a):
            _window(ctx, a["kernel"], a["stride"], a.get("padding", 0), True, fail)
    total = 0
    for name, t in p.tensors.items():
        check_shape(list(t.shape), f"tensor {name!r}", fail)
        if name not in p.arrays:  # an activation (C, H, W) or (features,)
            chans, spatial = t.shape[:1], t.shape[1:]
            if any(c > MAX_CHANNELS for c in chans):
                fail(f"tensor {name!r}: {chans[0]} channels, at most {MAX_CHANNELS} allowed")
            if any(s > MAX_SPATIAL for s in spatial):
                fail(f"tensor {name!r}: spatial size {list(spatial)}, at most {MAX_SPATIAL} allowed")
    for arr in p.arrays.values():
        total += arr.size * arr.dtype.itemsize
    if total > MAX_PROGRAM_BYTES:
        fail(f"arrays: {total} bytes, at most {MAX_PROGRAM_BYTES} allowed")
    check_ranges(p, fail)


MIN_RAW_ACC_BITS = 32  # a conv/linear without requant stores its accumulator: signed, >= 32 bits


def check_ranges(p: Any, fail: Callable[[str], None]) -> None:
    """Refuse programs that validate structurally but cannot be bit-accurate: a conv/linear
    without requant whose output tensor is narrower than the accumulator, or a clamp that is not
    two integers inside the output tensor's range."""
    for node in p.nodes:
        ctx = f"node {node.name!r}"
        t = p.tensors.get(node.output)
        if t is None or not _is_int(t.bits):
            continue  # reported by the structural checks
        if node.op in ("conv2d", "linear") and node.attrs.get("requant", True) is False and not (
                t.signed is True and t.bits >= MIN_RAW_ACC_BITS):
            fail(f"{ctx}: output: tensor {node.output!r} is {t.bits}-bit "
                 f"{'signed' if t.signed else 'unsigned'}; without requant it holds the "
                 f"accumulator and must be signed with >= {MIN_RAW_ACC_BITS} bits")
        clamp = node.attrs.get("clamp")
        if clamp is None:
            continue
        if not (isinstance(clamp, list) and len(clamp) == 2 and all(_is_int(c) for c in clamp)):
            fail(f"{ctx}: attrs.clamp: expected two integers [lo, hi], got {clamp!r}")
        if clamp[0] > clamp[1]:
            fail(f"{ctx}: attrs.clamp: expected [lo, hi] with lo <= hi, got {clamp!r}")
        lo, hi = t.int_range()
        if not lo <= clamp[0] <= clamp[1] <= hi:
            fail(f"{ctx}: attrs.clamp: {clamp} is not inside the output tensor's "
                 f"{t.bits}-bit {'signed' if t.signed else 'unsigned'} range [{lo}, {hi}]")
