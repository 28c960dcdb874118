"""The virtual NPU: runs an IntegerProgram bit-accurately on an `NPUConfig` (DESIGN §2, §5).

`Simulator(config).run(program, images)` checks that the NPU can run the program (refusing it
with a one-line reason otherwise), then executes every node with the numba kernels and returns
the integer outputs and a per-layer statistics table.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numba
import numpy as np
import pandas as pd

from npusim.sim import kernels as K
from npusim.sim import engines
from npusim.sim.accumulate import LevelSpec, Requant, conv_accumulate, prepare_conv
from npusim.sim.int8_engine import Int8Conv
from npusim.ir import arith
from npusim.ir.arith import bits_needed
from npusim.ir.bounds import layer_bounds
from npusim.ir.program import IntegerProgram, Node
from npusim.ir.requant import NodeRequant, RequantSettings, node_requant

if TYPE_CHECKING:
    from npusim.hw.config import NPUConfig

log = logging.getLogger(__name__)

_PARALLEL_MIN_WORK = 1 << 24  # MACs (or outputs) of a node below which it runs on one thread


def _channels_last(x: np.ndarray) -> np.ndarray:
    """(N, C, H, W) -> contiguous (N, H, W, C); other ranks unchanged."""
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if x.ndim == 4 else x


def _stored(y: np.ndarray, spec) -> np.ndarray:
    """`y` in the narrowest dtype of its tensor's integer range (activations are kept narrow:
    the simulator's cost is mostly moving them)."""
    return y.astype(arith.storage_dtype(*spec.int_range()), copy=False)


class SimulationError(ValueError):
    """The NPU cannot run this program, or the input is wrong; one-line reason."""


@dataclass
class SimResult:
    """What a simulation produced."""

    outputs: dict[str, np.ndarray]
    stats: pd.DataFrame
    traces: dict[str, np.ndarray] = field(default_factory=dict)

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
    k: int = 0
    macs: int = 0
    bound_dtype: int = 0
    bound_l1: int = 0
    bound_l1_nobias: int = 0
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    prep: Int8Conv | None = None


