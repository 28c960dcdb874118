"""The virtual NPU: runs an IntegerProgram bit-accurately on an `NPUConfig` (docs/architecture.md).

`Simulator(config).run(program, images)` checks that the NPU can run the program (refusing it
with a one-line reason otherwise), then executes every node with the numba kernels and returns
the integer outputs and a per-layer statistics table.
"""

from __future__ import annotations

import functools
import logging
import math
import sys
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numba
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from npusim.errors import UserError
from npusim.ir import arith
from npusim.ir.arith import bits_needed
from npusim.ir.bounds import layer_bounds
from npusim.ir.ops import OPS, avgpool_sums_floats, pool_window
from npusim.ir.program import IntegerProgram, Node, TensorSpec
from npusim.ir.requant import NodeRequant, RequantSpec, changes_text, node_requant
from npusim.sim import engines
from npusim.sim import kernels as K
from npusim.sim.accumulate import LevelSpec, Requant, conv_accumulate, prepare_conv
from npusim.sim.int8_engine import Int8Conv
from npusim.sim.threads import ELEM_WORK, parallel

if TYPE_CHECKING:
    from npusim.hw.config import NPUConfig, PrecisionConfig

log = logging.getLogger(__name__)


def node_work(program: IntegerProgram, node: Node, macs: int) -> int:
    """A node's work per image in multiply-accumulates, which (times the batch) decides its
    threads (`npusim.sim.threads.parallel`): its MACs, or `ELEM_WORK` per element it reads and
    writes (residual adds and pools are passes over memory, and so are a conv's padding and
    window sums), whichever is larger."""
    elems = sum(math.prod(program.tensors[t].shape) for t in (*node.inputs, node.output))
    return max(macs, ELEM_WORK * elems)


def _channels_last(x: np.ndarray) -> np.ndarray:
    """(N, C, H, W) -> contiguous (N, H, W, C); other ranks unchanged."""
    if x.ndim != 4:
        return x
    t = x.transpose(0, 2, 3, 1)
    if t.flags.c_contiguous:  # one channel
        return t
    x = np.ascontiguousarray(x, x.dtype.newbyteorder("="))  # numba takes native byte order
    out = np.empty(t.shape, x.dtype)
    K.channels_last_kernel(x, out)
    return out


def _stored(y: np.ndarray, spec) -> np.ndarray:
    """`y` in the narrowest dtype of its tensor's integer range (activations are kept narrow:
    the simulator's cost is mostly moving them)."""
    return y.astype(arith.storage_dtype(*spec.int_range()), copy=False)


class SimulationError(UserError):
    """The NPU cannot run this program, or the input is wrong; one-line reason."""


@dataclass
class SimResult:
    """What a simulation produced: the program's outputs, the per-layer statistics table
    `stats` (built when first read, from `make_stats`: at batch 1 the table costs ~12 % of a
    ResNet-20 run that nobody may read) and, with ``trace``, every node's output."""

    outputs: dict[str, np.ndarray]
    make_stats: Callable[[], pd.DataFrame] = field(repr=False)
    traces: dict[str, np.ndarray] = field(default_factory=dict)

    @functools.cached_property
    def stats(self) -> pd.DataFrame:
        """One row per layer: shapes, MACs, accumulator ranges, bounds, overflow events."""
        return self.make_stats()

    @property
    def logits(self) -> np.ndarray:
        """The program's (first) output as integers, (N, classes)."""
        return next(iter(self.outputs.values()))

    @property
    def predictions(self) -> np.ndarray:
        """Argmax of the integer logits; ties go to the lowest index."""
        return np.argmax(self.logits.reshape(len(self.logits), -1), axis=1)

    def accuracy(self, labels: np.ndarray) -> float:
        """Top-1 accuracy against integer labels."""
        return float(np.mean(self.predictions == np.asarray(labels)))


@dataclass
class _Plan:
    node: Node
    rq: NodeRequant | None
    #: the node's effective precision (the NPU's body or its first matching [[layer]] table)
    prec: "PrecisionConfig | None" = None
    k: int = 0
    macs: int = 0
    work: int = 0  # per image (`node_work`): times the batch, it decides the node's threads
    bound_dtype: int = 0
    bound_l1: int = 0
    bound_l1_nobias: int = 0
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    prep: Int8Conv | None = None
    #: (node requant, settings, `Requant` record made from them): reused by later runs
    req: tuple | None = None


