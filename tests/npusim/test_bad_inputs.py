"""The bad-input corpus: every command refuses every malformed input with exit code 2 and one
line ``error: ...`` naming what was wrong, never a traceback or an "internal error".

The cases are generated programmatically (`CASES`, >= 300 of them, counted per class in
`CLASS_COUNTS`) across the entry points: NPU TOML files, ``--set`` strings, program files
(safetensors header and manifest), checkpoints and sidecars, CIFAR-10 data directories,
quant-config JSON, sweep stores and result CSVs, output paths and ``--where`` filters; and
(`NEW_CLASSES`) NPU field limits that ``cost`` and ``simulate`` refuse alike, ``pe_acc_bits``
wider than ``acc_bits``, ``[[layer]]`` tables, training numbers, empty data splits, ``--data
folder`` trees, ``bounds --suggest`` options, ``sweep --program``, ``simulate --acc-bits /
--overflow`` and ONNX nodes npusim cannot import. Commands that would train must refuse before
any training. Each
runs in-process through `npusim.cli.app.main` (the console entry point, which maps errors to
exit codes) against tiny fixture files built once per module.
"""

from __future__ import annotations

import collections
import json
import os
import pickle
import shutil
import sqlite3
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from npusim.cli.app import main
from npusim.ir.program import IntegerProgram, Node, TensorSpec, save_program
from tests.npusim.onnx.helpers import qdq_model
from tests.npusim.programs import _arr, finish

# ------------------------------------------------------------------ fixture builders


def small_program() -> IntegerProgram:
    """conv2d (3x6x6 -> 2x6x6) -> maxpool2d (2, stride 2) -> flatten -> linear (18 -> 4)."""
    rng = np.random.default_rng(0)
    tensors = {
        "x": TensorSpec((3, 6, 6), 8, False, 0.02, 0),
        "c.weight": TensorSpec((2, 3, 3, 3), 8, True, [0.01, 0.02]),
        "c.bias": TensorSpec((2,), 32, True),
        "c.out": TensorSpec((2, 6, 6), 8, False, 0.05, 0),
        "p.out": TensorSpec((2, 3, 3), 8, False, 0.05, 0),
        "f.out": TensorSpec((18,), 8, False, 0.05, 0),
        "l.weight": TensorSpec((4, 18), 8, True, [0.01] * 4),
        "l.bias": TensorSpec((4,), 32, True),
        "y": TensorSpec((4,), 8, False, 0.1, 0),
    }
    arrays = {
        "c.weight": _arr(rng.integers(-127, 128, (2, 3, 3, 3)), 8, True),
        "c.bias": _arr([3, -3], 32, True),
        "l.weight": _arr(rng.integers(-127, 128, (4, 18)), 8, True),
        "l.bias": _arr([1, 2, 3, 4], 32, True),
    }
    nodes = [
        Node("c", "conv2d", ["x"], "c.out",
             {"stride": 1, "padding": 1, "groups": 1, "requant": True, "clamp": [0, 255]}),
        Node("p", "maxpool2d", ["c.out"], "p.out", {"kernel": 2, "stride": 2, "padding": 0}),
        Node("f", "flatten", ["p.out"], "f.out", {}),
        Node("l", "linear", ["f.out"], "y", {"requant": True, "clamp": [0, 255]}),
    ]
    prog = finish(nodes, tensors, arrays, "x", ["y"])
    prog.meta = {"dataset": "synthetic"}
    return prog


PROGRAM = small_program()
MANIFEST = PROGRAM.manifest()
ARRAYS = {k: np.ascontiguousarray(v) for k, v in PROGRAM.arrays.items()}


def _code(a: np.ndarray) -> str:
    return f"{'I' if a.dtype.kind == 'i' else 'U'}{8 * a.dtype.itemsize}"


def header_entries(arrays: dict[str, np.ndarray] = ARRAYS) -> tuple[dict, bytes]:
    """Safetensors header entries of `arrays`, laid out back to back, and their data bytes."""
    entries, pos, data = {}, 0, b""
    for k, a in arrays.items():
        entries[k] = {"dtype": _code(a), "shape": list(a.shape), "data_offsets": [pos, pos + a.nbytes]}
        pos += a.nbytes
        data += a.tobytes()
    return entries, data


def raw_safetensors(header: object, data: bytes = b"") -> bytes:
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    return struct.pack("<Q", len(blob)) + blob + data


def program_bytes(manifest: object = None, *, manifest_text: str | None = None,
                  entries: dict | None = None, data: bytes | None = None,
                  metadata: object = None) -> bytes:
    """A program file with a (possibly broken) manifest, header entries or metadata."""
    ent, dat = header_entries()
    ent = ent if entries is None else entries
    dat = dat if data is None else data
    if metadata is None:
        text = manifest_text if manifest_text is not None else json.dumps(
            MANIFEST if manifest is None else manifest)
        metadata = {"npusim": text}
    return raw_safetensors({"__metadata__": metadata, **ent}, dat)


def deep(n: int, open_: str = "[", close: str = "]", inner: str = "1") -> str:
    return open_ * n + inner + close * n


def copy_manifest() -> dict:
    return json.loads(json.dumps(MANIFEST))


# ------------------------------------------------------------------ the case record

@dataclass(frozen=True)
class Case:
    """One bad input: files to write into the case directory, the argv (``{d}`` the case
    directory, ``{p}`` a valid program, ``{csv}`` a valid results CSV, ``{db}`` a valid store)
    and the fragments the one-line error must contain."""

    name: str
    cls: str
    argv: tuple[str, ...]
    fragments: tuple[str, ...]
    files: dict[str, bytes | Callable[[Path], None]] = field(default_factory=dict)


CASES: list[Case] = []


def add(cls: str, name: str, argv: list[str], fragments: str | tuple[str, ...],
        files: dict | None = None) -> None:
    frags = (fragments,) if isinstance(fragments, str) else tuple(fragments)
    CASES.append(Case(f"{cls}:{name}", cls, tuple(argv), frags, dict(files or {})))


# ------------------------------------------------------------------ NPU TOML files

NPU_ARGV = ["cost", "{p}", "--npu", "{d}/npu.toml"]
_FIELDS = {  # section -> {key: kind}
    "array": {"rows": "int", "cols": "int", "dataflow": "enum", "clock_mhz": "float",
              "max_weight_bits": "int", "max_input_bits": "int"},
    "precision": {"pe_acc_bits": "int", "acc_bits": "int", "overflow": "enum",
                  "pe_overflow": "enum", "acc_overflow": "enum"},
    "memory": {"weight_sram_kib": "float", "activation_sram_kib": "float",
               "accumulator_sram_kib": "float", "dram_bandwidth_bytes_per_cycle": "float",
               "sram_word_bits": "int", "weight_storage": "enum"},
    "technology": {"node_nm": "float", "supply_v": "float", "energy_table": "str"},
}
_WRONG = {  # kind -> TOML values of a wrong type or out of range (never absurdly large ones)
    "int": ['"16"', "1.5", "true", "[16]", "{ v = 16 }", "-1", "0", "nan", "inf"],
    "float": ['"500"', "true", "[1.0]", "{ v = 1 }", "-1.0", "0.0", "nan", "inf", "-inf"],
    "enum": ["1", "true", '"bogus"', '""', "[\"os\"]"],
    "str": ["1", "true", "[1]", '""'],
}


def _npu(body: str) -> dict:
    return {"npu.toml": f'name = "bad"\n{body}\n'.encode()}


for section, keys in _FIELDS.items():
    for key, kind in keys.items():
        for i, value in enumerate(_WRONG[kind]):
            add("npu_toml", f"{section}.{key}={i}", NPU_ARGV, (f"{section}.{key}", "npu.toml"),
                _npu(f"[{section}]\n{key} = {value}"))
    add("npu_toml", f"{section}.unknown", NPU_ARGV, (f"{section}.bogus_key", "unknown key"),
        _npu(f"[{section}]\nbogus_key = 1"))
    add("npu_toml", f"{section}.scalar", NPU_ARGV, (section, "expected a table"),
        _npu(f"{section} = 5"))
add("npu_toml", "unknown_section", NPU_ARGV, ("bogus", "unknown key"), _npu("[bogus]\na = 1"))
add("npu_toml", "unknown_top_key", NPU_ARGV, ("clock", "unknown key"), _npu("clock = 1"))
add("npu_toml", "missing_name", NPU_ARGV, ("name", "missing"), {"npu.toml": b"[array]\nrows = 4\n"})
add("npu_toml", "empty", NPU_ARGV, ("name", "missing"), {"npu.toml": b""})
add("npu_toml", "name_int", NPU_ARGV, "name", {"npu.toml": b"name = 5\n"})
add("npu_toml", "name_empty", NPU_ARGV, "name", {"npu.toml": b'name = ""\n'})
add("npu_toml", "not_utf8", NPU_ARGV, "not UTF-8", {"npu.toml": b'name = "\xff\xfe"\n'})
add("npu_toml", "binary_junk", NPU_ARGV, "npu.toml",
    {"npu.toml": bytes(np.random.default_rng(1).integers(0, 256, 512, dtype=np.uint8))})
add("npu_toml", "nul_bytes", NPU_ARGV, ("npu.toml", "TOML"), {"npu.toml": b'name = "a"\x00\n'})
add("npu_toml", "syntax", NPU_ARGV, ("npu.toml", "TOML syntax"), {"npu.toml": b"name = \n"})
add("npu_toml", "duplicate_key", NPU_ARGV, ("npu.toml", "TOML"),
    {"npu.toml": b'name = "a"\nname = "b"\n'})
add("npu_toml", "deep_array", NPU_ARGV, ("npu.toml", "nested"),
    _npu("x = " + deep(20000)))
add("npu_toml", "deep_inline_table", NPU_ARGV, ("npu.toml", "nested"),
    _npu("x = " + deep(20000, "{a=", "}", "1")))
add("npu_toml", "deep_array_in_section", NPU_ARGV, ("npu.toml", "nested"),
    _npu("[array]\nrows = " + deep(50000)))
add("npu_toml", "is_a_directory", ["cost", "{p}", "--npu", "{d}"], "is a directory")
add("npu_toml", "missing_file", ["cost", "{p}", "--npu", "{d}/nope.toml"], ("nope.toml", "no such file"))
add("npu_toml", "unknown_preset", ["cost", "{p}", "--npu", "edge99"], ("edge99", "preset"))
add("npu_toml", "energy_overrides_str", NPU_ARGV, "technology.energy_overrides",
    _npu('[technology]\nenergy_overrides = "x"'))
add("npu_toml", "energy_overrides_value", NPU_ARGV, "technology.energy_overrides",
    _npu('[technology.energy_overrides]\n"mac.int8" = "x"'))
add("npu_toml", "requant_bad_mode", NPU_ARGV, "requant", _npu('[requant]\nscale_mode = "nope"'))
add("npu_toml", "requant_unknown", NPU_ARGV, ("requant", "unknown"), _npu("[requant]\nbogus = 1"))
add("npu_toml", "product_width", NPU_ARGV, "multiplier_bits",
    _npu("[precision]\nacc_bits = 40\n[requant]\nmultiplier_bits = 32"))

# ------------------------------------------------------------------ --set strings