class Simulator:
    """A bit-accurate integer NPU described by an `NPUConfig`."""

    def __init__(self, config: "NPUConfig", engine: str = "auto") -> None:
        """`engine` computes the convs' exact sums: "auto", "reference" (the order-faithful
        kernel on every output), "float" or "int8" (see `npusim.sim.engines`)."""
        self.config = config
        try:
            self.engine = engines.select(engine)
        except engines.EngineError as e:
            raise SimulationError(str(e)) from None
        #: the engine that computes: "reference", "float" or "int8" ("auto" resolved)
        self.engine_used = self.engine.used
        rq = config.requant
        self.settings = RequantSettings(rq.scale_mode, rq.multiplier_bits, rq.max_shift,
                                        rq.rounding, rq.add_frac_bits)
        #: wall seconds spent in each node during the last `run` (for benchmarks)
        self.node_seconds: dict[str, float] = {}
        self._threads = numba.get_num_threads()
        self._plan_cache: tuple[IntegerProgram, list[_Plan]] | None = None

    # ------------------------------------------------------------------ checks
    def _plans_for(self, program: IntegerProgram) -> list[_Plan]:
        """`plan(program)`, reused while the same program object is run again (repeated runs
        of one program, e.g. batch after batch, skip the checks and the weight packing)."""
        if self._plan_cache is None or self._plan_cache[0] is not program:
            self._plan_cache = (program, self.plan(program))
        return self._plan_cache[1]

    def plan(self, program: IntegerProgram) -> list[_Plan]:
        """Check the program against this NPU and derive every node's parameters."""
        cfg = self.config
        prec = cfg.precision
        t = program.tensors
        plans = []
        for node in program.nodes:
            ctx = f"node {node.name!r}"
            rq = None
            p = _Plan(node, None)
            if node.op in ("conv2d", "linear"):
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
                lb = layer_bounds(program, node)
                widest = prec.pe_acc_bits if cfg.array.dataflow != "os" else prec.acc_bits
                if lb.product_bits > min(widest, prec.acc_bits):
                    raise SimulationError(
                        f"{ctx}: a single product needs {lb.product_bits} bits but the "
                        f"accumulator has {min(widest, prec.acc_bits)} "
                        f"(precision.acc_bits/pe_acc_bits)")
                p.k, p.macs = lb.k, lb.macs_per_image
                p.weight = w.astype(np.int64)
                p.bias = program.arrays[f"{node.name}.bias"].astype(np.int64)
                p.bound_dtype, p.bound_l1 = lb.bound_dtype_bits, lb.bound_l1_bits
                p.bound_l1_nobias = lb.bound_l1_nobias_bits
                if node.op == "linear":
                    p.weight = p.weight.reshape(*w.shape, 1, 1)
                if self.engine.int8_kind:
                    stride, pad, groups = (1, 0, 1) if node.op == "linear" else (
                        node.attrs["stride"], node.attrs["padding"], node.attrs["groups"])
                    p.prep = prepare_conv(self.engine, p.weight, stride, pad, groups,
                                          xt.zero_point, xt.int_range(), self._levels(),
                                          p.bound_l1, p.bound_l1_nobias)
            requant = node.op in ("conv2d", "linear", "add", "avgpool2d", "global_avgpool") \
                and node.attrs.get("requant", True)
            if requant:
                try:
                    rq = node_requant(program, node, self.settings)
                except ValueError as e:
                    raise SimulationError(f"{ctx}: {e}") from None
                if self.settings.scale_mode == "fixed":
                    self._check_product_width(program, node, rq, p)
                self._check_stored(program, node, rq)
            p.rq = rq
            plans.append(p)
        return plans

    def _check_product_width(self, program: IntegerProgram, node: Node, rq: NodeRequant,
                             p: _Plan) -> None:
        """acc * m0 (after TFLite's left shift for M >= 1) must fit a 64-bit register.

        The accumulator reaching requantization is bounded by the exact weight bound, and in
        wrap/saturate modes also by the accumulator width.
        """
        from npusim.ir.arith import TFLITE_DOUBLE

        prec = self.config.precision
        b = self.settings.multiplier_bits
        xt = program.tensors[node.inputs[0]]
        if node.op in ("conv2d", "linear"):
            width = p.bound_l1 if prec.acc_mode == "exact" else min(prec.acc_bits, p.bound_l1)
        elif node.op == "add":
            width = max(program.tensors[i].bits for i in node.inputs) + 1
        else:  # pooling sums: input bits plus the window's growth
            c, h, w = xt.shape
            window = node.attrs.get("kernel", 1) ** 2 if node.op == "avgpool2d" else h * w
            width = xt.bits + 1 + math.ceil(math.log2(max(window, 1)))
        left = 0
        # a residual add rescales each input with `add_frac_bits` more fractional bits
        n = rq.n - self.settings.add_frac_bits if node.op == "add" else rq.n
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
        if RequantSettings.from_dict(program.requant) != self.settings:
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

    def _levels(self) -> LevelSpec:
        cfg = self.config
        prec = cfg.precision
        return LevelSpec(K.ORDER_CODES[cfg.array.dataflow], cfg.array.rows, prec.pe_acc_bits,
                         K.MODE_CODES[prec.pe_mode], prec.acc_bits, K.MODE_CODES[prec.acc_mode])

    # ------------------------------------------------------------------ running
    def run(self, program: IntegerProgram, images: np.ndarray, trace: bool = False,
            batch_size: int = 256) -> SimResult:
        """Simulate `images` (uint8 (N, C, H, W)) through `program`."""
        return run_many([self], program, images, trace, batch_size)[0]

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
        return images

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
        # small layers run on one thread: a parallel region waits for every worker, which
        # costs more than the work when the machine is busy (torch does the same)
        work = len(vals[node.inputs[0]]) * max(p.macs, int(np.prod(
            program.tensors[node.output].shape)))
        numba.set_num_threads(1 if work < _PARALLEL_MIN_WORK else threads)
        t_out = program.tensors[node.output]
        zp_y = t_out.zero_point
        lo, hi = node.attrs.get("clamp", t_out.int_range())
        x = vals[node.inputs[0]]
        n = len(x)
        rq = p.rq
        y = reused = None
        if share is not None and node.op not in ("conv2d", "linear"):
            # elementwise/pooling/lookup nodes: the same input objects under the same
            # requantization settings give the same output object
            ins = [vals[name] for name in node.inputs]
            reused = next((y0 for s0, ins0, y0 in share.setdefault("outs", [])
                           if s0 == s and all(a is b for a, b in zip(ins0, ins))), None)
            y = reused
        if y is not None:
            pass
        elif node.op in ("conv2d", "linear"):
            xt = program.tensors[node.inputs[0]]
            if node.op == "linear":
                x4 = x.reshape(n, 1, 1, -1)
                stride, pad, groups = 1, 0, 1
            else:
                stride, pad, groups = node.attrs["stride"], node.attrs["padding"], node.attrs["groups"]
                x4 = x
            out_hw = (t_out.shape[1], t_out.shape[2]) if node.op == "conv2d" else (1, 1)
            req = None if rq is None else Requant(rq.m0, rq.n, rq.mf, scale_float, s.code,
                                                  s.multiplier_bits, zp_y, lo, hi)
            acc, ast = conv_accumulate(x4, p.weight, p.bias, stride, pad, groups,
                                       xt.zero_point, out_hw, self._levels(), p.bound_l1,
                                       p.bound_l1_nobias, self.engine, p.prep, req, share)
            y = acc if node.op == "conv2d" else acc.reshape(n, -1)
            st[node.name] = ast
        elif node.op == "add":
            a, b = vals[node.inputs[0]], vals[node.inputs[1]]
            ta, tb = program.tensors[node.inputs[0]], program.tensors[node.inputs[1]]
            y = arith.residual_add(a, b, ta.zero_point, tb.zero_point, rq.m0, rq.n, rq.mf,
                                   s.add_frac_bits, scale_float, s.code, s.shift_code,
                                   s.multiplier_bits, zp_y, lo, hi,
                                   arith.storage_dtype(*t_out.int_range()))
        elif node.op in ("maxpool2d", "avgpool2d", "global_avgpool"):
            xt = program.tensors[node.inputs[0]]
            is_max = node.op == "maxpool2d"
            if node.op == "global_avgpool":
                k, stride, pad = x.shape[1], 1, 0
                if x.shape[1] != x.shape[2]:
                    raise SimulationError(f"node {node.name!r}: global pooling needs a square map")
            else:
                k, stride, pad = node.attrs["kernel"], node.attrs["stride"], node.attrs.get("padding", 0)
            if pad:
                fill = np.iinfo(np.int64).min if is_max else xt.zero_point
                x = np.pad(x.astype(np.int64), ((0, 0), (pad, pad), (pad, pad), (0, 0)),
                           constant_values=fill)
            c, ho, wo = t_out.shape
            out = np.empty((n, ho, wo, c), np.int64)
            if is_max:
                m0, nsh, mf = 0, 0, np.float32(0)
                lo, hi = t_out.int_range()
            else:
                m0, nsh, mf = int(rq.m0[0]), int(rq.n[0]), rq.mf[0]
            K.pool_kernel(np.ascontiguousarray(x), k, stride, is_max, xt.zero_point,
                          arith.requant_params(m0, nsh, mf, scale_float, s.code,
                                               s.multiplier_bits, zp_y, lo, hi), out)
            y = _stored(out, t_out)
        elif node.op == "flatten":  # in the NCHW order of the program's tensors
            y = x.reshape(n, -1) if x.ndim == 2 or x.shape[1] * x.shape[2] == 1 else \
                x.transpose(0, 3, 1, 2).reshape(n, -1)
        elif node.op == "embed":
            lut = program.arrays[f"{node.name}.lut"].astype(np.int64)
            c, h, w_ = t_out.shape
            y = np.empty((n, h, w_, c), np.int64)
            K.embed_kernel(np.ascontiguousarray(x), lut, y)
            y = _stored(y, t_out)
        else:  # pragma: no cover - the program loader rejects unknown ops
            raise SimulationError(f"node {node.name!r}: unsupported op {node.op!r}")
        if share is not None and node.op not in ("conv2d", "linear") and reused is None:
            share["outs"].append((s, ins, y))
        vals[node.output] = y
        if not keep_all:  # free what no later node reads (peak memory of big batches)
            for name in node.inputs:
                if last_use.get(name) == i and name not in program.outputs:
                    vals.pop(name, None)
        self.node_seconds[node.name] += time.perf_counter() - t0

    def _stats_table(self, program, plans, stats, n_img) -> pd.DataFrame:
        prec = self.config.precision
        rows = []
        for p in plans:
            node = p.node
            parts = stats[node.name]
            row = {"layer": node.name, "op": node.op,
                   "output_shape": "x".join(map(str, program.tensors[node.output].shape)),
                   "images": n_img, "macs_per_image": p.macs}
            if parts:
                lo = min(a.acc_min for a in parts)
                hi = max(a.acc_max for a in parts)
                row.update({
                    "nonzero_macs": sum(a.nonzero_macs for a in parts),
                    "pe_overflows": sum(a.pe_overflows for a in parts),
                    "acc_overflows": sum(a.acc_overflows for a in parts),
                    "acc_min": lo, "acc_max": hi,
                    "observed_bits": bits_needed(min(lo, 0), max(hi, 0)),
                    "bound_l1_bits": p.bound_l1, "bound_dtype_bits": p.bound_dtype,
                    "pe_acc_bits": prec.pe_acc_bits, "acc_bits": prec.acc_bits,
                    "sequential_outputs": sum(a.sequential_outputs for a in parts),
                })
            rows.append(row)
        df = pd.DataFrame(rows)
        for c in ["nonzero_macs", "pe_overflows", "acc_overflows", "acc_min", "acc_max",
                  "observed_bits", "bound_l1_bits", "bound_dtype_bits", "pe_acc_bits",
                  "acc_bits", "sequential_outputs"]:
            if c in df:
                df[c] = df[c].astype("Int64")
        return df