def check_runnable(config: "NPUConfig", program: IntegerProgram) -> None:
    """Raise the one-line `SimulationError` `Simulator.run` raises when this NPU cannot run
    `program` (datapath widths, a product wider than the accumulator, the requant product
    register, requant settings); the one check `simulate` and `cost` share."""
    Simulator(config, engine="reference").plan(program)


class Simulator:
    """A bit-accurate integer NPU described by an `NPUConfig`."""

    def __init__(self, config: "NPUConfig", engine: str = "auto", count_events: bool = True) -> None:
        """`engine` computes the convs' exact sums: "auto", "reference" (the order-faithful
        kernel on every output), "float" or "int8" (see `npusim.sim.engines`). With
        `count_events` False, layers whose accumulators only wrap get their (exact) values
        without the order-faithful walk and report None overflow events
        (`accumulate.wrap_shortcut`); saturating layers are still walked and counted."""
        self.config = config
        self.count_events = count_events
        try:
            self.engine = engines.select(engine)
        except engines.EngineError as e:
            raise SimulationError(str(e)) from None
        #: the engine that computes: "reference", "float" or "int8" ("auto" resolved)
        self.engine_used = self.engine.used
        #: the requantization of the planned program: its own spec with the NPU's pinned
        #: ``[requant]`` keys laid over it, and ``{key: (program's, NPU's)}`` where they differ
        self.settings: RequantSpec = RequantSpec()
        self.requant_changes: dict[str, tuple] = {}
        #: wall seconds spent in each node during the last `run` (for benchmarks)
        self.node_seconds: dict[str, float] = {}
        self._threads = numba.get_num_threads()
        #: the thread count last set for a node, shared by the simulators of one `run_many`
        #: call (a set costs ~2 us, ~30 per batch-1 ResNet-20 run; None: unknown)
        self._threads_set: dict = {"n": None}
        self._plan_cache: tuple[IntegerProgram, list[_Plan]] | None = None
        #: plan pieces that depend on the program only (bounds, int64 weights, requant
        #: records, int8 weight packing), shared by the simulators of one `run_many` call
        self._memo: dict | None = None

    # ------------------------------------------------------------------ checks
    def _plans_for(self, program: IntegerProgram) -> list[_Plan]:
        """`plan(program)`, reused while the same program object is run again (repeated runs
        of one program, e.g. batch after batch, skip the checks and the weight packing)."""
        if self._plan_cache is None or self._plan_cache[0] is not program:
            self._plan_cache = (program, self.plan(program))
        self._use_requant_of(program)  # a `plan` of another program may have run since
        return self._plan_cache[1]

    def _use_requant_of(self, program: IntegerProgram) -> None:
        """Set `settings` / `requant_changes` for `program`; warn (once) where they differ."""
        try:
            own = RequantSpec.from_dict(program.requant)
        except ValueError as e:
            raise SimulationError(f"program: {e}") from None
        self.settings = self.config.requant.over(own)
        self.requant_changes = self.config.requant.changes(own)
        if self.requant_changes:
            _warn_once(program, f"NPU {self.config.name!r} runs the program with its own "
                       f"[requant] keys: {changes_text(self.requant_changes)}")

    def _memo_get(self, key: tuple, make):
        """`make()`, or its value from the `run_many` memo under `key`."""
        if self._memo is None:
            return make()
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    def plan(self, program: IntegerProgram) -> list[_Plan]:
        """Check the program against this NPU and derive every node's parameters."""
        self._use_requant_of(program)
        try:
            self.config.check_layers([n.name for n in program.nodes])
        except UserError as e:
            raise SimulationError(str(e)) from None
        plans = []
        for node in program.nodes:
            ctx = f"node {node.name!r}"
            rq = None
            p = _Plan(node, None, self.config.precision_for(node.name))
            if OPS[node.op].unit == "array":
                self._plan_gemm(program, node, p)
            p.work = node_work(program, node, p.macs)
            if OPS[node.op].requantizes(node):
                try:
                    rq = self._memo_get(("requant", node.name, self.settings),
                                        lambda: node_requant(program, node, self.settings))
                except ValueError as e:
                    raise SimulationError(f"{ctx}: {e}") from None
                if self.settings.scale_mode == "fixed":
                    self._check_product_width(program, node, rq, p)
                self._check_stored(program, node, rq)
            p.rq = rq
            plans.append(p)
        return plans

    def _plan_gemm(self, program: IntegerProgram, node: Node, p: _Plan) -> None:
        """Check a conv2d/linear node against the datapath; pack its weights for the engines."""
        cfg = self.config
        prec = p.prec
        t = program.tensors
        ctx = f"node {node.name!r}"
        w = program.arrays[f"{node.name}.weight"]
        wt, xt = t[f"{node.name}.weight"], t[node.inputs[0]]
        if wt.bits > cfg.array.max_weight_bits:
            raise SimulationError(
                f"{ctx}: {wt.bits}-bit weights but the NPU datapath takes at most "
                f"{cfg.array.max_weight_bits} (array.max_weight_bits)")
        if xt.bits > cfg.array.max_input_bits:
            raise SimulationError(
                f"{ctx}: {xt.bits}-bit inputs but the NPU datapath takes at most "
                f"{cfg.array.max_input_bits} (array.max_input_bits)")
        lb = self._memo_get(("bounds", node.name), lambda: layer_bounds(program, node))
        widest = prec.pe_acc_bits if cfg.array.dataflow != "os" else prec.acc_bits
        if lb.product_bits > min(widest, prec.acc_bits):
            where = "precision" if cfg.layer_index(node.name) is None else \
                f"layer[{cfg.layer_index(node.name)}].precision"
            raise SimulationError(
                f"{ctx}: a single product needs {lb.product_bits} bits but the "
                f"accumulator has {min(widest, prec.acc_bits)} "
                f"({where}.acc_bits/pe_acc_bits)")
        p.k, p.macs = lb.k, lb.macs_per_image
        p.weight = self._memo_get(("weight", node.name), lambda: w.astype(np.int64).reshape(
            *w.shape, *(1,) * (4 - w.ndim)))  # linear: a 1x1 conv
        p.bias = program.arrays[f"{node.name}.bias"].astype(np.int64)
        p.bound_dtype, p.bound_l1 = lb.bound_dtype_bits, lb.bound_l1_bits
        p.bound_l1_nobias = lb.bound_l1_nobias_bits
        if self.engine.int8_kind:
            stride, pad, groups = _conv_params(node)
            p.prep = prepare_conv(
                self.engine, p.weight, p.bias, stride, pad, groups, xt.zero_point, xt.int_range(),
                self._levels(prec), p.bound_l1, p.bound_l1_nobias, self.count_events,
                packed=lambda key, make: self._memo_get(("int8", node.name, key), make))

    def _check_product_width(self, program: IntegerProgram, node: Node, rq: NodeRequant,
                             p: _Plan) -> None:
        """acc * m0 (after TFLite's left shift for M >= 1) must fit a 64-bit register.

        The accumulator reaching requantization is bounded by the exact weight bound, and in
        wrap/saturate modes also by the accumulator width.
        """
        from npusim.ir.arith import TFLITE_DOUBLE

        b = self.settings.multiplier_bits
        kernel = KERNELS[node.op]
        width = kernel.requant_width(self, program, node, p)
        left = 0
        # a residual add rescales each input with `add_frac_bits` more fractional bits
        n = rq.n - self.settings.add_frac_bits if kernel.rescales_inputs else rq.n
        if self.settings.code == TFLITE_DOUBLE and n.size:
            left = int(np.max(np.maximum((b - 1) - n, 0)))
        elif n.size:  # single rounding: a negative shift is an exact left shift of acc * m0
            left = int(np.max(np.maximum(-n, 0)))
        if width + b + left > 64:
            raise SimulationError(
                f"node {node.name!r}: the requantization product needs {width}+{b}"
                f"{'+' + str(left) if left else ''} bits, more than a 64-bit register "
                f"(narrow requant.multiplier_bits or precision.acc_bits)")

    def _check_stored(self, program: IntegerProgram, node: Node, rq: NodeRequant) -> None:
        """When the NPU uses the program's own requant settings, its stored multipliers must be
        exactly what the shared decomposition gives (else the file was not made by it)."""
        if self.requant_changes:
            return
        if self.settings.scale_mode == "float":
            return
        m0 = program.arrays.get(f"{node.name}.multiplier")
        sh = program.arrays.get(f"{node.name}.shift")
        if m0 is None or sh is None:
            return
        if not (np.array_equal(m0.astype(np.int64), rq.m0) and np.array_equal(sh.astype(np.int64), rq.n)):
            raise SimulationError(
                f"node {node.name!r}: stored multiplier/shift disagree with the scales in the "
                f"tensor table under the program's requant settings")

    def _levels(self, prec: "PrecisionConfig") -> LevelSpec:
        """The two accumulator levels of a node running at `prec`."""
        cfg = self.config
        return LevelSpec(K.ORDER_CODES[cfg.array.dataflow], cfg.array.rows, prec.pe_acc_bits,
                         K.MODE_CODES[prec.pe_mode], prec.acc_bits, K.MODE_CODES[prec.acc_mode])

    # ------------------------------------------------------------------ running
    def run(self, program: IntegerProgram, images: np.ndarray, trace: bool = False,
            batch_size: int = 256, progress: bool | None = False) -> SimResult:
        """Simulate `images` (uint8 (N, C, H, W)) through `program` (`progress`: see
        `run_many`)."""
        return run_many([self], program, images, trace, batch_size, progress)[0]

    def _check_images(self, program: IntegerProgram, images: np.ndarray) -> np.ndarray:
        in_spec = program.tensors[program.input]
        images = np.asarray(images)
        if images.ndim != 1 + len(in_spec.shape) or tuple(images.shape[1:]) != tuple(in_spec.shape):
            raise SimulationError(f"images: expected shape (N, {', '.join(map(str, in_spec.shape))}), "
                                  f"got {tuple(images.shape)}")
        lo, hi = in_spec.int_range()
        if images.dtype.kind not in "iu" or (images.size and (images.min() < lo or images.max() > hi)):
            raise SimulationError(f"images: expected integers in [{lo}, {hi}] ({in_spec.bits}-bit "
                                  f"{'signed' if in_spec.signed else 'unsigned'}), got {images.dtype}")
        # kept in the storage dtype like every tensor: the kernels see the types they are
        # compiled for, whatever integer dtype the caller used
        return images.astype(arith.storage_dtype(lo, hi), copy=False)

    def _run_node(self, program, i, p, vals, st, last_use, share=None, keep_all=True):
        """Run node `i` (plan `p`) on the tensors in `vals` (channels last (N, H, W, C) or
        flat (N, F), narrow dtypes), storing its output there and its stats in `st`. `share`
        (a dict per node, common to the configurations of `run_many`) lets a configuration
        reuse another's result when it is provably identical."""
        s = self.settings
        scale_float = s.scale_mode == "float"
        threads = self._threads
        t0 = time.perf_counter()
        node = p.node
        # small nodes run on one thread: a parallel region waits for every worker, which
        # costs more than the work when the machine is busy (torch does the same)
        want = threads if parallel(len(vals[node.inputs[0]]) * p.work) else 1
        if self._threads_set["n"] != want:
            numba.set_num_threads(want)
            self._threads_set["n"] = want
        t_out = program.tensors[node.output]
        zp_y = t_out.zero_point
        lo, hi = node.attrs.get("clamp", t_out.int_range())
        rq = p.rq
        kernel = KERNELS[node.op]
        y = reused = None
        if share is not None and not kernel.shares_inside:
            # elementwise/pooling/lookup nodes: the same input objects under the same
            # requantization settings give the same output object
            ins = [vals[name] for name in node.inputs]
            reused = next((y0 for s0, ins0, y0 in share.setdefault("outs", [])
                           if s0 == s and all(a is b for a, b in zip(ins0, ins))), None)
            y = reused
        if y is None:
            y = kernel.run(self, _Call(program, p, vals, st, share, t_out, zp_y, lo, hi, rq,
                                       scale_float))
        if share is not None and not kernel.shares_inside and reused is None:
            share["outs"].append((s, ins, y))
        vals[node.output] = y
        if not keep_all:  # free what no later node reads (peak memory of big batches)
            for name in node.inputs:
                if last_use.get(name) == i and name not in program.outputs:
                    vals.pop(name, None)
        self.node_seconds[node.name] += time.perf_counter() - t0

    def _run_gemm(self, c: "_Call") -> np.ndarray:
        """conv2d / linear on the MAC array (see `accumulate.conv_accumulate`)."""
        s, node, p, rq, x = self.settings, c.node, c.p, c.rq, c.x
        xt = c.program.tensors[node.inputs[0]]
        n = len(x)
        stride, pad, groups = _conv_params(node)
        x4 = x.reshape(n, 1, 1, -1) if x.ndim == 2 else x  # linear: a 1x1 conv
        out_hw = tuple(c.t_out.shape[1:]) if len(c.t_out.shape) == 3 else (1, 1)
        req = None
        if rq is not None:
            made = (c.scale_float, s.code, s.multiplier_bits, c.zp_y, c.lo, c.hi)
            if p.req is None or p.req[0] is not rq or p.req[1] != made:
                p.req = (rq, made, Requant.of(rq.m0, rq.n, rq.mf, *made))
            req = p.req[2]
        acc, ast = conv_accumulate(x4, p.weight, p.bias, stride, pad, groups,
                                   xt.zero_point, out_hw, self._levels(p.prec), p.bound_l1,
                                   p.bound_l1_nobias, self.engine, p.prep, req, c.share,
                                   self.count_events)
        c.st[node.name] = ast
        return acc if x.ndim == 4 else acc.reshape(n, -1)

    def _stats_table(self, program, plans, stats, n_img) -> pd.DataFrame:
        rows = []
        for p in plans:
            node = p.node
            prec = p.prec
            parts = stats[node.name]
            row = {"layer": node.name, "op": node.op,
                   "output_shape": "x".join(map(str, program.tensors[node.output].shape)),
                   "images": n_img, "macs_per_image": p.macs}
            if parts:
                lo = min(a.acc_min for a in parts)
                hi = max(a.acc_max for a in parts)
                row.update({
                    "nonzero_macs": sum(a.nonzero_macs for a in parts),
                    "pe_overflows": _total(a.pe_overflows for a in parts),
                    "acc_overflows": _total(a.acc_overflows for a in parts),
                    "acc_min": lo, "acc_max": hi,
                    "observed_bits": bits_needed(min(lo, 0), max(hi, 0)),
                    "bound_l1_bits": p.bound_l1, "bound_dtype_bits": p.bound_dtype,
                    "pe_acc_bits": prec.pe_acc_bits, "acc_bits": prec.acc_bits,
                    "overflow": _mode_text(prec),
                    "sequential_outputs": sum(a.sequential_outputs for a in parts),
                    "screened_chunks": sum(a.screened_chunks for a in parts),
                    "walked_chunks": sum(a.walked_chunks for a in parts),
                })
            rows.append(row)
        # one construction from typed columns (assigning columns one by one after a
        # row-wise construction cost half of a small batch's run)
        names = list(dict.fromkeys(k for r in rows for k in r))
        cols = {}
        for c in names:
            vals = [r.get(c) for r in rows]
            if c in _INT_COLUMNS:  # nullable int64 from data and mask (pd.array's own
                # inference over a list costs twice as much)
                vals = pd.arrays.IntegerArray(
                    np.array([0 if v is None else v for v in vals], np.int64),
                    np.array([v is None for v in vals], bool))
            cols[c] = vals
        return pd.DataFrame(cols, index=pd.RangeIndex(len(rows)))