SET_CASES = [
    ("no_equals", "precision.acc_bits", "KEY=VALUE"),
    ("empty", "", "KEY=VALUE"),
    ("only_equals", "=", "KEY=VALUE"),
    ("empty_key", "=16", "KEY=VALUE"),
    ("unknown_top", "bogus=1", "bogus"),
    ("unknown_sub", "precision.bogus=1", "precision.bogus"),
    ("typo", "precision.acc_bit=16", "did you mean"),
    ("section", "precision=16", "is a section"),
    ("not_section", "name.x=1", "not a section"),
    ("trailing_dot", "precision.=16", "KEY=VALUE"),
    ("double_dot", "precision..acc_bits=16", "KEY=VALUE"),
    ("deep_path", "precision.acc_bits.x=1", "not a section"),
    ("int_word", "precision.acc_bits=sixteen", "precision.acc_bits"),
    ("int_float", "precision.acc_bits=16.5", "precision.acc_bits"),
    ("int_empty", "precision.acc_bits=", "precision.acc_bits"),
    ("int_negative", "precision.acc_bits=-4", "precision.acc_bits"),
    ("int_zero", "array.rows=0", "array.rows"),
    ("int_huge_bits", "precision.acc_bits=99", "precision.acc_bits"),
    ("int_nan", "array.rows=nan", "array.rows"),
    ("float_word", "array.clock_mhz=fast", "array.clock_mhz"),
    ("float_nan", "array.clock_mhz=nan", "array.clock_mhz"),
    ("float_inf", "array.clock_mhz=inf", "array.clock_mhz"),
    ("float_neg_inf", "memory.weight_sram_kib=-inf", "memory.weight_sram_kib"),
    ("float_zero", "memory.weight_sram_kib=0", "memory.weight_sram_kib"),
    ("float_negative", "technology.supply_v=-0.9", "technology.supply_v"),
    ("enum", "array.dataflow=diagonal", "array.dataflow"),
    ("enum_case", "precision.overflow=WRAP", "precision.overflow"),
    ("enum_empty", "memory.weight_storage=", "memory.weight_storage"),
    ("optional_enum", "precision.pe_overflow=sometimes", "precision.pe_overflow"),
    ("name_empty", "name=", "name"),
    ("bits_word_size", "memory.sram_word_bits=4", "memory.sram_word_bits"),
    ("max_weight_bits", "array.max_weight_bits=1", "array.max_weight_bits"),
    ("energy_override_word", "technology.energy_overrides.mac=lots", "energy_overrides"),
    ("energy_override_nan", "technology.energy_overrides.mac=nan", ("overrides", "finite")),
    ("energy_table_missing", "technology.energy_table=/nonexistent/table.toml", "table.toml"),
    ("requant_mode", "requant.scale_mode=bogus", "requant.scale_mode"),
    ("requant_unknown", "requant.bogus=1", "requant.bogus"),
    ("injection", "precision.acc_bits=__import__('os').system('true')", "precision.acc_bits"),
]
for name, item, frag in SET_CASES:
    add("set_option", name, ["cost", "{p}", "--set", item], frag)
add("set_option", "twice", ["cost", "{p}", "--set", "array.rows=4", "--set", "array.rows=8"],
    "more than once")

# ------------------------------------------------------------------ program files

PROG = "{d}/p.safetensors"
INSPECT = ["inspect", PROG]
_VALUES = {"null": None, "int": 7, "float": 1.5, "bool": True, "str": "x", "list": [1],
           "dict": {"a": 1}, "empty_list": [], "empty_dict": {}}


def _types_other_than(*kinds: type) -> dict[str, object]:
    return {k: v for k, v in _VALUES.items()
            if not (isinstance(v, kinds) and not (isinstance(v, bool) and bool not in kinds))}


def add_manifest(name: str, mutate: Callable[[dict], object], fragments, cls: str = "manifest") -> None:
    m = copy_manifest()
    out = mutate(m)
    add(cls, name, INSPECT, fragments, {"p.safetensors": program_bytes(m if out is None else out)})


def _set(path: tuple, value: object) -> Callable[[dict], None]:
    def mutate(m: dict) -> None:
        node = m
        for p in path[:-1]:
            node = node[p]
        node[path[-1]] = value
    return mutate


def _delete(path: tuple) -> Callable[[dict], None]:
    def mutate(m: dict) -> None:
        node = m
        for p in path[:-1]:
            node = node[p]
        del node[path[-1]]
    return mutate


_TOP = {"format": (str,), "version": (int,), "producer": (dict,), "quant_config": (dict,),
        "requant": (dict,), "input": (str,), "outputs": (list,), "meta": (dict,),
        "tensors": (dict,), "nodes": (list,)}
for key, kinds in _TOP.items():
    for vname, value in _types_other_than(*kinds).items():
        if key == "tensors" and value == {}:
            continue  # an empty table is the right type; its arrays are then undeclared
        add_manifest(f"{key}={vname}", _set((key,), value), key)
for key in ("requant", "input", "outputs", "tensors", "nodes", "format", "version"):
    add_manifest(f"missing_{key}", _delete((key,)), key)
add_manifest("unknown_key", _set(("bogus",), 1), "bogus")
add_manifest("format_other", _set(("format",), "onnx"), "format")
add_manifest("version_2", _set(("version",), 2), "version")
add_manifest("version_huge", _set(("version",), 10**40), "version")
add_manifest("not_object", lambda m: [m], "manifest")
add_manifest("input_unknown", _set(("input",), "nope"), "input")
add_manifest("output_unknown", _set(("outputs",), ["nope"]), "outputs")
add_manifest("output_int", _set(("outputs",), [1]), "outputs")
add_manifest("output_list", _set(("outputs",), [["y"]]), "outputs")
add_manifest("meta_dataset_int", _set(("meta",), {"dataset": 5}), "meta.dataset")
add_manifest("requant_unknown", _set(("requant", "bogus"), 1), "bogus")
add_manifest("requant_mode", _set(("requant", "scale_mode"), "nope"), "scale_mode")
add_manifest("requant_bits", _set(("requant", "multiplier_bits"), "x"), "multiplier_bits")

_TENSOR_FIELDS = {"shape": (list,), "bits": (int,), "signed": (bool,), "scale": (int, float, list),
                  "zero_point": (int,)}
for tname in ("x", "c.weight", "c.out"):
    add_manifest(f"tensor[{tname}]=list", _set(("tensors", tname), [1]), f"{tname!r}")
    add_manifest(f"tensor[{tname}].unknown", _set(("tensors", tname, "bogus"), 1), "bogus")
    for fld, kinds in _TENSOR_FIELDS.items():
        for vname, value in _types_other_than(*kinds).items():
            if fld == "scale" and vname in ("int",):
                continue
            add_manifest(f"tensor[{tname}].{fld}={vname}", _set(("tensors", tname, fld), value),
                         (f"{tname!r}", fld))
        if fld in ("shape", "bits", "signed"):
            add_manifest(f"tensor[{tname}].missing_{fld}", _delete(("tensors", tname, fld)),
                         (f"{tname!r}", fld))
for tname, fld, value, frag in [
    ("x", "bits", 0, "bits"), ("x", "bits", 65, "bits"), ("x", "bits", -8, "bits"),
    ("x", "bits", 10**30, "bits"), ("x", "zero_point", 256, "zero_point"),
    ("x", "zero_point", -1, "zero_point"), ("x", "zero_point", 10**30, "zero_point"),
    ("x", "scale", -0.5, "scale"), ("x", "scale", 0.0, "scale"), ("x", "scale", [], "scale"),
    ("x", "scale", ["a"], "scale"), ("x", "scale", 1e400, "scale"), ("x", "scale", [[0.1]], "scale"),
    ("c.weight", "zero_point", 3, "zero_point"), ("c.weight", "scale", [0.01, 0.02, 0.03], "scale"),
    ("x", "shape", [-3, 6, 6], "shape"), ("x", "shape", [3, 6.0, 6], "shape"),
    ("x", "shape", [3, "6", 6], "shape"), ("x", "shape", [1, 1, 1, 1, 1, 1], "dimensions"),
    ("x", "shape", [3, 10**9, 10**9], "elements"), ("x", "shape", [3, 6000, 1], "spatial"),
    ("x", "shape", [3, 6, 6, 1], "node 'c'"), ("c.out", "shape", [2, 5, 5], "node 'c'"),
    ("y", "shape", [5], "node 'l'"), ("p.out", "shape", [2, 2, 2], "node 'p'"),
    ("f.out", "shape", [17], "node 'f'"), ("c.weight", "bits", 2, "c.weight"),
    ("c.bias", "bits", 2, "c.bias"), ("y", "signed", True, ("node 'l'", "clamp")),
]:
    add_manifest(f"tensor[{tname}].{fld}={value!r}"[:60], _set(("tensors", tname, fld), value), frag)

_NODE_FIELDS = {"name": (str,), "op": (str,), "inputs": (list,), "output": (str,), "attrs": (dict,)}
for i in (0, 1):
    for fld, kinds in _NODE_FIELDS.items():
        for vname, value in _types_other_than(*kinds).items():
            if fld == "attrs" and vname in ("empty_dict",):
                continue
            add_manifest(f"nodes[{i}].{fld}={vname}", _set(("nodes", i, fld), value),
                         (f"nodes[{i}]" if fld == "name" else "node", fld))
        if fld != "attrs":
            add_manifest(f"nodes[{i}].missing_{fld}", _delete(("nodes", i, fld)), fld)
    add_manifest(f"nodes[{i}].unknown", _set(("nodes", i, "bogus"), 1), "bogus")
    add_manifest(f"nodes[{i}]=list", _set(("nodes", i), ["c"]), f"nodes[{i}]")
for name, path, value, frags in [
    ("unknown_op", ("nodes", 0, "op"), "conv3d", ("node 'c'", "unknown op")),
    ("op_case", ("nodes", 0, "op"), "Conv2D", ("node 'c'", "unknown op")),
    ("dangling", ("nodes", 0, "inputs"), ["nope"], ("node 'c'", "dangling")),
    ("cycle", ("nodes", 0, "inputs"), ["y"], ("node 'c'", "dangling")),
    ("self_loop", ("nodes", 1, "inputs"), ["p.out"], ("node 'p'", "dangling")),
    ("input_list", ("nodes", 0, "inputs"), [["x"]], ("node 'c'", "inputs")),
    ("input_int", ("nodes", 0, "inputs"), [0], ("node 'c'", "inputs")),
    ("two_inputs", ("nodes", 0, "inputs"), ["x", "x"], ("node 'c'", "inputs")),
    ("no_inputs", ("nodes", 0, "inputs"), [], ("node 'c'", "inputs")),
    ("dup_name", ("nodes", 1, "name"), "c", ("node 'c'", "duplicate")),
    ("output_twice", ("nodes", 1, "output"), "c.out", ("node 'p'", "produced twice")),
    ("output_unknown", ("nodes", 1, "output"), "nope", ("node 'p'", "output")),
    ("output_is_input", ("nodes", 0, "output"), "x", ("node 'c'", "output")),
    ("stride_0", ("nodes", 0, "attrs", "stride"), 0, ("node 'c'", "stride")),
    ("stride_neg", ("nodes", 0, "attrs", "stride"), -1, ("node 'c'", "stride")),
    ("stride_str", ("nodes", 0, "attrs", "stride"), "1", ("node 'c'", "stride")),
    ("stride_float", ("nodes", 0, "attrs", "stride"), 1.0, ("node 'c'", "stride")),
    ("stride_bool", ("nodes", 0, "attrs", "stride"), True, ("node 'c'", "stride")),
    ("stride_null", ("nodes", 0, "attrs", "stride"), None, ("node 'c'", "stride")),
    ("stride_huge", ("nodes", 0, "attrs", "stride"), 10**30, ("node 'c'", "stride")),
    ("stride_list", ("nodes", 0, "attrs", "stride"), [1, 1], ("node 'c'", "stride")),
    ("padding_neg", ("nodes", 0, "attrs", "padding"), -1, ("node 'c'", "padding")),
    ("padding_huge", ("nodes", 0, "attrs", "padding"), 10**6, ("node 'c'", "padding")),
    ("padding_str", ("nodes", 0, "attrs", "padding"), "same", ("node 'c'", "padding")),
    ("groups_0", ("nodes", 0, "attrs", "groups"), 0, ("node 'c'", "groups")),
    ("groups_2", ("nodes", 0, "attrs", "groups"), 2, ("node 'c'", "groups")),
    ("groups_huge", ("nodes", 0, "attrs", "groups"), 10**20, ("node 'c'", "groups")),
    ("requant_str", ("nodes", 0, "attrs", "requant"), "yes", ("node 'c'", "requant")),
    ("requant_int", ("nodes", 0, "attrs", "requant"), 1, ("node 'c'", "requant")),
    ("clamp_str", ("nodes", 0, "attrs", "clamp"), "0,255", ("node 'c'", "clamp")),
    ("clamp_reversed", ("nodes", 0, "attrs", "clamp"), [255, 0], ("node 'c'", "clamp")),
    ("clamp_three", ("nodes", 0, "attrs", "clamp"), [0, 1, 2], ("node 'c'", "clamp")),
    ("clamp_outside", ("nodes", 0, "attrs", "clamp"), [0, 10**20], ("node 'c'", "clamp")),
    ("clamp_null", ("nodes", 0, "attrs", "clamp"), None, ("node 'c'", "clamp")),
    ("acc_target", ("nodes", 0, "attrs", "acc_bits_target"), 99, ("node 'c'", "acc_bits_target")),
    ("unknown_attr", ("nodes", 0, "attrs", "dilation"), 2, ("node 'c'", "dilation")),
    ("pool_stride_0", ("nodes", 1, "attrs", "stride"), 0, ("node 'p'", "stride")),
    ("pool_stride_neg", ("nodes", 1, "attrs", "stride"), -2, ("node 'p'", "stride")),
    ("pool_stride_huge", ("nodes", 1, "attrs", "stride"), 10**12, ("node 'p'", "stride")),
    ("pool_kernel_0", ("nodes", 1, "attrs", "kernel"), 0, ("node 'p'", "kernel")),
    ("pool_kernel_list", ("nodes", 1, "attrs", "kernel"), [2, 2], ("node 'p'", "kernel")),
    ("pool_kernel_empty", ("nodes", 1, "attrs", "kernel"), [], ("node 'p'", "kernel")),
    ("pool_kernel_dict", ("nodes", 1, "attrs", "kernel"), {"h": 2}, ("node 'p'", "kernel")),
    ("pool_kernel_huge", ("nodes", 1, "attrs", "kernel"), 10**9, ("node 'p'", "kernel")),
    ("pool_kernel_str", ("nodes", 1, "attrs", "kernel"), "2", ("node 'p'", "kernel")),
    ("pool_pad_big", ("nodes", 1, "attrs", "padding"), 2, ("node 'p'", "padding")),
    ("pool_pad_float", ("nodes", 1, "attrs", "padding"), 0.5, ("node 'p'", "padding")),
    ("pool_missing_stride", ("nodes", 1, "attrs"), {"kernel": 2}, ("node 'p'", "stride")),
    ("pool_missing_kernel", ("nodes", 1, "attrs"), {"stride": 2}, ("node 'p'", "kernel")),
    ("flatten_attr", ("nodes", 2, "attrs"), {"axis": 1}, ("node 'f'", "axis")),
    ("linear_clamp_missing", ("nodes", 3, "attrs"), {"requant": True}, ("node 'l'", "clamp")),
]:
    add_manifest(name, _set(path, value), frags, cls="graph")