def run_many(simulators: list[Simulator], program: IntegerProgram, images: np.ndarray,
             trace: bool = False, batch_size: int = 256) -> list[SimResult]:
    """Run several simulators (for example an accumulator-width sweep) over the same images,
    batch by batch and node by node, sharing work that is provably identical: a node whose
    inputs are the very tensors another configuration already processed reuses its engine
    sums, and its whole output when the settings that shape it agree and no output can
    overflow differently (see `accumulate.conv_accumulate`); outputs stay shared objects
    while the configurations have not diverged. Each result is exactly what ``sim.run``
    returns."""
    if not simulators:
        return []
    images = simulators[0]._check_images(program, images)
    plans = [sim._plans_for(program) for sim in simulators]
    n_img = len(images)
    outs = [{o: [] for o in program.outputs} for _ in simulators]
    traces: list[dict[str, list[np.ndarray]]] = [{} for _ in simulators]
    stats = [{p.node.name: [] for p in pl} for pl in plans]
    for sim, pl in zip(simulators, plans):
        sim.node_seconds = {p.node.name: 0.0 for p in pl}
    threads = numba.get_num_threads()
    last_use = _last_use(plans[0])
    shared = len(simulators) > 1
    for sim in simulators:
        sim._threads = threads
    try:
        for start in range(0, max(n_img, 1), batch_size):
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
                      stats=sim._stats_table(program, plans[i], stats[i], n_img),
                      traces={k: cat(v) for k, v in traces[i].items()})
            for i, sim in enumerate(simulators)]


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
    events = float(stats[["pe_overflows", "acc_overflows"]].fillna(0).to_numpy().sum())
    return events / macs if macs else math.nan