def _mode_text(prec: "PrecisionConfig") -> str:
    """``wrap``, or ``pe/acc`` modes when the two levels differ (``wrap/saturate``)."""
    return prec.acc_mode if prec.pe_mode == prec.acc_mode else f"{prec.pe_mode}/{prec.acc_mode}"


# ------------------------------------------------------------------------ kernels

def _conv_params(node: Node) -> tuple[int, int, int]:
    """(stride, padding, groups) of a MAC-array node; a linear layer is a 1x1 conv of them."""
    a = node.attrs
    return a.get("stride", 1), a.get("padding", 0), a.get("groups", 1)


@dataclass
class _Call:
    """What a kernel needs to run one node on one batch (see `Simulator._run_node`)."""

    program: IntegerProgram
    p: _Plan
    vals: dict[str, np.ndarray]
    st: dict
    share: dict | None
    t_out: TensorSpec
    zp_y: int
    lo: int
    hi: int
    rq: NodeRequant | None
    scale_float: bool

    @property
    def node(self) -> Node:
        return self.p.node

    @property
    def x(self) -> np.ndarray:
        return self.vals[self.node.inputs[0]]


def _run_add(sim: Simulator, c: _Call) -> np.ndarray:
    s, node, rq, t = sim.settings, c.node, c.rq, c.program.tensors
    ta, tb = t[node.inputs[0]], t[node.inputs[1]]
    return arith.residual_add(c.vals[node.inputs[0]], c.vals[node.inputs[1]], ta.zero_point,
                              tb.zero_point, rq.m0, rq.n, rq.mf, s.add_frac_bits, c.scale_float,
                              s.code, s.shift_code, s.multiplier_bits, c.zp_y, c.lo, c.hi,
                              arith.storage_dtype(*c.t_out.int_range()))