add_manifest("no_nodes", _set(("nodes",), []), "outputs", cls="graph")
add_manifest("reversed_nodes", lambda m: {**m, "nodes": m["nodes"][::-1]}, "dangling", cls="graph")
add_manifest("missing_node_array",
             lambda m: {**m, "nodes": [m["nodes"][0], *m["nodes"][1:3],
                                       {**m["nodes"][3], "name": "l2"}]},
             ("node 'l2'", "missing array"), cls="graph")


def add_header(name: str, blob: bytes, fragments) -> None:
    add("program_file", name, INSPECT, fragments, {"p.safetensors": blob})


GOOD = program_bytes()
for cut in (0, 1, 7, 8, 9, 40, len(GOOD) // 2, len(GOOD) - 1):
    add_header(f"truncated_{cut}", GOOD[:cut], "p.safetensors")
add_header("empty_zeros", b"\0" * 64, "p.safetensors")
add_header("random_junk", bytes(np.random.default_rng(2).integers(0, 256, 4096, dtype=np.uint8)),
           "p.safetensors")
add_header("text_file", b"name = 'not a program'\n" * 4, "p.safetensors")
add_header("header_not_utf8", raw_safetensors(b"{\"\xff\xfe\": 1}"), "JSON object")
add_header("header_not_json", raw_safetensors(b"{nope"), "JSON object")
add_header("header_list", raw_safetensors([1, 2]), "JSON object")
add_header("header_string", raw_safetensors("x"), "JSON object")
add_header("header_deep", raw_safetensors(deep(100000).encode()), ("p.safetensors", "nested"))
add_header("header_deep_obj", raw_safetensors(deep(100000, '{"a":', "}", "1").encode()),
           ("p.safetensors", "nested"))
add_header("header_len_huge", (2**63).to_bytes(8, "little") + b"{}", "header length")
add_header("header_len_past_end", (1000).to_bytes(8, "little") + b"{}" + b" " * 6, "header length")
add_header("metadata_list", program_bytes(metadata=[1]), "__metadata__")
add_header("metadata_str", program_bytes(metadata="x"), "__metadata__")
add_header("metadata_no_npusim", program_bytes(metadata={"other": "x"}), "manifest")
add_header("metadata_npusim_int", program_bytes(metadata={"npusim": 5}), "manifest")
add_header("metadata_npusim_obj", program_bytes(metadata={"npusim": {"a": 1}}), "manifest")
add_header("manifest_not_json", program_bytes(manifest_text="{nope"), "manifest")
add_header("manifest_empty", program_bytes(manifest_text=""), "manifest")
add_header("manifest_nan", program_bytes(manifest_text="NaN"), "manifest")
add_header("manifest_deep", program_bytes(manifest_text=deep(100000)), ("manifest", "nested"))
add_header("manifest_deep_attr", program_bytes(
    manifest_text=json.dumps(MANIFEST).replace('"clamp": [0, 255]', '"clamp": ' + deep(100000), 1)),
    ("manifest", "nested"))
ENT, DATA = header_entries()


def _ent(name: str, **change) -> dict:
    e = json.loads(json.dumps(ENT))
    e[name].update(change)
    return e


for dtype in ("F32", "F16", "BF16", "F64", "BOOL", "I4", "", "i8", 8, None, ["I8"], {"a": 1}):
    add_header(f"dtype_{dtype!r}"[:40], program_bytes(entries=_ent("c.bias", dtype=dtype)),
               ("'c.bias'", "dtype"))
for shape in ([-2], ["2"], [2.0], 2, None, {"a": 2}, [2**62], [2, 2**40], [1, 1, 1, 1, 1, 2],
              [[2]], [True, True]):
    add_header(f"shape_{shape!r}"[:40], program_bytes(entries=_ent("c.bias", shape=shape)),
               "'c.bias'")
o = ENT["c.bias"]["data_offsets"]
for offs in ([o[0], o[1] + 4], [o[1], o[0]], [-8, 0], [0], [0, 1, 2], "0-8", None,
             [str(o[0]), str(o[1])], [float(o[0]), float(o[1])], [o[0], 2**62], [2**70, 2**70 + 8]):
    add_header(f"offsets_{offs!r}"[:40], program_bytes(entries=_ent("c.bias", data_offsets=offs)),
               "'c.bias'")
add_header("entry_list", program_bytes(entries={**ENT, "c.bias": [1]}), "'c.bias'")
add_header("entry_extra_field", program_bytes(entries=_ent("c.bias", extra=1)), "'c.bias'")
add_header("overlap", program_bytes(entries=_ent("c.bias", data_offsets=[0, 8])), "overlaps")
add_header("undeclared_array", program_bytes(entries={**ENT, "extra": {
    "dtype": "I8", "shape": [4], "data_offsets": [len(DATA), len(DATA) + 4]}}, data=DATA + b"\0" * 4),
    ("'extra'", "tensor table"))
add_header("missing_array", program_bytes(
    entries={k: v for k, v in ENT.items() if k != "c.bias"}), ("node 'c'", "c.bias"))
add_header("missing_multiplier", program_bytes(
    entries={k: v for k, v in ENT.items() if k != "l.multiplier"}), ("node 'l'", "multiplier"))
add_header("claims_huge_tensor", program_bytes(entries=_ent("c.weight", shape=[2**20, 2**20])),
           ("'c.weight'", "elements"))
add_header("weights_out_of_range", program_bytes(
    entries=_ent("c.weight", dtype="I16", data_offsets=[0, 108])), "'c.weight'")
add_header("data_short", program_bytes(data=DATA[:-4]), "data_offsets")
add("program_file", "missing_file", INSPECT, ("p.safetensors", "not found"))
add("program_file", "is_a_directory", ["inspect", "{d}"], "not found")
for cmd in (["simulate", PROG, "--data", "synthetic"], ["bounds", PROG], ["cost", PROG],
            ["export-onnx", PROG, "--out", "{d}/m.onnx"]):
    add("program_file", f"{cmd[0]}_junk", cmd, "p.safetensors", {"p.safetensors": b"junk" * 10})
    m = copy_manifest()
    _set(("nodes", 1, "attrs", "stride"), 0)(m)
    add("program_file", f"{cmd[0]}_stride0", cmd, ("node 'p'", "stride"),
        {"p.safetensors": program_bytes(m)})

# ------------------------------------------------------------------ checkpoints and sidecars

FLOAT_KW = {"num_classes": 10, "in_channels": 1, "width": 0.25}
FLOAT_META = {"model": "resnet8", "model_kwargs": FLOAT_KW, "dataset": "digits"}


def _torch_bytes(obj: object) -> bytes:
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _float_state() -> dict:
    from models import create_model

    return create_model("resnet8", **FLOAT_KW).state_dict()


def _qat_parts() -> tuple[dict, dict]:
    """A QAT model's state_dict and sidecar (resnet8, width 0.25, 1x8x8 input)."""
    from models import create_model
    from quantize import QuantConfig
    from quantize.model import quantize_model

    cfg = QuantConfig.make(method="lsq", weight_bits=4, act_bits=4)
    q = quantize_model(create_model("resnet8", **FLOAT_KW), cfg, input_shape=(1, 8, 8))
    meta = {**FLOAT_META, "quant_config": cfg.model_dump(mode="json"), "input_shape": [1, 8, 8],
            "qmeta": {}}
    return q.state_dict(), meta


_MEMO: dict[str, object] = {}


def memo(key: str, make: Callable[[], object]) -> object:
    if key not in _MEMO:
        _MEMO[key] = make()
    return _MEMO[key]


def pt(make: Callable[[], object]) -> Callable[[Path], bytes]:
    """A .pt file's bytes, built when the case runs (torch is imported lazily)."""
    return lambda d: _torch_bytes(make())


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED_BY_PICKLE",))


FLOAT_ARGV = ["train", "--model", "resnet8", "--data", "digits", "--quant", "lsq", "--epochs", "1",
              "--from", "{d}/m.pt"]
EXPORT_ARGV = ["export", "{d}/m.pt", "--out", "{d}/out.safetensors"]


def _side(meta: object) -> bytes:
    return json.dumps(meta).encode() if not isinstance(meta, bytes) else meta


def add_float_ckpt(name: str, fragments, *, state=None, side: object = FLOAT_META,
                   argv=FLOAT_ARGV) -> None:
    files: dict = {}
    if state is not None:
        files["m.pt"] = state
    if side is not None:
        files["m.json"] = _side(side)
    add("checkpoint", name, argv, fragments, files)


GOOD_STATE = pt(lambda: memo("float", _float_state))
add_float_ckpt("pt_missing", ("m.pt", "not found"))
add_float_ckpt("sidecar_missing", ("m.json", "not found"), state=GOOD_STATE, side=None)
for name, side, frag in [
    ("sidecar_not_json", b"{nope", "not valid JSON"),
    ("sidecar_empty", b"", "not valid JSON"),
    ("sidecar_not_utf8", b'{"model": "\xff"}', "m.json"),
    ("sidecar_deep", deep(100000).encode(), ("m.json", "nested")),
    ("sidecar_list", [FLOAT_META], "m.json"),
    ("sidecar_str", "resnet8", "m.json"),
    ("sidecar_null", None if False else b"null", "m.json"),
    ("sidecar_no_model", {"model_kwargs": FLOAT_KW}, "model"),
    ("sidecar_no_kwargs", {"model": "resnet8"}, "model_kwargs"),
    ("model_int", {**FLOAT_META, "model": 8}, "model"),
    ("model_list", {**FLOAT_META, "model": ["resnet8"]}, "model"),
    ("model_unknown", {**FLOAT_META, "model": "resnet9000"}, "resnet9000"),
    ("kwargs_list", {**FLOAT_META, "model_kwargs": [1]}, "model_kwargs"),
    ("kwargs_unknown", {**FLOAT_META, "model_kwargs": {**FLOAT_KW, "depth": 3}}, "depth"),
    ("width_str", {**FLOAT_META, "model_kwargs": {**FLOAT_KW, "width": "1"}}, "width"),
    ("width_zero", {**FLOAT_META, "model_kwargs": {**FLOAT_KW, "width": 0}}, "width"),
    ("width_bool", {**FLOAT_META, "model_kwargs": {**FLOAT_KW, "width": True}}, "width"),
    ("classes_zero", {**FLOAT_META, "model_kwargs": {**FLOAT_KW, "num_classes": 0}}, "num_classes"),
    ("classes_float", {**FLOAT_META, "model_kwargs": {**FLOAT_KW, "num_classes": 10.0}},
     "num_classes"),
    ("in_channels_str", {**FLOAT_META, "model_kwargs": {**FLOAT_KW, "in_channels": "1"}},
     "in_channels"),
    ("input_shape_str", {**FLOAT_META, "input_shape": "1x8x8"}, "input_shape"),
    ("input_shape_2d", {**FLOAT_META, "input_shape": [8, 8]}, "input_shape"),
    ("input_shape_zero", {**FLOAT_META, "input_shape": [1, 0, 8]}, "input_shape"),
]:
    add_float_ckpt(name, frag, state=GOOD_STATE, side=side)
for name, state, frag in [
    ("torch_save_tensor", pt(lambda: __import__("torch").zeros(3)), "m.pt"),
    ("torch_save_list", pt(lambda: [__import__("torch").zeros(3)]), "m.pt"),
    ("torch_save_int", pt(lambda: 5), "m.pt"),
    ("torch_save_dict_of_ints", pt(lambda: {"conv1.weight": 1}), "m.pt"),
    ("torch_save_empty_dict", pt(lambda: {}), "m.pt"),
    ("wrong_keys", pt(lambda: {"bogus.weight": __import__("torch").zeros(2)}), "m.pt"),
    ("wrong_shapes", pt(lambda: {k: v[:1] if v.ndim else v
                                 for k, v in memo("float", _float_state).items()}), "m.pt"),
    ("pickled_code", pt(lambda: _Evil()), "m.pt"),
    ("junk", b"\x80\x02junk" * 20, "m.pt"),
    ("empty", b"", "m.pt"),
    ("zip_junk", b"PK\x03\x04" + b"\0" * 100, "m.pt"),
]:
    add_float_ckpt(name, frag, state=state)
add("checkpoint", "pt_is_directory", FLOAT_ARGV, "m.pt", {"m.pt/x": b"", "m.json": _side(FLOAT_META)})

QAT_STATE = pt(lambda: memo("qat", _qat_parts)[0])


def qat_side(change: Callable[[dict], object]) -> Callable[[Path], bytes]:
    def make(d: Path) -> bytes:
        meta = json.loads(json.dumps(memo("qat", _qat_parts)[1]))
        out = change(meta)
        return json.dumps(meta if out is None else out).encode()
    return make


for name, change, frag in [
    ("no_quant_config", _delete(("quant_config",)), "quant_config"),
    ("quant_config_list", _set(("quant_config",), [1]), "quant_config"),
    ("quant_config_str", _set(("quant_config",), "lsq"), "quant_config"),
    ("quant_config_bad_bits", _set(("quant_config", "weight_bits"), 99), "weight_bits"),
    ("quant_config_unknown", _set(("quant_config", "bogus"), 1), "bogus"),
    ("no_input_shape", _delete(("input_shape",)), "input_shape"),
    ("input_shape_null", _set(("input_shape",), None), "input_shape"),
    ("input_shape_str", _set(("input_shape",), "x"), "input_shape"),
    ("input_shape_wrong_channels", _set(("input_shape",), [3, 8, 8]), "input_shape"),
    ("qmeta_list", _set(("qmeta",), [1]), "qmeta"),
    ("qmeta_str", _set(("qmeta",), "x"), "qmeta"),
    ("width_other", _set(("model_kwargs", "width"), 0.5), "m.pt"),
    ("sidecar_list", lambda m: [m], "m.json"),
]:
    add("checkpoint", f"qat_{name}", EXPORT_ARGV, frag, {"m.pt": QAT_STATE, "m.json": qat_side(change)})
for name, state in [("torch_save_tensor", pt(lambda: __import__("torch").zeros(3))),
                    ("float_state", GOOD_STATE), ("junk", b"junk"),
                    ("pickled_code", pt(lambda: _Evil()))]:
    add("checkpoint", f"qat_{name}", EXPORT_ARGV, "m.pt", {"m.pt": state, "m.json": qat_side(lambda m: m)})

# ------------------------------------------------------------------ data directories (cifar10)

CIFAR_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
DATA_ARGV = ["simulate", "{p}", "--data", "cifar10", "--root", "{d}/cifar"]


def cifar_dir(make_batch: Callable[[int], bytes], skip: str | None = None) -> dict:
    return {f"cifar/{f}": make_batch(i) for i, f in enumerate(CIFAR_FILES) if f != skip}


def batch(**change) -> Callable[[int], bytes]:
    def make(i: int) -> bytes:
        d = {b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 3]}
        for k, v in change.items():
            if v is None:
                d.pop(k.encode())
            else:
                d[k.encode()] = v
        return pickle.dumps(d, protocol=2)
    return make


