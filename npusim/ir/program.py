"""The IntegerProgram file: the only interface between `quantize` and the simulator (docs/program_format.md).

One ``.safetensors`` file read with ``safetensors.numpy`` (nothing is unpickled): named integer
arrays plus a JSON manifest in the header metadata under the key ``npusim``. Loading validates
the format and version, ops, attributes, dtypes, shapes, the range of every integer array
against its declared bits and the graph wiring, and names the first offending node and field.
Writing is atomic.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from npusim.errors import UserError
from npusim.ir.ops import OPS
from npusim.ir.requant import RequantSpec
from npusim.limits import (
    INT_DTYPES,
    MAX_HEADER_BYTES,
    MAX_PROGRAM_BYTES,
    check_limits,
    check_shape,
)

FORMAT_NAME = "npusim.integer_program"
FORMAT_VERSION = 1
METADATA_KEY = "npusim"


class ProgramError(UserError):
    """An IntegerProgram that is malformed; the message names the file, node and field."""


_DTYPE_FOR_BITS = ((8, np.int8), (16, np.int16), (32, np.int32), (64, np.int64))


def storage_dtype(bits: int, signed: bool) -> np.dtype:
    """Smallest of int8/int16/int32/int64 (uint8 for unsigned <= 8 bits) holding the range."""
    if not signed and bits <= 8:
        return np.dtype(np.uint8)
    need = bits if signed else bits + 1
    for width, dt in _DTYPE_FOR_BITS:
        if need <= width:
            return np.dtype(dt)
    raise ValueError(f"{bits}-bit {'signed' if signed else 'unsigned'} values need more than 64 bits")


@dataclass
class TensorSpec:
    """A named tensor: shape (without batch for activations), bit width, sign, scale, zero point."""

    shape: tuple[int, ...]
    bits: int
    signed: bool
    scale: float | list[float] = 1.0
    zero_point: int = 0

    def int_range(self) -> tuple[int, int]:
        if self.signed:
            return -(1 << (self.bits - 1)), (1 << (self.bits - 1)) - 1
        return 0, (1 << self.bits) - 1

    def scales(self) -> np.ndarray:
        """The scale as a float64 array (per channel or a single element)."""
        return np.atleast_1d(np.asarray(self.scale, dtype=np.float64))

    def to_json(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "bits": self.bits, "signed": self.signed,
                "scale": self.scale, "zero_point": self.zero_point}


@dataclass
class Node:
    """One op of the graph: its inputs and output are tensor names."""

    name: str
    op: str
    inputs: list[str]
    output: str
    attrs: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "op": self.op, "inputs": list(self.inputs),
                "output": self.output, "attrs": self.attrs}


@dataclass
class IntegerProgram:
    """An exported integer network: nodes in execution order, tensor table and arrays."""

    nodes: list[Node]
    tensors: dict[str, TensorSpec]
    arrays: dict[str, np.ndarray]
    input: str
    outputs: list[str]
    requant: dict[str, Any]
    quant_config: dict[str, Any] = field(default_factory=dict)
    producer: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def array(self, node: str, key: str) -> np.ndarray:
        return self.arrays[f"{node}.{key}"]

    def manifest(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "producer": self.producer,
            "quant_config": self.quant_config,
            "requant": self.requant,
            "input": self.input,
            "outputs": list(self.outputs),
            "meta": self.meta,
            "tensors": {k: v.to_json() for k, v in self.tensors.items()},
            "nodes": [n.to_json() for n in self.nodes],
        }

    def validate(self, where: str = "<program>") -> IntegerProgram:
        """Check the program fully; raise ProgramError naming `where`, the node and the field."""
        _validate(self, where)
        return self


def save_program(program: IntegerProgram, path: str | os.PathLike) -> Path:
    """Validate and write `program` atomically to `path` (.safetensors)."""
    from safetensors.numpy import save

    path = Path(path)
    program.validate(str(path))
    tensors = {k: np.ascontiguousarray(v) for k, v in program.arrays.items()}
    data = save(tensors, metadata={METADATA_KEY: json.dumps(program.manifest(), sort_keys=True)})
    from npusim.io import atomic_write_bytes

    return atomic_write_bytes(path, data)


def _read_header(path: Path, where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The safetensors header of `path`, checked against the file and the limits without reading
    tensor data: (tensor entries by name, metadata)."""
    def fail(msg: str) -> None:
        raise ProgramError(f"{where}: {msg}")

    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            fail("not a readable safetensors file (shorter than its 8-byte header length)")
        n = int.from_bytes(head, "little")
        if n > MAX_HEADER_BYTES or 8 + n > size:
            fail(f"not a readable safetensors file (header length {n} exceeds "
                 f"{'the file' if 8 + n > size else f'{MAX_HEADER_BYTES} bytes'})")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            header = None
        except RecursionError:
            fail("not a readable safetensors file (header JSON nested too deeply)")
    if not isinstance(header, dict):
        fail("not a readable safetensors file (header is not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        fail("safetensors __metadata__ is not an object")
    data_size, spans, total = size - 8 - n, [], 0
    for name, e in header.items():
        ctx = f"array {name!r}"
        if not (isinstance(e, dict) and set(e) == {"dtype", "shape", "data_offsets"}):
            fail(f"{ctx}: header entry must hold exactly dtype, shape and data_offsets")
        if not isinstance(e["dtype"], str) or e["dtype"] not in INT_DTYPES:
            fail(f"{ctx}: dtype {e['dtype']!r} is not an integer type "
                 f"({', '.join(INT_DTYPES)})")
        count = check_shape(e["shape"], ctx, fail)
        off = e["data_offsets"]
        if not (isinstance(off, list) and len(off) == 2 and all(isinstance(o, int) for o in off)
                and 0 <= off[0] <= off[1] <= data_size):
            fail(f"{ctx}: data_offsets {off!r} outside the file's {data_size} data bytes")
        if off[1] - off[0] != count * INT_DTYPES[e["dtype"]]:
            fail(f"{ctx}: data_offsets span {off[1] - off[0]} bytes, shape {e['shape']} "
                 f"{e['dtype']} needs {count * INT_DTYPES[e['dtype']]}")
        total += off[1] - off[0]
        spans.append((off[0], off[1], name))
    if total > MAX_PROGRAM_BYTES:
        fail(f"arrays: {total} bytes, at most {MAX_PROGRAM_BYTES} allowed")
    spans.sort()
    for (_, end, a), (begin, _, b) in itertools.pairwise(spans):
        if begin < end:
            fail(f"array {b!r}: data overlaps array {a!r}")
    return header, metadata


def load_program(path: str | os.PathLike) -> IntegerProgram:
    """Read and fully validate an IntegerProgram file: the header and the manifest are checked
    (against the limits, with shape-only placeholder arrays) before any tensor data is read."""
    from safetensors import safe_open

    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise ProgramError(f"{where}: file not found")
    header, metadata = _read_header(path, where)
    if METADATA_KEY not in metadata or not isinstance(metadata[METADATA_KEY], str):
        raise ProgramError(f"{where}: no '{METADATA_KEY}' manifest in the safetensors metadata")
    try:
        manifest = json.loads(metadata[METADATA_KEY])
    except json.JSONDecodeError as e:
        raise ProgramError(f"{where}: manifest is not valid JSON ({e.msg})") from None
    except RecursionError:
        raise ProgramError(f"{where}: manifest JSON is nested too deeply") from None
    declared = manifest.get("tensors") if isinstance(manifest, dict) else None
    for name, e in header.items():
        spec = declared.get(name) if isinstance(declared, dict) else None
        if not isinstance(spec, dict) or spec.get("shape") != e["shape"]:
            raise ProgramError(f"{where}: array {name!r}: shape {e['shape']} is not declared in "
                               f"the manifest's tensor table"
                               + (f" (declared {spec.get('shape')!r})" if isinstance(spec, dict)
                                  else ""))
    # validate with zero-cost placeholders (right shape and dtype, no memory) before reading data
    placeholders = {k: np.broadcast_to(np.zeros((), _NUMPY_DTYPES[e["dtype"]]), e["shape"])
                    for k, e in header.items()}
    program_from_manifest(manifest, placeholders, where)
    try:
        with safe_open(str(path), framework="numpy") as f:
            arrays = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise ProgramError(f"{where}: not a readable safetensors file ({type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''})") from None
    return program_from_manifest(manifest, arrays, where)


_NUMPY_DTYPES = {k: np.dtype(f"{k[0].lower()}{v}") for k, v in INT_DTYPES.items()}


def program_from_manifest(manifest: Any, arrays: dict[str, np.ndarray], where: str) -> IntegerProgram:
    """Build and validate a program from a parsed manifest and its arrays."""
    if not isinstance(manifest, dict):
        raise ProgramError(f"{where}: manifest must be a JSON object")
    if manifest.get("format") != FORMAT_NAME:
        raise ProgramError(f"{where}: format: expected {FORMAT_NAME!r}, got {manifest.get('format')!r}")
    if manifest.get("version") != FORMAT_VERSION:
        raise ProgramError(f"{where}: version: expected {FORMAT_VERSION}, got {manifest.get('version')!r}")
    known = {"format", "version", "producer", "quant_config", "requant", "input", "outputs",
             "meta", "tensors", "nodes"}
    unknown = sorted(set(manifest) - known)
    if unknown:
        raise ProgramError(f"{where}: unknown manifest key {unknown[0]!r}")
    for key in ("requant", "input", "outputs", "tensors", "nodes"):
        if key not in manifest:
            raise ProgramError(f"{where}: manifest: missing key {key!r}")
    _check_types(manifest, where)
    tensors: dict[str, TensorSpec] = {}
    if not isinstance(manifest["tensors"], dict):
        raise ProgramError(f"{where}: tensors: expected an object")
    for name, spec in manifest["tensors"].items():
        ctx = f"{where}: tensor {name!r}"
        if not isinstance(spec, dict):
            raise ProgramError(f"{ctx}: expected an object")
        extra = sorted(set(spec) - {"shape", "bits", "signed", "scale", "zero_point"})
        if extra:
            raise ProgramError(f"{ctx}: unknown field {extra[0]!r}")
        for k in ("shape", "bits", "signed"):
            if k not in spec:
                raise ProgramError(f"{ctx}: missing field {k!r}")
        tensors[name] = TensorSpec(tuple(spec["shape"]), spec["bits"], spec["signed"],
                                   spec.get("scale", 1.0), spec.get("zero_point", 0))
    if not isinstance(manifest["nodes"], list):
        raise ProgramError(f"{where}: nodes: expected a list")
    nodes = []
    for i, nd in enumerate(manifest["nodes"]):
        if not isinstance(nd, dict):
            raise ProgramError(f"{where}: nodes[{i}]: expected an object")
        extra = sorted(set(nd) - {"name", "op", "inputs", "output", "attrs"})
        if extra:
            raise ProgramError(f"{where}: nodes[{i}]: unknown field {extra[0]!r}")
        for k in ("name", "op", "inputs", "output"):
            if k not in nd:
                raise ProgramError(f"{where}: nodes[{i}]: missing field {k!r}")
        nodes.append(Node(nd["name"], nd["op"], list(nd["inputs"]), nd["output"],
                          dict(nd.get("attrs", {}))))
    prog = IntegerProgram(
        nodes=nodes, tensors=tensors, arrays=dict(arrays), input=manifest["input"],
        outputs=list(manifest["outputs"]), requant=dict(manifest["requant"]),
        quant_config=manifest.get("quant_config", {}), producer=manifest.get("producer", {}),
        meta=manifest.get("meta", {}),
    )
    return prog.validate(where)


_IS = {  # JSON type name -> check (a bool is not a number here)
    "an object": lambda v: isinstance(v, dict),
    "a list": lambda v: isinstance(v, list),
    "a string": lambda v: isinstance(v, str),
    "true/false": lambda v: isinstance(v, bool),
    "an int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "a list of ints": lambda v: isinstance(v, list) and all(_IS["an int"](d) for d in v),
    "a list of strings": lambda v: isinstance(v, list) and all(isinstance(d, str) for d in v),
    "a number or a non-empty list of numbers": lambda v: (
        isinstance(v, (int, float)) and not isinstance(v, bool)) or (
        isinstance(v, list) and len(v) > 0 and all(
            isinstance(d, (int, float)) and not isinstance(d, bool) for d in v)),
}
_TOP_TYPES = {"version": "an int", "producer": "an object", "quant_config": "an object",
              "requant": "an object", "input": "a string", "outputs": "a list of strings",
              "meta": "an object", "tensors": "an object", "nodes": "a list"}
_TENSOR_TYPES = {"shape": "a list of ints", "bits": "an int", "signed": "true/false",
                 "scale": "a number or a non-empty list of numbers", "zero_point": "an int"}
_NODE_TYPES = {"name": "a string", "op": "a string", "inputs": "a list of strings",
               "output": "a string", "attrs": "an object"}


def _check_types(m: dict[str, Any], where: str) -> None:
    """The JSON type of every manifest field, before anything is built from it."""
    def check(ctx: str, value: Any, kind: str) -> None:
        if not _IS[kind](value):
            text = repr(value)
            raise ProgramError(f"{where}: {ctx}: expected {kind}, got "
                               f"{text if len(text) <= 60 else text[:57] + '...'}")

    for key, kind in _TOP_TYPES.items():
        if key in m:
            check(key, m[key], kind)
    if "dataset" in m.get("meta", {}):
        check("meta.dataset", m["meta"]["dataset"], "a string")
    for name, spec in m["tensors"].items():
        check(f"tensor {name!r}", spec, "an object")
        for key, kind in _TENSOR_TYPES.items():
            if key in spec:
                check(f"tensor {name!r}: {key}", spec[key], kind)
    for i, nd in enumerate(m["nodes"]):
        check(f"nodes[{i}]", nd, "an object")
        for key, kind in _NODE_TYPES.items():
            if key in nd:
                label = f"nodes[{i}]" if key == "name" or not isinstance(nd.get("name"), str) \
                    else f"node {nd['name']!r}"
                check(f"{label}: {key}", nd[key], kind)


def _validate(p: IntegerProgram, where: str) -> None:
    def fail(msg: str) -> None:
        raise ProgramError(f"{where}: {msg}")

    try:
        RequantSpec.from_dict(p.requant)
    except ValueError as e:
        fail(str(e))

    for name, t in p.tensors.items():
        ctx = f"tensor {name!r}"
        if not (isinstance(t.bits, int) and not isinstance(t.bits, bool) and 1 <= t.bits <= 64):
            fail(f"{ctx}: bits: expected an int in [1, 64], got {t.bits!r}")
        if not isinstance(t.signed, bool):
            fail(f"{ctx}: signed: expected true/false, got {t.signed!r}")
        if not all(isinstance(d, int) and d >= 0 for d in t.shape):
            fail(f"{ctx}: shape: expected non-negative ints, got {list(t.shape)!r}")
        if not isinstance(t.zero_point, int) or isinstance(t.zero_point, bool):
            fail(f"{ctx}: zero_point: expected an int, got {t.zero_point!r}")
        lo, hi = t.int_range()
        if not lo <= t.zero_point <= hi:
            fail(f"{ctx}: zero_point {t.zero_point} outside its {t.bits}-bit range")
        sc = t.scale if isinstance(t.scale, list) else [t.scale]
        if not sc or not all(isinstance(s, (int, float)) and not isinstance(s, bool)
                             and math.isfinite(s) and s > 0 for s in sc):
            fail(f"{ctx}: scale: expected positive finite numbers")
        if len(sc) > 1 and (not t.shape or len(sc) != t.shape[0]):
            fail(f"{ctx}: scale: {len(sc)} per-channel scales for shape {list(t.shape)}, "
                 f"expected one or {t.shape[0] if t.shape else 1}")

    for key, arr in p.arrays.items():
        if key not in p.tensors:
            fail(f"array {key!r}: not in the tensor table")
        t = p.tensors[key]
        if key.endswith(".weight") and t.zero_point != 0:  # conv2d/linear weights
            fail(f"tensor {key!r}: zero_point: weights are symmetric (the NPU has no weight zero "
                 f"point), expected 0, got {t.zero_point}")
        if tuple(arr.shape) != tuple(t.shape):
            fail(f"array {key!r}: shape {list(arr.shape)} does not match declared {list(t.shape)}")
        if arr.dtype.kind not in "iu":
            fail(f"array {key!r}: dtype {arr.dtype} is not an integer type")
        if arr.size:
            lo, hi = t.int_range()
            amin, amax = int(arr.min()), int(arr.max())
            if amin < lo or amax > hi:
                fail(f"array {key!r}: values [{amin}, {amax}] outside the declared "
                     f"{t.bits}-bit {'signed' if t.signed else 'unsigned'} range [{lo}, {hi}]")

    check_limits(p, fail)
    if p.input not in p.tensors:
        fail(f"input: tensor {p.input!r} is not in the tensor table")
    produced = {p.input}
    names = set()
    for node in p.nodes:
        ctx = f"node {node.name!r}"
        if node.name in names:
            fail(f"{ctx}: duplicate node name")
        names.add(node.name)
        if node.op not in OPS:
            fail(f"{ctx}: op: unknown op {node.op!r} (known: {', '.join(OPS)})")
        op = OPS[node.op]
        if len(node.inputs) < op.inputs or (len(node.inputs) > op.inputs and not op.variadic):
            fail(f"{ctx}: inputs: {node.op} takes {op.inputs}{' or more' if op.variadic else ''}"
                 f" input(s), got {len(node.inputs)}")
        for src in node.inputs:
            if src not in produced:
                fail(f"{ctx}: inputs: {src!r} is not produced by an earlier node (dangling input)")
        declared = {a.name for a in op.attrs}
        for name in node.attrs:
            if name not in declared:
                fail(f"{ctx}: attrs: {node.op} has no attribute {name!r} "
                     f"(known: {', '.join(sorted(declared)) or 'none'})")
        for a in op.attrs:
            if a.name not in node.attrs:
                if a.required:
                    fail(f"{ctx}: attrs: missing {a.name!r}")
                continue
            problem = a.problem(node.attrs[a.name])
            if problem:
                fail(f"{ctx}: attrs.{a.name}: {problem}")
        for key in op.arrays:
            if f"{node.name}.{key}" not in p.arrays:
                fail(f"{ctx}: missing array {node.name + '.' + key!r}")
        if op.requantizes(node):
            for key in ("multiplier", "shift"):
                if f"{node.name}.{key}" not in p.arrays:
                    fail(f"{ctx}: missing array {node.name + '.' + key!r}")
            if "clamp" not in node.attrs:
                fail(f"{ctx}: attrs.clamp: expected [lo, hi] with lo <= hi, got None")
        if node.output not in p.tensors:
            fail(f"{ctx}: output: tensor {node.output!r} is not in the tensor table")
        if node.output in produced:
            fail(f"{ctx}: output: tensor {node.output!r} is produced twice")
        _check_shapes(p, node, fail)
        produced.add(node.output)
    for out in p.outputs:
        if out not in produced:
            fail(f"outputs: tensor {out!r} is not produced by any node")


def _check_shapes(p: IntegerProgram, node: Node, fail) -> None:
    """Check that a node's declared output shape follows from its inputs, arrays and attrs."""
    ctx = f"node {node.name!r}"
    op = OPS[node.op]
    ins = [tuple(p.tensors[i].shape) for i in node.inputs]
    out = tuple(p.tensors[node.output].shape)
    prefix = f"{node.name}."
    own = {k[len(prefix):]: v for k, v in p.arrays.items() if k.startswith(prefix)}
    attrs = {a.name: op.attr(node, a.name) for a in op.attrs
             if a.name in node.attrs or not a.required}
    try:
        expect = tuple(op.shape(ins, own, attrs))
    except ValueError as e:
        fail(f"{ctx}: {e}")
    if expect != out:
        fail(f"{ctx}: output: shape {list(out)} does not match the computed {list(expect)}")
    if op.view:
        ti, to = p.tensors[node.inputs[0]], p.tensors[node.output]
        if (ti.bits, ti.signed, ti.scale, ti.zero_point) != (to.bits, to.signed, to.scale,
                                                             to.zero_point):
            fail(f"{ctx}: output: a {node.op} keeps its input's bits, sign, scale and zero point")