def _run_pool(sim: Simulator, c: _Call) -> np.ndarray:
    """maxpool2d / avgpool2d / global_avgpool: one window kernel (the max takes no requant)."""
    s, node, rq, x, t_out, lo, hi = sim.settings, c.node, c.rq, c.x, c.t_out, c.lo, c.hi
    xt = c.program.tensors[node.inputs[0]]
    op = OPS[node.op]
    is_max = op.real_multipliers is None
    if op.has_attr("kernel"):
        k, stride, pad = op.attr(node, "kernel"), op.attr(node, "stride"), op.attr(node, "padding")
    else:  # a global pool: one window over the whole map
        k, stride, pad = x.shape[1], 1, 0
        if x.shape[1] != x.shape[2]:
            raise SimulationError(f"node {node.name!r}: global pooling needs a square map")
    if pad and not is_max and not op.attr(node, "count_include_pad"):
        raise SimulationError(f"node {node.name!r}: count_include_pad=false with padding is "
                              f"ONNX Runtime's arithmetic only (requant.scale_mode float)")
    ch, ho, wo = t_out.shape
    x = np.ascontiguousarray(x)
    if is_max:  # exact in the input's own dtype
        out = np.empty((len(x), ho, wo, ch), x.dtype)
        K.maxpool_kernel(x, k, stride, pad, out)
        return _stored(out, t_out)
    out = np.empty((len(x), ho, wo, ch), np.int64)
    K.pool_kernel(x, k, stride, pad, xt.zero_point,
                  arith.requant_params(int(rq.m0[0]), int(rq.n[0]), rq.mf[0], c.scale_float,
                                       s.code, s.multiplier_bits, c.zp_y, lo, hi), out)
    return _stored(out, t_out)