add("data_dir", "root_missing", DATA_ARGV, ("cifar", "does not exist"))
add("data_dir", "root_is_file", DATA_ARGV, ("cifar", "not a directory"), {"cifar": b"x"})
add("data_dir", "root_empty", DATA_ARGV, ("cifar", "missing"), {"cifar/README": b"x"})
add("data_dir", "one_batch_missing", DATA_ARGV, ("data_batch_3", "missing"),
    cifar_dir(batch(), skip="data_batch_3"))
add("data_dir", "batch_is_dir", DATA_ARGV, "data_batch_1",
    {**cifar_dir(batch(), skip="data_batch_1"), "cifar/data_batch_1/x": b""})
for name, make, frag in [
    ("junk", lambda i: b"junk" * 100, "not a readable pickle"),
    ("empty", lambda i: b"", "test_batch"),
    ("truncated", lambda i: batch()(i)[:50], "test_batch"),
    ("pickled_code", lambda i: pickle.dumps(_Evil()), "not a safe CIFAR-10 pickle"),
    ("pickled_list", lambda i: pickle.dumps([1, 2, 3]), "test_batch"),
    ("pickled_none", lambda i: pickle.dumps(None), "test_batch"),
    ("no_labels", batch(labels=None), "labels"),
    ("no_data", batch(data=None), "data"),
    ("data_float", batch(data=np.zeros((4, 3072), np.float32)), "data"),
    ("data_shape", batch(data=np.zeros((4, 100), np.uint8)), "data"),
    ("data_list", batch(data=[1, 2, 3]), "data"),
    ("labels_str", batch(labels=["a", "b", "c", "d"]), "labels"),
    ("labels_range", batch(labels=[0, 1, 2, 99]), "labels"),
    ("labels_count", batch(labels=[0, 1]), "labels"),
    ("labels_negative", batch(labels=[0, 1, 2, -1]), "labels"),
    ("deep_pickle", lambda i: b"\x80\x02" + b"]" * 0 + b"(" * 200000 + b".", "test_batch"),
]:
    add("data_dir", name, DATA_ARGV, frag, cifar_dir(make))
add("data_dir", "unknown_dataset", ["simulate", "{p}", "--data", "imagenet"], "imagenet")
add("data_dir", "unknown_split", ["simulate", "{p}", "--data", "synthetic", "--split", "val"], "val")
add("data_dir", "train_root_missing",
    ["train", "--model", "resnet8", "--data", "cifar10", "--epochs", "1", "--root", "{d}/cifar"],
    ("cifar", "does not exist"))

# ------------------------------------------------------------------ quant configs (JSON)

QC_ARGV = ["train", "--model", "resnet8", "--data", "digits", "--quant", "lsq", "--epochs", "1",
           "--quant-config", "{d}/q.json", "--from", "{d}/none.pt"]
for name, text, frag in [
    ("not_json", b"{nope", "not valid JSON"),
    ("empty", b"", "q.json"),
    ("not_utf8", b'{"method": "\xff"}', "q.json"),
    ("deep", deep(100000).encode(), ("q.json", "nested")),
    ("deep_obj", deep(100000, '{"a":', "}").encode(), ("q.json", "nested")),
    ("list", b"[1, 2]", "q.json"),
    ("string", b'"lsq"', "q.json"),
    ("null", b"null", "q.json"),
    ("nan", b'{"weight_bits": NaN}', "weight_bits"),
    ("method", b'{"method": "magic"}', "method"),
    ("method_int", b'{"method": 5}', "method"),
    ("weight_bits_str", b'{"weight_bits": "four"}', "weight_bits"),
    ("weight_bits_1", b'{"weight_bits": 1}', "weight_bits"),
    ("weight_bits_huge", b'{"weight_bits": 100000000000000000000000}', "weight_bits"),
    ("act_bits_float", b'{"act_bits": 4.5}', "act_bits"),
    ("acc_bits_99", b'{"acc_bits": 99}', "acc_bits"),
    ("unknown", b'{"bogus": 1}', ("bogus", "unknown")),
    ("overrides_str", b'{"overrides": "x"}', "overrides"),
    ("overrides_item", b'{"overrides": [1]}', "overrides"),
    ("overrides_bits", b'{"overrides": [{"pattern": "x", "weight_bits": 99}]}', "overrides"),
    ("requant_list", b'{"requant": [1]}', "requant"),
    ("requant_mode", b'{"requant": {"scale_mode": "nope"}}', "requant"),
    ("a2q_mode", b'{"a2q": {"mode": "a3q"}}', "a2q"),
    ("a2q_list", b'{"a2q": [1]}', "a2q"),
    ("embedding_d", b'{"embedding": {"d": 0}}', "embedding"),
    ("options_list", b'{"options": [1]}', "options"),
    ("bn_freeze", b'{"bn_freeze_frac": 2}', "bn_freeze_frac"),
]:
    add("quant_config", name, QC_ARGV, frag, {"q.json": text})
add("quant_config", "is_directory", QC_ARGV, "--quant-config", {"q.json/x": b""})
add("quant_config", "missing", QC_ARGV, ("--quant-config", "not found"))
add("quant_config", "method_flag", ["train", "--model", "resnet8", "--data", "digits", "--quant",
                                    "magic", "--from", "{d}/none.pt"], "method")
add("quant_config", "wbits_flag", ["train", "--model", "resnet8", "--data", "digits", "--quant",
                                   "lsq", "--wbits", "99", "--from", "{d}/none.pt"], "weight_bits")

# ------------------------------------------------------------------ sweep stores and result CSVs


def _sqlite(setup: Callable[[sqlite3.Connection], None]) -> Callable[[Path], bytes]:
    def build(d: Path) -> bytes:
        path = d / "_tmp.sqlite"
        con = sqlite3.connect(path)
        con.execute("PRAGMA synchronous=OFF")
        setup(con)
        con.commit()
        con.close()
        data = path.read_bytes()
        path.unlink()
        return data

    return lambda d: memo(f"sqlite-{id(build)}", lambda: build(d))  # built once per session


def _valid_store(rows: list[str] | None = None, version: str = "1",
                 layers: str | None = None) -> Callable[[Path], bytes]:
    from npusim.sweep.store import _SCHEMA

    def setup(con: sqlite3.Connection) -> None:
        con.executescript(_SCHEMA)
        con.execute("INSERT INTO meta VALUES ('schema_version', ?)", (version,))
        for i, r in enumerate(rows if rows is not None else [json.dumps(_ROW)]):
            con.execute("INSERT INTO points VALUES (?, 'now', ?, ?)", (f"h{i}", r, layers))
    return _sqlite(setup)


_ROW = {"point_hash": "h0", "acc_bits": 8, "top1": 0.5, "status": "ok", "overflow_mode": "wrap",
        "quant_label": "lsq-W8A8"}


def _corrupt(make: Callable[[Path], bytes]) -> Callable[[Path], bytes]:
    def bad(d: Path) -> bytes:
        data = bytearray(make(d))
        page = 4096
        assert len(data) >= 2 * page
        data[page:] = b"\xa5" * (len(data) - page)  # every page after the first
        return bytes(data)
    return bad


def _big_store() -> Callable[[Path], bytes]:
    return _valid_store([json.dumps({**_ROW, "pad": "x" * 3000})] * 8)


PLOT_ARGV = ["plot", "{d}/s.sqlite", "--x", "acc_bits", "--out", "{d}/o.png"]
REPORT_ARGV = ["report", "{d}/s.sqlite", "--out", "{d}/rep"]
SWEEP_ARGV = ["sweep", "--model", "resnet8", "--data", "digits", "--db", "{d}/s.sqlite",
              "--no-progress", "--bits", "8/8", "--images", "4"]