def _run_avgpool(sim: Simulator, c: _Call) -> np.ndarray:
    """avgpool2d: in the float mode ONNX Runtime's QLinearAveragePool (float32 sums of the
    dequantized inputs, `ops.avgpool_sums_floats`), otherwise integer sums (`_run_pool`)."""
    node, op = c.node, OPS[c.node.op]
    if not (c.scale_float and avgpool_sums_floats(c.program, node)):
        return _run_pool(sim, c)
    xt, t_out = c.program.tensors[node.inputs[0]], c.t_out
    ch, ho, wo = t_out.shape
    out = np.empty((len(c.x), ho, wo, ch), np.int64)
    K.avgpool_float_kernel(np.ascontiguousarray(c.x), op.attr(node, "kernel"),
                           op.attr(node, "stride"), op.attr(node, "padding"),
                           bool(op.attr(node, "count_include_pad")), xt.zero_point,
                           np.float32(xt.scales()[0]), np.float32(t_out.scales()[0]), c.zp_y,
                           c.lo, c.hi, out)
    return _stored(out, t_out)


def _run_flatten(sim: Simulator, c: _Call) -> np.ndarray:
    """In the NCHW order of the program's tensors."""
    x, n = c.x, len(c.x)
    return x.reshape(n, -1) if x.ndim == 2 or x.shape[1] * x.shape[2] == 1 else \
        x.transpose(0, 3, 1, 2).reshape(n, -1)