STORES = [
    ("junk", lambda d: b"junk" * 1000, "not a results database"),
    ("text", lambda d: b"point_hash,top1\nh,1\n", "not a results database"),
    ("sqlite_header_only", lambda d: b"SQLite format 3\x00" + b"\0" * 84, "s.sqlite"),
    ("truncated", lambda d: _big_store()(d)[:5000], "s.sqlite"),
    ("other_schema", _sqlite(lambda c: c.execute("CREATE TABLE points (a, b)")), "s.sqlite"),
    ("other_meta", _sqlite(lambda c: c.execute("CREATE TABLE meta (k)")), "s.sqlite"),
    ("version_2", _valid_store(version="2"), "schema version"),
    ("version_word", _valid_store(version="abc"), "schema version"),
    ("version_json", _valid_store(version="[1]"), "schema version"),
]
READ_STORES = [
    ("corrupt_pages", _corrupt(_big_store()), "s.sqlite"),
    ("row_not_json", _valid_store(["{nope"]), "s.sqlite"),
    ("row_list", _valid_store(["[1, 2]"]), "s.sqlite"),
    ("row_deep", _valid_store([deep(100000)]), "s.sqlite"),
]
for name, make, frag in STORES + READ_STORES:
    add("store", f"plot_{name}", PLOT_ARGV, frag, {"s.sqlite": make})
    add("store", f"report_{name}", REPORT_ARGV, frag, {"s.sqlite": make})
for name, make, frag in STORES + READ_STORES[:1]:  # refused before any training
    add("store", f"sweep_{name}", SWEEP_ARGV, frag, {"s.sqlite": make})
add("store", "plot_missing", PLOT_ARGV, ("s.sqlite", "not found"))
add("store", "report_missing", REPORT_ARGV, ("s.sqlite", "not found"))
add("store", "plot_directory", PLOT_ARGV, "s.sqlite", {"s.sqlite/x": b""})
add("store", "plot_empty_store", PLOT_ARGV, "no points", {"s.sqlite": _valid_store([])})
add("store", "report_empty_store", REPORT_ARGV, "no results", {"s.sqlite": _valid_store([])})
add("store", "report_layers_junk", REPORT_ARGV, "s.sqlite",
    {"s.sqlite": _valid_store(layers="{nope")})
CSV_ARGV = ["plot", "{d}/r.csv", "--x", "acc_bits", "--out", "{d}/o.png"]
for name, blob, frag in [
    ("empty", b"", "r.csv"),
    ("binary", bytes(np.random.default_rng(3).integers(0, 256, 2048, dtype=np.uint8)), "r.csv"),
    ("not_utf8", b"acc_bits,top1\n\xff\xfe,1\n", "r.csv"),
    ("header_only", b"acc_bits,top1\n", "no points"),
    ("ragged", b"acc_bits,top1\n1,2,3,4\n5\n\"unclosed\n", "r.csv"),
    ("no_column", b"a,b\n1,2\n", "acc_bits"),
]:
    add("store", f"csv_{name}", CSV_ARGV, frag, {"r.csv": blob})

# ------------------------------------------------------------------ output paths

OUT_CASES = [
    ("simulate_csv_dir", ["simulate", "{p}", "--data", "synthetic", "--csv", "{d}"], "--csv"),
    ("simulate_csv_under_file", ["simulate", "{p}", "--data", "synthetic", "--csv", "{d}/f/x.csv"],
     "--csv"),
    ("cost_csv_dir", ["cost", "{p}", "--csv", "{d}"], "--csv"),
    ("cost_csv_under_file", ["cost", "{p}", "--csv", "{d}/f/x.csv"], "--csv"),
    ("cost_baselines_dir", ["cost", "{p}", "--csv", "{d}/b.csv"], "baselines"),
    ("plot_out_dir", ["plot", "{csv}", "--x", "acc_bits", "--out", "{d}"], "--out"),
    ("plot_out_under_file", ["plot", "{csv}", "--x", "acc_bits", "--out", "{d}/f/o.png"], "--out"),
    ("plot_csv_dir", ["plot", "{csv}", "--x", "acc_bits", "--out", "{d}/c.png"], "--out"),
    ("report_out_file", ["report", "{db}", "--out", "{d}/f"], "--out"),
    ("report_out_under_file", ["report", "{db}", "--out", "{d}/f/rep"], "--out"),
    ("sweep_csv_dir", ["sweep", "--model", "resnet8", "--data", "digits", "--csv", "{d}"], "--csv"),
    ("sweep_db_dir", ["sweep", "--model", "resnet8", "--data", "digits", "--db", "{d}"], "--db"),
    ("sweep_db_under_file", ["sweep", "--model", "resnet8", "--data", "digits",
                             "--db", "{d}/f/s.sqlite"], "--db"),
    ("train_out_dir", ["train", "--model", "resnet8", "--data", "digits", "--epochs", "1",
                       "--out", "{d}"], "--out"),
    ("train_out_under_file", ["train", "--model", "resnet8", "--data", "digits", "--epochs", "1",
                              "--out", "{d}/f/m.pt"], "--out"),
    ("train_sidecar_dir", ["train", "--model", "resnet8", "--data", "digits", "--epochs", "1",
                           "--out", "{d}/m.pt"], "--out"),
    ("train_export_dir", ["train", "--model", "resnet8", "--data", "digits", "--epochs", "1",
                          "--quant", "lsq", "--from", "{d}/none.pt", "--export", "{d}"], "--export"),
    ("export_out_dir", ["export", "{d}/none.pt", "--out", "{d}"], "--out"),
    ("import_out_dir", ["import", "{d}/none.onnx", "--out", "{d}"], "--out"),
    ("export_onnx_out_dir", ["export-onnx", "{p}", "--out", "{d}"], "--out"),
    ("export_onnx_under_file", ["export-onnx", "{p}", "--out", "{d}/f/m.onnx"], "--out"),
    ("import_under_file", ["import", "{d}/none.onnx", "--out", "{d}/f/p.safetensors"], "--out"),
    ("simulate_dangling_link", ["simulate", "{p}", "--data", "synthetic", "--csv",
                                "{d}/link/x.csv"], "dangling"),
]
for name, argv, frag in OUT_CASES:
    add("output_path", name, argv, frag, {"f": b"x", "b_baselines.csv/x": b"",
                                          "c.csv/x": b"", "m.json/x": b"",
                                          "link": lambda d: (d / "link").symlink_to(d / "nowhere")})

# ------------------------------------------------------------------ --where filters

WHERE = [
    ("at_local", "@pd.io.common.os.system('touch PWNED')", "--where"),
    ("at_builtins", "acc_bits == @__builtins__.__import__('os').system('touch PWNED')", "--where"),
    ("dunder_import", "__import__('os').system('touch PWNED')", "--where"),
    ("os_system", "os.system('touch PWNED')", "--where"),
    ("globals", "top1.__class__.__init__.__globals__['os'].system('x') == 0", "--where"),
    ("backticks", "`top1` > 0.5", "--where"),
    ("backtick_cmd", "acc_bits == `touch PWNED`", "--where"),
    ("shell_subst", "acc_bits == $(touch PWNED)", "--where"),
    ("semicolon", "acc_bits == 8; import os", "--where"),
    ("open_call", "acc_bits == 8 or (open('PWNED', 'w'))", "--where"),
    ("lambda", "(lambda: 1)() == 1", "--where"),
    ("eval", "eval('1') == 1", "--where"),
    ("unbalanced_open", "(acc_bits == 8", "--where"),
    ("unbalanced_close", "acc_bits == 8)", "--where"),
    ("empty_parens", "()", "--where"),
    ("empty", "", "--where"),
    ("only_and", "and", "--where"),
    ("dangling_and", "acc_bits == 8 and", "--where"),
    ("no_value", "acc_bits ==", "--where"),
    ("no_op", "acc_bits 8", "--where"),
    ("unknown_column", "nope == 1", "'nope'"),
    ("unknown_column_in", "nope in [1, 2]", "'nope'"),
    ("unclosed_list", "acc_bits in [1, 2", "--where"),
    ("unclosed_string", "overflow_mode == 'wrap", "--where"),
    ("deep_parens", "(" * 5000 + "acc_bits == 8" + ")" * 5000, "--where"),
    ("deep_not", "not " * 5000 + "acc_bits == 8", "--where"),
    ("too_long", "acc_bits == 8 or " * 1000 + "acc_bits == 8", "--where"),
    ("no_match", "acc_bits > 99", "no row"),
    ("nul", "acc_bits == 8\x00", "--where"),
    ("unicode_op", "acc_bits ≥ 8", "--where"),
]
for name, expr, frag in WHERE:
    add("where", name, ["plot", "{csv}", "--x", "acc_bits", "--where", expr, "--out", "{d}/p.png"],
        frag)

# ------------------------------------------------------------------ energy tables (TOML)

ET_ARGV = ["cost", "{p}", "--energy-table", "{d}/e.toml"]


def _shipped_table() -> str:
    from importlib import resources

    return resources.files("npusim").joinpath("energy", "horowitz45.toml").read_text()


def et(change: Callable[[str], str]) -> Callable[[Path], bytes]:
    return lambda d: change(_shipped_table()).encode()


for name, make, frag in [
    ("empty", lambda d: b"", "e.toml"),
    ("not_utf8", lambda d: b"\xff\xfe = 1", "not UTF-8"),
    ("junk", lambda d: b"\x00\x01junk", "e.toml"),
    ("syntax", lambda d: b"entries = \n", "TOML syntax"),
    ("deep", lambda d: ("x = " + deep(20000)).encode(), ("e.toml", "nested")),
    ("entries_scalar", lambda d: b"entries = 5\n", "e.toml"),
    ("unknown_entry", et(lambda t: t + '\n[entries.mac.teleport]\nvalue = 1.0\nunit = "pJ"\n'),
     "mac.teleport"),
    ("value_str", et(lambda t: t.replace("value = ", 'value = "x" #', 1)), "e.toml"),
    ("value_neg", et(lambda t: t.replace("value = ", "value = -", 1)), "e.toml"),
    ("value_nan", et(lambda t: t.replace("value = ", "value = nan #", 1)), "e.toml"),
    ("unit_wrong", et(lambda t: t.replace('unit = "pJ/op"', 'unit = "kWh"', 1)), "unit"),
    ("node_zero", et(lambda t: t.replace("node_nm = ", "node_nm = 0 #", 1)), "node_nm"),
]:
    add("energy_table", name, ET_ARGV, frag, {"e.toml": make})
add("energy_table", "missing", ET_ARGV, ("e.toml", "no such file"))
add("energy_table", "directory", ET_ARGV, "is a directory", {"e.toml/x": b""})
add("energy_table", "unknown_name", ["cost", "{p}", "--energy-table", "horowitz99"], "horowitz99")

# ------------------------------------------------------------------ MARViN configs (JSON)

MV_ARGV = ["train", "--model", "resnet8", "--data", "digits", "--epochs", "1", "--marvin",
           "--marvin-config", "{d}/mv.json", "--marvin-out", "{d}/run"]
for name, text, frag in [
    ("not_json", b"{nope", "not valid JSON"),
    ("empty", b"", "mv.json"),
    ("not_utf8", b'{"a": "\xff"}', "mv.json"),
    ("deep", deep(100000).encode(), ("mv.json", "nested")),
    ("list", b"[1]", "mv.json"),
    ("unknown", b'{"bogus": 1}', "bogus"),
    ("menu_str", b'{"word_bits_menu": "8,16"}', "word_bits_menu"),
    ("menu_empty", b'{"word_bits_menu": []}', "word_bits_menu"),
    ("menu_zero", b'{"word_bits_menu": [0]}', "word_bits_menu"),
]:
    add("marvin_config", name, MV_ARGV, frag, {"mv.json": text})
add("marvin_config", "missing", MV_ARGV, ("--marvin-config", "not found"))
add("marvin_config", "out_is_file", [*MV_ARGV[:-1], "{d}/f"], "--marvin-out", {"f": b"x",
                                                                            "mv.json": b"{}"})
add("marvin_config", "with_quant", [*MV_ARGV, "--quant", "lsq"], "--marvin")

# ------------------------------------------------------------------ ONNX models to import

ONNX_ARGV = ["import", "{d}/m.onnx", "--out", "{d}/p.safetensors"]


def _onnx(make_graph: Callable[[], object]) -> Callable[[Path], bytes]:
    return lambda d: make_graph().SerializeToString()


def _float_model():
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])
    return helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])],
                                               "g", [x], [y]))


def _unknown_op_model():
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 3, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.UINT8, [1, 3, 4, 4])
    return helper.make_model(helper.make_graph([helper.make_node("Teleport", ["x"], ["y"])],
                                               "g", [x], [y]))


for name, make, frag in [
    ("empty", lambda d: b"", "m.onnx"),
    ("junk", lambda d: b"\x08\x07junk" * 50, "m.onnx"),
    ("text", lambda d: b"not an onnx model\n", "m.onnx"),
    ("float_model", _onnx(_float_model), "m.onnx"),
    ("unknown_op", _onnx(_unknown_op_model), "m.onnx"),
    ("truncated", lambda d: _float_model().SerializeToString()[:20], "m.onnx"),
]:
    add("onnx_model", name, ONNX_ARGV, frag, {"m.onnx": make})
add("onnx_model", "missing", ONNX_ARGV, ("m.onnx", "not found"))
add("onnx_model", "directory", ONNX_ARGV, "m.onnx", {"m.onnx/x": b""})
for px in ("abc", "0.5", "0.5,0", "0.5,-1", "0.5,0.2,0", "1,2,3,4", "nan,nan", ""):
    add("onnx_model", f"pixels_{px!r}", [*ONNX_ARGV, "--pixels", px], "--pixels",
        {"m.onnx": _onnx(_float_model)})

# ------------------------------------------------------------------ sweep axes

SW = ["sweep", "--model", "resnet8", "--data", "digits", "--db", "{d}/s.sqlite", "--no-progress"]
for name, extra_args, frag in [
    ("set_no_equals", ["--set", "precision.acc_bits"], "--set"),
    ("set_unknown", ["--set", "precision.bogus=1,2"], "precision.bogus"),
    ("set_bad_value", ["--set", "precision.acc_bits=8,x"], "precision.acc_bits"),
    ("set_empty_range", ["--set", "precision.acc_bits=20:10"], "empty"),
    ("set_zero_step", ["--set", "precision.acc_bits=8:20:0"], "step"),
    ("set_huge_range", ["--set", "precision.acc_bits=1:100000000"], "more than"),
    ("set_bad_range", ["--set", "precision.acc_bits=8:x"], "precision.acc_bits"),
    ("set_empty_value", ["--set", "precision.acc_bits=8,,16"], "empty value"),
    ("set_no_values", ["--set", "precision.acc_bits="], "no values"),
    ("quant_unknown", ["--quant", "bogus=1,2"], "bogus"),
    ("quant_bad_bits", ["--quant", "weight_bits=99"], "weight_bits"),
    ("bits_word", ["--bits", "eight"], "bits"),
    ("bits_triple", ["--bits", "8/8/8"], "bits"),
    ("method_unknown", ["--method", "magic"], "magic"),
    ("acc_bits_word", ["--acc-bits", "wide"], "acc_bits"),
    ("overflow_unknown", ["--overflow", "explode"], "overflow"),
    ("npu_missing", ["--npu", "{d}/nope.toml"], "nope.toml"),
    ("model_unknown", ["--model", "resnet9000"], "--model"),
    ("data_unknown", ["--data", "imagenet"], "--data"),
    ("two_clusters", ["--workers", "2", "--scheduler", "tcp://127.0.0.1:1"], "--workers"),
    ("scheduler_file_missing", ["--scheduler-file", "{d}/nope.json"], "--scheduler-file"),
]:
    add("sweep_axes", name, [*SW, *extra_args], frag)

# ------------------------------------------------------------------ MARViN run directories

_RUN = {
    "marvin_history.csv": b"iteration,layer,word_length_bits,frac_bits\n0,conv1,8,4\n",
    "marvin_usage.csv": (b"layer,weight_bits,act_bits,grad_bits,weight_float,act_float,grad_float,"
                         b"batch_size,batches\nconv1,8,8,8,False,False,False,32,4\n"),
    "marvin_geometry.csv": b"layer,M,K,N,groups,weights,input_grad\nconv1,16,27,4,1,108,False\n",
}
RUN_ARGV = ["report", "--marvin", "{d}/run", "--out", "{d}/rep"]


def run_dir(**change: bytes | None) -> dict:
    files = {**_RUN, **change}
    return {f"run/{k}": v for k, v in files.items() if v is not None}


add("marvin_run", "missing", RUN_ARGV, ("run", "not a directory"))
add("marvin_run", "is_file", RUN_ARGV, ("run", "not a directory"), {"run": b"x"})
for f in _RUN:
    stem = f.removeprefix("marvin_").removesuffix(".csv")
    add("marvin_run", f"{stem}_missing", RUN_ARGV, (f, "not found"), run_dir(**{f: None}))
    add("marvin_run", f"{stem}_empty", RUN_ARGV, f, run_dir(**{f: b""}))
    add("marvin_run", f"{stem}_binary", RUN_ARGV, f, run_dir(**{f: b"\xff\xfe\x00\x81" * 64}))
    add("marvin_run", f"{stem}_no_columns", RUN_ARGV, (f, "missing column"),
        run_dir(**{f: b"a,b\n1,2\n"}))
    add("marvin_run", f"{stem}_header_only", RUN_ARGV, f,
        run_dir(**{f: _RUN[f].split(b"\n")[0] + b"\n"}))
    add("marvin_run", f"{stem}_words", RUN_ARGV, (f, "expected non-negative integers"),
        run_dir(**{f: _RUN[f].replace(b",8", b",eight").replace(b",16", b",x")
                   .replace(b",0,", b",zero,")}))
for name, blob in [("not_json", b"{nope"), ("list", b"[1]"), ("not_utf8", b"\xff"),
                   ("deep", deep(100000).encode())]:
    add("marvin_run", f"config_{name}", RUN_ARGV, "marvin_config.json",
        run_dir(**{"marvin_config.json": blob}))
add("marvin_run", "usage_unknown_layer", RUN_ARGV, "fc",
    run_dir(**{"marvin_usage.csv": _RUN["marvin_usage.csv"].replace(b"\nconv1", b"\nfc")}))

# ------------------------------------------------------------------ NPU field limits (cost = simulate)

SYN = "synthetic:shape=3x6x6,n=4"  # images the small program takes
LIMIT_CMDS = {"cost": ["cost", "{p}"], "simulate": ["simulate", "{p}", "--data", SYN]}
NPU_LIMITS = [  # (--set item, fragment): every numeric field past its range, NaN and inf
    *[(f"array.clock_mhz={v}", "array.clock_mhz") for v in ("0", "-1", "1e-4", "1e5", "nan", "inf", "-inf")],
    *[(f"array.{k}={v}", f"array.{k}") for k in ("rows", "cols") for v in ("0", "-1", "4097", "nan", "1.5")],
    *[(f"memory.{k}={v}", f"memory.{k}") for k in ("weight_sram_kib", "activation_sram_kib",
                                                  "accumulator_sram_kib")
      for v in ("0", "1e-4", "1e9", "nan", "inf")],
    *[(f"memory.dram_bandwidth_bytes_per_cycle={v}", "memory.dram_bandwidth_bytes_per_cycle")
      for v in ("0", "2e6", "nan", "inf")],
    *[(f"memory.sram_word_bits={v}", "memory.sram_word_bits") for v in ("4", "7", "8193", "nan", "inf")],
    *[(f"precision.acc_bits={v}", "precision.acc_bits") for v in ("1", "63", "nan", "inf")],
    *[(f"precision.pe_acc_bits={v}", "precision.pe_acc_bits") for v in ("1", "63", "nan")],
    *[(f"technology.node_nm={v}", "technology.node_nm") for v in ("0", "0.5", "1001", "nan", "inf", "-inf")],
    *[(f"technology.supply_v={v}", "technology.supply_v") for v in ("0", "0.05", "5.1", "nan", "inf")],
    *[(f"array.max_{k}_bits={v}", f"array.max_{k}_bits") for k in ("weight", "input") for v in ("1", "17")],
]
NPU_LIMIT_TOML = [  # the same limits from a file (TOML has nan and inf literals)
    ("array", "clock_mhz", "nan"), ("array", "clock_mhz", "1e5"), ("memory", "weight_sram_kib", "inf"),
    ("memory", "sram_word_bits", "9000"), ("technology", "node_nm", "-inf"),
    ("technology", "supply_v", "nan"), ("precision", "acc_bits", "63"), ("array", "rows", "5000"),
]
NPU_RUNNABLE = [  # valid NPUs that cannot run this program: refused by check_runnable
    (["--set", "array.max_weight_bits=4"], ("node 'c'", "weight")),
    (["--set", "array.max_input_bits=4"], ("node 'c'", "input")),
    (["--set", "precision.acc_bits=8", "--set", "precision.overflow=exact"], "node 'c'"),
]
for cmd, head in LIMIT_CMDS.items():
    for item, frag in NPU_LIMITS:
        add("npu_limits", f"{cmd}:{item}", [*head, "--set", item], frag)
    for section, key, value in NPU_LIMIT_TOML:
        add("npu_limits", f"{cmd}:toml:{section}.{key}={value}", [*head, "--npu", "{d}/npu.toml"],
            (f"{section}.{key}", "npu.toml"), _npu(f"[{section}]\n{key} = {value}"))
    for i, (extra, frag) in enumerate(NPU_RUNNABLE):
        add("npu_limits", f"{cmd}:runnable{i}", [*head, *extra], frag)

# ------------------------------------------------------------------ pe_acc_bits > acc_bits

_LAYER_C = '[[layer]]\nmatch = "c"\n'
PE_CASES = [  # (name, npu.toml body or None, --set items, fragments)
    ("body_toml", "[precision]\npe_acc_bits = 32\nacc_bits = 16", [], ("npu.toml", "pe_acc_bits")),
    ("body_set", None, ["precision.pe_acc_bits=40"], ("overrides", "pe_acc_bits")),
    ("body_set_narrow_acc", "[precision]\npe_acc_bits = 24", ["precision.acc_bits=16"],
     ("overrides", "pe_acc_bits")),
    ("layer_toml_pe", _LAYER_C + "precision = { pe_acc_bits = 40 }", [], ("layer[0]", "pe_acc_bits")),
    ("layer_toml_both", _LAYER_C + "precision = { pe_acc_bits = 20, acc_bits = 16 }", [],
     ("layer[0]", "pe_acc_bits")),
    ("layer_toml_acc_below_body_pe", "[precision]\npe_acc_bits = 24\n" + _LAYER_C
     + "precision = { acc_bits = 16 }", [], ("layer[0]", "pe_acc_bits")),
    ("layer_toml_second", _LAYER_C + "precision = { acc_bits = 16 }\n[[layer]]\nmatch = \"l\"\n"
     "precision = { pe_acc_bits = 33 }", [], ("layer[1]", "pe_acc_bits")),
    ("layer_set_pe", None, ["layer[0].match=c", "layer[0].precision.pe_acc_bits=40"],
     ("layer[0]", "pe_acc_bits")),
    ("layer_set_acc", "[precision]\npe_acc_bits = 16", ["layer[0].match=c",
                                                        "layer[0].precision.acc_bits=8"],
     ("layer[0]", "pe_acc_bits")),
    ("layer_set_over_toml", _LAYER_C + "precision = { acc_bits = 16 }",
     ["layer[0].precision.pe_acc_bits=24"], ("layer[0]", "pe_acc_bits")),
]
for cmd, head in LIMIT_CMDS.items():
    for name, body, sets, frags in PE_CASES:
        argv = [*head, *(["--npu", "{d}/npu.toml"] if body is not None else [])]
        for s in sets:
            argv += ["--set", s]
        add("pe_acc_bits", f"{cmd}:{name}", argv, frags, _npu(body) if body is not None else {})

# ------------------------------------------------------------------ [[layer]] tables