def _run_concat(sim: Simulator, c: _Call) -> np.ndarray:
    """Along channels (the last axis of the channels-last batch); each input requantized to
    the output's scale and zero point: fixed/pow2 with its own multiplier, the float mode as
    ONNX Runtime's QLinearConcat (`arith.ort_requantize_linear`)."""
    s, node, rq, t = sim.settings, c.node, c.rq, c.program.tensors
    parts = []
    for i, name in enumerate(node.inputs):
        ti = t[name]
        if c.scale_float:
            parts.append(arith.ort_requantize_linear(c.vals[name], ti.scales()[0], ti.zero_point,
                                                     c.t_out.scales()[0], c.zp_y, c.lo, c.hi))
        else:
            parts.append(arith.requant_values(c.vals[name], ti.zero_point, int(rq.m0[i]),
                                              int(rq.n[i]), s.code, s.multiplier_bits, c.zp_y,
                                              c.lo, c.hi))
    return _stored(np.concatenate(parts, axis=-1), c.t_out)


def _run_slice(sim: Simulator, c: _Call) -> np.ndarray:
    """Channels [start, stop) (the last axis of the channels-last batch)."""
    a = c.node.attrs
    return np.ascontiguousarray(c.x[..., a["start"]:a["stop"]])


def _run_channel_shuffle(sim: Simulator, c: _Call) -> np.ndarray:
    """out[..., j*g + i] = in[..., i*(C/g) + j] on the channel (last) axis."""
    x, g = c.x, c.node.attrs["groups"]
    ch = x.shape[-1]
    return np.ascontiguousarray(
        x.reshape(*x.shape[:-1], g, ch // g).swapaxes(-1, -2).reshape(x.shape))


def _run_embed(sim: Simulator, c: _Call) -> np.ndarray:
    lut = c.program.arrays[f"{c.node.name}.lut"].astype(np.int64)
    ch, h, w = c.t_out.shape
    y = np.empty((len(c.x), h, w, ch), np.int64)
    K.embed_kernel(np.ascontiguousarray(c.x), lut, y)
    return _stored(y, c.t_out)


def _gemm_width(sim: Simulator, program: IntegerProgram, node: Node, p: _Plan) -> int:
    """The accumulator reaching requantization: the exact weight bound, and in wrap/saturate
    modes also the accumulator width."""
    prec = p.prec
    return p.bound_l1 if prec.acc_mode == "exact" else min(prec.acc_bits, p.bound_l1)


def _add_width(sim: Simulator, program: IntegerProgram, node: Node, p: _Plan) -> int:
    """add / concat: an input less its zero point."""
    return max(program.tensors[i].bits for i in node.inputs) + 1


def _pool_width(sim: Simulator, program: IntegerProgram, node: Node, p: _Plan) -> int:
    """Pooling sums: input bits plus the window's growth."""
    window = pool_window(program, node)
    return program.tensors[node.inputs[0]].bits + 1 + math.ceil(math.log2(max(window, 1)))


def _no_width(sim: Simulator, program: IntegerProgram, node: Node, p: _Plan) -> int:
    raise AssertionError(f"{node.op} does not requantize")  # pragma: no cover


@dataclass(frozen=True)
class Kernel:
    """The simulator's side of an op (`npusim.ir.ops.OPS` holds its meaning): `run` computes a
    node's output on a batch, `requant_width` bounds the bits of the value it requantizes.
    `shares_inside`: `run_many` configurations share its work inside the kernel (engine sums)
    rather than by reusing a whole output; `rescales_inputs`: its shift carries
    `add_frac_bits` extra fractional bits (the residual add)."""

    run: Callable[[Simulator, _Call], np.ndarray]
    requant_width: Callable[[Simulator, IntegerProgram, Node, _Plan], int] = _no_width
    shares_inside: bool = False
    rescales_inputs: bool = False


_GEMM = Kernel(Simulator._run_gemm, _gemm_width, shares_inside=True)
_POOL = Kernel(_run_pool, _pool_width)
#: one kernel per op of `npusim.ir.ops.OPS`, by name
KERNELS: dict[str, Kernel] = {
    "conv2d": _GEMM,
    "linear": _GEMM,
    "add": Kernel(_run_add, _add_width, rescales_inputs=True),
    "maxpool2d": _POOL,
    "avgpool2d": Kernel(_run_avgpool, _pool_width),
    "global_avgpool": _POOL,
    "flatten": Kernel(_run_flatten),
    "concat": Kernel(_run_concat, _add_width),
    "slice": Kernel(_run_slice),
    "channel_shuffle": Kernel(_run_channel_shuffle),
    "embed": Kernel(_run_embed),
}


_INT_COLUMNS = frozenset(["nonzero_macs", "pe_overflows", "acc_overflows", "acc_min", "acc_max",
                          "observed_bits", "bound_l1_bits", "bound_dtype_bits", "pe_acc_bits",
                          "acc_bits", "sequential_outputs", "screened_chunks",
                          "walked_chunks"])


def _total(counts) -> int | None:
    """Sum of event counts, None (not counted) if any is None."""
    counts = list(counts)
    return None if any(c is None for c in counts) else sum(counts)


def run_many(simulators: list[Simulator], program: IntegerProgram, images: np.ndarray,
             trace: bool = False, batch_size: int = 256,
             progress: bool | None = False) -> list[SimResult]:
    """Run several simulators (for example an accumulator-width sweep) over the same images,
    batch by batch and node by node, sharing work that is provably identical: a node whose
    inputs are the very tensors another configuration already processed reuses its engine
    sums, and its whole output when the settings that shape it agree and no output can
    overflow differently (see `accumulate.conv_accumulate`); outputs stay shared objects
    while the configurations have not diverged. Each result is exactly what ``sim.run``
    returns. `progress` shows a bar of batches on stderr (None: when stderr is a terminal)."""
    if not simulators:
        return []
    images = simulators[0]._check_images(program, images)
    memo: dict = {}  # what only the program decides is planned once for all of them
    for sim in simulators:
        sim._memo = memo
    try:
        plans = [sim._plans_for(program) for sim in simulators]
    finally:
        for sim in simulators:
            sim._memo = None
    n_img = len(images)
    outs = [{o: [] for o in program.outputs} for _ in simulators]
    traces: list[dict[str, list[np.ndarray]]] = [{} for _ in simulators]
    stats = [{p.node.name: [] for p in pl} for pl in plans]
    for sim, pl in zip(simulators, plans):
        sim.node_seconds = {p.node.name: 0.0 for p in pl}
    threads = numba.get_num_threads()
    last_use = _last_use(plans[0])
    shared = len(simulators) > 1
    threads_set = {"n": None}
    for sim in simulators:
        sim._threads = threads
        sim._threads_set = threads_set
    try:
        starts = range(0, max(n_img, 1), batch_size)
        if progress is None:
            progress = sys.stderr.isatty()
        for start in tqdm(starts, desc="simulate", unit="batch", disable=not progress or
                          len(starts) < 2, leave=False):
            chunk = _channels_last(images[start:start + batch_size])
            envs = [{program.input: chunk} for _ in simulators]
            sts: list[dict] = [{} for _ in simulators]
            # node by node, every configuration in turn: what they share (`share`) lives for
            # one node only
            for k in range(len(plans[0])):
                share: dict | None = {} if shared else None
                for i, sim in enumerate(simulators):
                    sim._run_node(program, k, plans[i][k], envs[i], sts[i], last_use, share,
                                  keep_all=trace)
            for i, pl in enumerate(plans):
                for o in program.outputs:
                    outs[i][o].append(envs[i][o])
                if trace:
                    for p in pl:
                        traces[i].setdefault(p.node.output, []).append(envs[i][p.node.output])
                for name, a in sts[i].items():
                    stats[i][name].append(a)
    finally:
        numba.set_num_threads(threads)

    def cat(parts: list[np.ndarray]) -> np.ndarray:  # back to the program's NCHW, int64
        y = np.concatenate(parts).astype(np.int64, copy=False)
        return np.ascontiguousarray(y.transpose(0, 3, 1, 2)) if y.ndim == 4 else y

    return [SimResult(outputs={o: cat(v) for o, v in outs[i].items()},
                      make_stats=functools.partial(sim._stats_table, program, plans[i],
                                                   stats[i], n_img),
                      traces={k: cat(v) for k, v in traces[i].items()})
            for i, sim in enumerate(simulators)]


_warned: list[tuple[weakref.ref, str]] = []


def _warn_once(program: IntegerProgram, message: str) -> None:
    """Log `message` as a warning once per program object (a sweep plans one program on many
    NPUs)."""
    _warned[:] = [(r, m) for r, m in _warned if r() is not None]
    if not any(r() is program and m == message for r, m in _warned):
        _warned.append((weakref.ref(program), message))
        log.warning("%s", message)


def _last_use(plans: list[_Plan]) -> dict[str, int]:
    """The index of the last node that reads each tensor."""
    last = {}
    for i, p in enumerate(plans):
        for name in p.node.inputs:
            last[name] = i
    return last


def overflow_rate(stats: pd.DataFrame) -> float:
    """Overflow events per MAC over the whole network (both levels)."""
    macs = float((stats["macs_per_image"] * stats["images"]).sum())
    ev = stats[["pe_overflows", "acc_overflows"]]
    if "acc_bits" in stats and ev[stats["acc_bits"].notna()].isna().to_numpy().any():
        return math.nan  # some layer's events were not counted (``count_events=False``)
    events = float(ev.fillna(0).to_numpy().sum())
    return events / macs if macs else math.nan