LAYER_TOML = [  # (name, body, fragments)
    ("no_match", '[[layer]]\nmatch = "stem*"\nprecision = { acc_bits = 16 }',
     ("layer[0].match", "'stem*'", "matches no node")),
    ("second_no_match", _LAYER_C + 'precision = { acc_bits = 16 }\n[[layer]]\nmatch = "C"',
     ("layer[1].match", "matches no node")),
    ("unknown_key", _LAYER_C + "bogus = 1", ("layer[0].bogus", "unknown key")),
    ("unknown_precision_key", _LAYER_C + "precision = { acc_bit = 16 }",
     ("layer[0].precision.acc_bit", "unknown key")),
    ("missing_match", "[[layer]]\nprecision = { acc_bits = 16 }", ("layer[0].match", "missing")),
    ("match_empty", '[[layer]]\nmatch = ""', "layer[0].match"),
    ("match_int", "[[layer]]\nmatch = 3", "layer[0].match"),
    ("match_list", '[[layer]]\nmatch = ["c"]', "layer[0].match"),
    ("layer_scalar", "layer = 5", "layer"),
    ("layer_table", "[layer]\nmatch = \"c\"", "layer"),
    ("precision_scalar", _LAYER_C + "precision = 16", "layer[0].precision"),
    ("acc_bits_str", _LAYER_C + 'precision = { acc_bits = "16" }', "layer[0].precision.acc_bits"),
    ("acc_bits_99", _LAYER_C + "precision = { acc_bits = 99 }", "layer[0].precision.acc_bits"),
    ("acc_bits_nan", _LAYER_C + "precision = { acc_bits = nan }", "layer[0].precision.acc_bits"),
    ("overflow_bogus", _LAYER_C + 'precision = { overflow = "bogus" }',
     "layer[0].precision.overflow"),
]
LAYER_SET = [  # (name, --set items, fragments)
    ("bad_index", ["layer[9].match=x"], ("layer[9].match", "0 [[layer]] tables")),
    ("dotted", ["layer.x=1"], ("layer.x", "by index")),
    ("bare", ["layer=1"], ("layer", "by index")),
    ("negative_index", ["layer[-1].match=x"], ("layer[-1]", "by index")),
    ("no_index_close", ["layer[0.match=x"], "by index"),
    ("unknown_key", ["layer[0].bogus=1"], ("layer[0].bogus", "unknown key")),
    ("typo", ["layer[0].precision.acc_bit=16"], ("layer[0].precision.acc_bit", "did you mean")),
    ("no_match_key", ["layer[0].precision.acc_bits=16"], ("layer[0].match", "missing")),
    ("match_nothing", ["layer[0].match=zz*"], ("layer[0].match", "matches no node")),
    ("match_empty", ["layer[0].match="], "layer[0].match"),
    ("acc_bits_word", ["layer[0].match=c", "layer[0].precision.acc_bits=wide"],
     "layer[0].precision.acc_bits"),
    ("acc_bits_nan", ["layer[0].match=c", "layer[0].precision.acc_bits=nan"],
     "layer[0].precision.acc_bits"),
    ("skip_index", ["layer[0].match=c", "layer[2].match=l"], ("layer[2]", "1 [[layer]] tables")),
    ("overflow_bogus", ["layer[0].match=c", "layer[0].precision.overflow=sometimes"],
     "layer[0].precision.overflow"),
]
for cmd, head in LIMIT_CMDS.items():
    for name, body, frags in LAYER_TOML:
        add("layer_table", f"{cmd}:toml:{name}", [*head, "--npu", "{d}/npu.toml"], frags, _npu(body))
    for name, sets, frags in LAYER_SET:
        argv = list(head)
        for s in sets:
            argv += ["--set", s]
        add("layer_table", f"{cmd}:set:{name}", argv, frags)
add("layer_table", "sweep_program:no_match", ["sweep", "--program", "{p}", "--data", SYN, "--db",
                                              "{d}/s.sqlite", "--set", "layer[0].match=zz*"],
    ("layer[0].match", "matches no node"))

# ------------------------------------------------------------------ training numbers

TRAIN = ["train", "--model", "resnet8", "--data", "digits", "--epochs", "1", "--out", "{d}/m.pt"]
TRAIN_QAT = ["train", "--model", "resnet8", "--data", "digits", "--epochs", "1", "--quant", "lsq"]
TRAIN_MV = ["train", "--model", "resnet8", "--data", "digits", "--epochs", "1", "--marvin",
            "--marvin-out", "{d}/run"]
SWEEP_T = ["sweep", "--model", "resnet8", "--data", "digits", "--db", "{d}/s.sqlite", "--no-progress"]
NUMBERS = [
    *[("--lr", v, "--lr") for v in ("nan", "inf", "-inf", "0", "-1", "100", "1e-400")],
    *[("--width", v, "--width") for v in ("nan", "inf", "0", "-1", "1e6", "-0.0")],
    *[("--seed", v, "--seed") for v in ("-1", str(2**63))],
]
for head_name, head in (("float", TRAIN), ("qat", TRAIN_QAT), ("marvin", TRAIN_MV), ("sweep", SWEEP_T)):
    for opt, value, frag in NUMBERS:
        if head_name != "float" and opt == "--seed" and value != "-1":
            continue
        add("train_numbers", f"{head_name}:{opt}={value}", [*head, opt, value], frag)
for opt, value in (("--lr", "x"), ("--width", "wide"), ("--seed", "1.5"), ("--epochs", "0"),
                   ("--batch-size", "0"), ("--epochs", "nan")):
    add("train_numbers", f"float:{opt}={value}", [*TRAIN, opt, value], opt)

# ------------------------------------------------------------------ empty data splits (cifar10)


def _cifar_pickle(n: int) -> bytes:
    return pickle.dumps({b"data": np.zeros((n, 3072), np.uint8), b"labels": [i % 10 for i in range(n)]},
                        protocol=2)


def empty_cifar(train: int = 0, test: int = 0) -> dict:
    return {f"cifar/{f}": _cifar_pickle(test if f == "test_batch" else train) for f in CIFAR_FILES}


CIF = ["--data", "cifar10", "--root", "{d}/cifar"]
for name, argv, files, frags in [
    ("simulate_all_empty", ["simulate", "{p}", *CIF], empty_cifar(), ("cifar10", "empty")),
    ("simulate_test_empty", ["simulate", "{p}", *CIF], empty_cifar(train=4), ("test split", "empty")),
    ("simulate_train_empty", ["simulate", "{p}", *CIF], empty_cifar(test=4), ("train split", "empty")),
    ("simulate_train_split_empty", ["simulate", "{p}", *CIF, "--split", "train"], empty_cifar(test=4),
     ("train split", "empty")),
    ("cost_empty", ["cost", "{p}", *CIF], empty_cifar(), ("cifar10", "empty")),
    ("bounds_empty", ["bounds", "{p}", *CIF], empty_cifar(), ("cifar10", "empty")),
    ("suggest_empty", ["bounds", "{p}", "--suggest", *CIF], empty_cifar(), ("cifar10", "empty")),
    ("train_empty", ["train", "--model", "resnet8", *CIF, "--epochs", "1"], empty_cifar(),
     ("cifar10", "empty")),
    ("train_train_empty", ["train", "--model", "resnet8", *CIF, "--epochs", "1"], empty_cifar(test=4),
     ("train split", "empty")),
    ("train_test_empty", ["train", "--model", "resnet8", *CIF, "--epochs", "1"], empty_cifar(train=4),
     ("test split", "empty")),
    ("sweep_program_empty", ["sweep", "--program", "{p}", *CIF, "--db", "{d}/s.sqlite"], empty_cifar(),
     ("cifar10", "empty")),
    ("sweep_empty", ["sweep", "--model", "resnet8", *CIF, "--db", "{d}/s.sqlite", "--no-progress",
                     "--bits", "8/8"], empty_cifar(), ("cifar10", "empty")),
    ("synthetic_n0", ["simulate", "{p}", "--data", "synthetic:n=0,shape=3x6x6"], {}, ("synthetic", "n")),
]:
    add("empty_split", name, argv, frags, files)

# ------------------------------------------------------------------ --data folder --root DIR


def _png(w: int, h: int, seed: int = 0) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _png_header(w: int, h: int) -> bytes:
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))


PNG6 = memo("png6", lambda: _png(6, 6))
PNG8 = memo("png8", lambda: _png(8, 8))


def tree(extra: dict[str, bytes] | None = None) -> dict:
    """A flat class tree under {d}/img (classes a and b, one 6x6 PNG each) and `extra` files."""
    return {"img/a/1.png": PNG6, "img/b/1.png": PNG6,
            **{f"img/{k}": v for k, v in (extra or {}).items()}}


FOLD = ["simulate", "{p}", "--data", "folder", "--root", "{d}/img"]
for name, argv, files, frags in [
    ("no_root", ["simulate", "{p}", "--data", "folder"], {}, ("folder", "--root")),
    ("root_missing", FOLD, {}, ("img", "does not exist")),
    ("root_is_file", FOLD, {"img": b"x"}, ("img", "not a directory")),
    ("no_class_folders", FOLD, {"img/x.png": PNG6}, ("img", "no class folders")),
    ("only_hidden_class", FOLD, {"img/.git/x.png": PNG6}, ("img", "no class folders")),
    ("empty_class", FOLD, tree({"c/notes.txt": b"x"}), ("img/c", "no images")),
    ("empty_class_dir", FOLD, {**tree(), "img/c": lambda d: (d / "img" / "c").mkdir()},
     ("img/c", "no images")),
    ("corrupt_png", FOLD, tree({"b/2.png": b"\x89PNG junk"}), ("2.png", "not a readable PNG/JPEG")),
    ("truncated_png", FOLD, tree({"b/2.png": PNG6[:40]}), ("2.png", "not a readable")),
    ("text_as_jpg", FOLD, tree({"b/2.jpg": b"hello"}), "not a readable"),
    ("gif_as_png", FOLD, tree({"b/2.png": b"GIF89a" + b"\0" * 20}), ("2.png", "not a readable")),
    ("bomb_header", FOLD, tree({"b/2.png": _png_header(20000, 20000)}), ("2.png", str(2**26))),
    ("bomb_wide", FOLD, tree({"b/2.png": _png_header(2**20, 100)}), ("2.png", "pixels")),
    ("zero_size", FOLD, tree({"b/2.png": _png_header(0, 0)}), "2.png"),
    ("mixed_sizes", FOLD, tree({"b/2.png": PNG8}), ("2.png", "crop=")),
    ("crop_too_big", [*FOLD[:3], "folder:crop=7", *FOLD[4:]], tree(), ("1.png", "smaller than crop=7")),
    ("wrong_shape_for_program", FOLD, {"img/a/1.png": PNG8, "img/b/1.png": PNG8},
     ("(N, 3, 6, 6)", "(2, 3, 8, 8)")),
    ("greyscale_for_rgb_program", [*FOLD[:3], "folder:channels=1", *FOLD[4:]], tree(),
     ("(N, 3, 6, 6)", "(2, 1, 6, 6)")),
    ("spec_resize_word", [*FOLD[:3], "folder:resize=abc", *FOLD[4:]], tree(), ("--data", "resize=abc")),
    ("spec_unknown_option", [*FOLD[:3], "folder:size=3", *FOLD[4:]], tree(), ("--data", "size")),
    ("spec_channels", [*FOLD[:3], "folder:channels=2", *FOLD[4:]], tree(), ("--data", "channels")),
    ("spec_crop_0", [*FOLD[:3], "folder:crop=0", *FOLD[4:]], tree(), ("--data", "crop")),
    ("spec_twice", [*FOLD[:3], "folder:crop=3,crop=4", *FOLD[4:]], tree(), ("--data", "twice")),
    ("spec_huge", [*FOLD[:3], "folder:resize=99999", *FOLD[4:]], tree(), ("--data", "resize")),
    ("spec_no_value", [*FOLD[:3], "folder:resize", *FOLD[4:]], tree(), ("--data", "bad option")),
    ("train_split_flat", [*FOLD, "--split", "train"], tree(), ("img", "no train/")),
    ("split_no_val", FOLD, {"img/train/a/1.png": PNG6}, ("img", "no val/")),
    ("split_classes_differ", FOLD, {"img/train/a/1.png": PNG6, "img/val/b/1.png": PNG6},
     ("different classes", "a")),
    ("train_folder_bad_image", ["train", "--model", "resnet8", "--data", "folder", "--root", "{d}/img",
                                "--epochs", "1"], {"img/train/a/1.png": b"junk",
                                                   "img/val/a/1.png": PNG6},
     ("1.png", "not a readable")),
    ("train_folder_no_root", ["train", "--model", "resnet8", "--data", "folder", "--epochs", "1"], {},
     ("folder", "--root")),
    ("bounds_folder_corrupt", ["bounds", "{p}", "--data", "folder", "--root", "{d}/img"],
     tree({"b/2.png": b"junk"}), "2.png"),
    ("cost_folder_missing", ["cost", "{p}", "--data", "folder", "--root", "{d}/img"], {},
     ("img", "does not exist")),
    ("sweep_program_folder_empty_class", ["sweep", "--program", "{p}", "--data", "folder", "--root",
                                          "{d}/img", "--db", "{d}/s.sqlite"], tree({"c/x.txt": b"x"}),
     ("img/c", "no images")),
]:
    add("folder_data", name, argv, frags, files)

# ------------------------------------------------------------------ bounds --suggest options

BS = ["bounds", "{p}", "--suggest"]
for name, argv, files, frags in [
    ("basis_bad", [*BS, "--basis", "exact"], {}, ("--basis", "bound or observed")),
    ("basis_empty", [*BS, "--basis", ""], {}, "--basis"),
    ("basis_case", [*BS, "--basis", "Bound"], {}, "--basis"),
    ("observed_no_data", [*BS, "--basis", "observed"], {}, ("--basis observed", "--data")),
    ("csv_with_suggest", [*BS, "--csv", "{d}/b.csv"], {}, ("--csv", "--suggest")),
    ("out_dir", [*BS, "--out", "{d}"], {}, "--out"),
    ("out_under_file", [*BS, "--out", "{d}/f/n.toml"], {"f": b"x"}, "--out"),
    ("out_dangling", [*BS, "--out", "{d}/link/n.toml"],
     {"link": lambda d: (d / "link").symlink_to(d / "nowhere")}, "dangling"),
    ("basis_without_suggest", ["bounds", "{p}", "--basis", "bound"], {}, ("--basis", "--suggest")),
    ("out_without_suggest", ["bounds", "{p}", "--out", "{d}/n.toml"], {}, ("--out", "--suggest")),
    ("npu_missing", [*BS, "--npu", "{d}/nope.toml"], {}, "nope.toml"),
    ("npu_bad", [*BS, "--npu", "{d}/npu.toml"], _npu("[array]\nrows = 0"), "array.rows"),
    ("set_bad", [*BS, "--set", "array.rows=nan"], {}, "array.rows"),
    ("set_unknown", [*BS, "--set", "array.bogus=1"], {}, "array.bogus"),
    ("data_unknown", [*BS, "--data", "imagenet"], {}, ("--data", "imagenet")),
    ("program_junk", ["bounds", "{d}/p.safetensors", "--suggest"], {"p.safetensors": b"junk"},
     "p.safetensors"),
    ("limit_zero", [*BS, "--data", SYN, "--limit", "0"], {}, "--limit"),
]:
    add("bounds_suggest", name, argv, frags, files)

# ------------------------------------------------------------------ sweep --program

SP = ["sweep", "--program", "{p}", "--data", SYN, "--db", "{d}/s.sqlite", "--no-progress"]
for name, extra_args, files, frags in [
    ("with_quant", ["--quant", "weight_bits=4,8"], {}, ("--program", "--quant")),
    ("with_method", ["--method", "lsq"], {}, ("--program", "--quant")),
    ("with_bits", ["--bits", "8/8"], {}, ("--program", "--quant")),
    ("with_workers", ["--workers", "2"], {}, ("--program", "--workers")),
    ("with_scheduler", ["--scheduler", "tcp://127.0.0.1:1"], {}, ("--program", "--scheduler")),
    ("with_scheduler_file", ["--scheduler-file", "{d}/s.json"], {}, "--program"),
    ("data_unknown", ["--data", "imagenet"], {}, ("--data", "imagenet")),
    ("data_bad_option", ["--data", "synthetic:bogus=1"], {}, ("--data", "bogus")),
    ("layer_point_no_match", ["--set", "layer[0].match=c,zz*"], {}, ("layer[0].match", "'zz*'",
                                                                     "matches no node")),
    ("layer_base_no_match", ["--npu", "{d}/npu.toml"], _npu('[[layer]]\nmatch = "zz*"'),
     ("layer[0].match", "matches no node")),
    ("layer_point_pe_wider", ["--set", "layer[0].match=c", "--set",
                              "layer[0].precision.pe_acc_bits=16,40"], {}, "pe_acc_bits"),
    ("program_missing", ["--program", "{d}/nope.safetensors"], {}, ("nope.safetensors", "not found")),
    ("program_junk", ["--program", "{d}/p.safetensors"], {"p.safetensors": b"junk" * 10}, "p.safetensors"),
    ("engine_bad", ["--engine", "gpu"], {}, ("--engine", "gpu")),
    ("set_bad_axis", ["--set", "array.clock_mhz=1,nan"], {}, "array.clock_mhz"),
    ("set_unknown", ["--set", "array.bogus=1"], {}, "array.bogus"),
    ("acc_bits_bad", ["--acc-bits", "1:70"], {}, "acc_bits"),
    ("overflow_bad", ["--overflow", "explode"], {}, "overflow"),
    ("db_is_dir", ["--db", "{d}"], {}, "--db"),
    ("store_junk", [], {"s.sqlite": b"junk" * 1000}, "not a results database"),
    ("csv_dir", ["--csv", "{d}"], {}, "--csv"),
]:
    add("sweep_program", name, [*SP, *extra_args], frags, files)

# ------------------------------------------------------------------ simulate --acc-bits / --overflow

SIM = ["simulate", "{p}", "--data", SYN]
for name, extra_args, frags in [
    *[(f"acc_bits={v}", ["--acc-bits", v], "acc_bits") for v in ("0", "1", "-1", "63", "99", str(2**70))],
    *[(f"acc_bits_word={v}", ["--acc-bits", v], "--acc-bits") for v in ("abc", "nan", "16.5", "")],
    *[(f"overflow={v!r}", ["--overflow", v], "precision.overflow") for v in ("explode", "WRAP", "", "1",
                                                                             "wrap,saturate")],
    ("acc_bits_and_set", ["--acc-bits", "16", "--set", "precision.acc_bits=20"], "more than once"),
    ("overflow_and_set", ["--overflow", "wrap", "--set", "precision.overflow=exact"], "more than once"),
    ("acc_bits_below_layer_pe", ["--acc-bits", "12", "--npu", "{d}/npu.toml"], ("layer[0]", "pe_acc_bits")),
    ("acc_bits_too_narrow_exact", ["--acc-bits", "8", "--overflow", "exact"], "node 'c'"),
]:
    files = _npu(_LAYER_C + "precision = { pe_acc_bits = 20 }") if "below_layer" in name else {}
    add("sim_shorthand", name, [*SIM, *extra_args], frags, files)

# ------------------------------------------------------------------ ONNX import: unsupported nodes


def _one_op(op: str, inputs=("cd",), domain: str = "", **attrs) -> Callable[[Path], bytes]:
    def make(d: Path) -> bytes:
        from onnx import helper

        node = helper.make_node(op, list(inputs), ["y"], name="the_node", domain=domain or None,
                                **attrs)
        return qdq_model([node]).SerializeToString()
    return make


for name, make, frags in [
    *[(f"op_{op}", _one_op(op, **attrs), ("'the_node'", f"({op})", "supported"))
      for op, attrs in [("Softmax", {"axis": 1}), ("Sigmoid", {}), ("Tanh", {}), ("Exp", {}),
                        ("Transpose", {"perm": [0, 1, 3, 2]}), ("LRN", {"size": 3}),
                        ("InstanceNormalization", {}), ("Teleport", {}), ("Einsum", {"equation": "ij"}),
                        ("TopK", {})]],
    ("custom_domain", _one_op("Relu", domain="my.ops"), ("'the_node'", "Relu")),
    ("concat_axis2", _one_op("Concat", inputs=("cd", "cd"), axis=2), ("'the_node'", "Concat", "axis")),
    ("asymmetric_weights", lambda d: qdq_model([], outputs=("cd",), w_zp=3).SerializeToString(),
     ("'conv'", "Conv", "zero point")),
    ("float_output", lambda d: qdq_model([], outputs=("c",)).SerializeToString(),
     ("graph output 'c'", "not a quantized")),
]:
    add("onnx_nodes", name, ONNX_ARGV, frags, {"m.onnx": make})


CLASS_COUNTS = collections.Counter(c.cls for c in CASES)
#: the classes added for the checks that landed after the corpus was first written
NEW_CLASSES = ("npu_limits", "pe_acc_bits", "layer_table", "train_numbers", "empty_split",
               "folder_data", "bounds_suggest", "sweep_program", "sim_shorthand", "onnx_nodes")

# ------------------------------------------------------------------ the tests


def _results_csv(path: Path) -> Path:
    pd.DataFrame({"acc_bits": [8, 12, 16, 8], "top1": [0.5, 0.8, 0.9, 0.6],
                  "overflow_mode": ["wrap"] * 2 + ["saturate"] * 2, "status": ["ok"] * 4,
                  "quant_label": ["lsq-W8A8"] * 4}).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("shared")
    save_program(PROGRAM, d / "p.safetensors")
    (d / "s.sqlite").write_bytes(_valid_store()(d))
    return {"p": str(d / "p.safetensors"), "csv": str(_results_csv(d / "r.csv")),
            "db": str(d / "s.sqlite")}


RESULTS: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)


def _write(d: Path, name: str, content) -> None:
    path = d / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if callable(content):
        content = content(d)
        if content is None:
            return
    path.write_bytes(content)


@pytest.fixture
def case_dir(tmp_path):
    """The case's directory: in /dev/shm where there is one (the stores fsync on every open,
    which a busy disk makes slow), else pytest's tmp_path."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    d = Path(tempfile.mkdtemp(prefix="npusim-corpus-", dir=shm))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_exits_2_with_one_line(case, shared, case_dir, capsys, monkeypatch):
    tmp_path = case_dir
    monkeypatch.setenv("NPUSIM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("NPUSIM_DEBUG", raising=False)
    monkeypatch.delenv("NPUSIM_CIFAR10", raising=False)
    monkeypatch.chdir(tmp_path)
    for name, content in case.files.items():
        _write(tmp_path, name, content)
    argv = []
    for a in case.argv:
        for key, value in (("{d}", str(tmp_path)), *((f"{{{k}}}", v) for k, v in shared.items())):
            a = a.replace(key, value)
        argv.append(a)
    rc = main(argv)
    cap = capsys.readouterr()
    lines = (cap.out + cap.err).strip().splitlines()
    ok = (rc == 2 and len(lines) == 1 and lines[0].startswith("error: ")
          and "internal error" not in lines[0]
          and all(f in lines[0].replace(str(tmp_path), "<dir>") for f in case.fragments))
    RESULTS[case.cls]["pass" if ok else "fail"] += 1
    assert rc == 2, (rc, lines)
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ") and "internal error" not in lines[0], lines
    assert "Traceback" not in cap.err
    message = lines[0].replace(str(tmp_path), "<dir>")  # fragments must not match the path
    for f in case.fragments:
        assert f in message, (f, lines[0])
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "PWNED_BY_PICKLE").exists()


def _run(argv: list[str], capsys) -> tuple[int, list[str]]:
    rc = main(argv)
    cap = capsys.readouterr()
    return rc, (cap.out + cap.err).strip().splitlines()


@pytest.mark.parametrize("item", [i for i, _ in NPU_LIMITS] + ["precision.pe_acc_bits=40",
                                                               "layer[0].match=zz*",
                                                               "array.max_weight_bits=4"])
def test_cost_and_simulate_refuse_an_npu_with_the_same_line(item, shared, capsys, monkeypatch,
                                                            tmp_path):
    """`cost` and `simulate` share `check_runnable`: the same NPU, the same one line."""
    monkeypatch.setenv("NPUSIM_CACHE", str(tmp_path / "cache"))
    got = [_run([*head, "--set", item], capsys) for head in
           (["cost", shared["p"]], ["simulate", shared["p"], "--data", SYN])]
    assert got[0][0] == got[1][0] == 2 and len(got[0][1]) == len(got[1][1]) == 1, got
    assert got[0][1] == got[1][1]


def test_corpus_size_by_class():
    """At least 300 cases, and every entry point has its share."""
    table = "\n".join(f"{cls:14s} {n:4d}" for cls, n in sorted(CLASS_COUNTS.items()))
    print(f"\nbad-input corpus by class:\n{table}\n{'total':14s} {len(CASES):4d}")
    assert len(CASES) >= 300
    assert len({c.name for c in CASES}) == len(CASES)
    for cls in ("npu_toml", "set_option", "manifest", "graph", "program_file", "checkpoint",
                "data_dir", "quant_config", "store", "output_path", "where", "energy_table",
                "marvin_config", "onnx_model", "sweep_axes", "marvin_run", *NEW_CLASSES):
        assert CLASS_COUNTS[cls] >= 10, cls


def test_zz_results_by_class():
    """Print how the cases of each class fared (run last in this module; see -s)."""
    lines = [f"{cls:14s} {r['pass']:4d} pass {r['fail']:4d} fail" for cls, r in sorted(RESULTS.items())]
    print("\nbad-input corpus results:\n" + "\n".join(lines))
