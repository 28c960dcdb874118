"""Generate the reference docs from the schemas they describe, so they never go stale.

``python -m npusim.hw.docgen docs`` writes ``docs/npu_file.md`` (from the `NPUConfig` pydantic
model: every field, its unit, default, constraints and description) and
``docs/program_format.md`` (from the op table `npusim.ir.ops.OPS`); `tests/test_docs.py` checks
the committed files equal the output. Both walk the schema generically: a new section, field
or op appears after re-running.
"""

from __future__ import annotations

import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from npusim.hw.config import NPUConfig, list_presets
from npusim.io import atomic_write_bytes
from npusim.ir import ops
from npusim.ir.program import FORMAT_NAME, FORMAT_VERSION, METADATA_KEY
from npusim.ir.requant import RequantSpec

__all__ = ["keys_markdown", "npu_file_markdown", "program_format_markdown", "write_docs"]

#: Units read off a field name's suffix (the codebase's unit-bearing snake_case names).
_UNIT_SUFFIXES = (("_bytes_per_cycle", "bytes/cycle"), ("_bits", "bits"), ("_mhz", "MHz"),
                  ("_kib", "KiB"), ("_nm", "nm"), ("_v", "V"), ("_pj", "pJ"), ("_uj", "µJ"),
                  ("_bytes", "bytes"), ("_cycles", "cycles"))
_BOUNDS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<", "min_length": "length >=",
           "max_length": "length <=", "multiple_of": "multiple of"}


def _unit(name: str, info: FieldInfo) -> str:
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    if "unit" in extra:
        return str(extra["unit"])
    unit = next((u for suffix, u in _UNIT_SUFFIXES if name.endswith(suffix)), "")
    return unit or ("bits" if ", bits" in (info.description or "") else "")


def _strip_optional(ann: Any) -> tuple[Any, bool]:
    args = typing.get_args(ann)
    if typing.get_origin(ann) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]), True
    return ann, False


def _type_text(ann: Any) -> str:
    ann, optional = _strip_optional(ann)
    while typing.get_origin(ann) is typing.Annotated:
        ann = typing.get_args(ann)[0]
    origin = typing.get_origin(ann)
    if origin is Literal:
        text = " | ".join(f'`"{a}"`' if isinstance(a, str) else f"`{a}`"
                             for a in typing.get_args(ann))
    elif origin in (dict, typing.Dict):
        k, v = typing.get_args(ann) or (str, Any)
        text = f"table of {_type_text(k)} → {_type_text(v)}"
    elif origin in (list, typing.List, tuple):
        text = "array of " + ", ".join(_type_text(a) for a in typing.get_args(ann) if a is not ...)
    elif isinstance(ann, type) and issubclass(ann, BaseModel):
        text = "table"
    elif isinstance(ann, type):
        text = {"int": "integer", "float": "number", "str": "string", "bool": "boolean"}.get(
            ann.__name__, ann.__name__)
    else:
        text = str(ann)
    return text + (" or none" if optional else "")


def _constraints(info: FieldInfo) -> str:
    parts = []
    for meta in info.metadata:
        for attr, sym in _BOUNDS.items():
            value = getattr(meta, attr, None)
            if value is not None:
                parts.append(f"{sym} {value}")
        if getattr(meta, "allow_inf_nan", None) is False:
            parts.append("finite")
    return ", ".join(parts)


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "**required**"
    value = info.get_default(call_default_factory=True)
    if value is None:
        return "none"
    if isinstance(value, BaseModel):
        return "(section)"
    if isinstance(value, str):
        return f'`"{value}"`' if value else '`""`'
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, (dict, list)) and not value:
        return "`{}`" if isinstance(value, dict) else "`[]`"
    return f"`{value}`"


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _model_of(ann: Any) -> tuple[type[BaseModel] | None, bool]:
    """(the model class a field holds, whether it is an array of them)."""
    ann, _ = _strip_optional(ann)
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann, False
    if typing.get_origin(ann) in (list, tuple):
        args = [a for a in typing.get_args(ann) if a is not ...]
        if len(args) == 1 and isinstance(args[0], type) and issubclass(args[0], BaseModel):
            return args[0], True
    return None, False


def _field_rows(model: type[BaseModel]) -> list[str]:
    rows = ["| key | type | unit | default | constraints | description |",
            "|---|---|---|---|---|---|"]
    for name, info in model.model_fields.items():
        if _model_of(info.annotation)[0] is not None:
            continue
        rows.append("| " + " | ".join(_cell(c) for c in (
            f"`{name}`", _type_text(info.annotation), _unit(name, info), _default(info),
            _constraints(info), info.description or "")) + " |")
    return rows


def _sections(model: type[BaseModel], path: str, out: list[str]) -> None:
    for name, info in model.model_fields.items():
        sub, many = _model_of(info.annotation)
        if sub is None:
            continue
        key = f"{path}.{name}" if path else name
        out += ["", f"### `[[{key}]]` (array of tables)" if many else f"### `[{key}]`", ""]
        doc = info.description or (sub.__doc__ or "").strip().split("\n\n")[0]
        if doc:
            out += [" ".join(doc.split()), ""]
        out += _field_rows(sub)
        _sections(sub, key, out)


_NPU_INTRO = """\
# The NPU file

<!-- generated by `python -m npusim.hw.docgen docs` from npusim/hw/config.py; do not edit by
hand: tests/test_docs.py fails when this file differs from the generated one -->

An NPU file is a TOML file that describes a virtual NPU: its MAC array, accumulator widths and
overflow modes, the requantization keys it pins, its memories and the energy table its cost
uses. Every section and key has a default, so a file gives only what differs from them. Pass it
wherever a command takes `--npu` (a shipped preset's name or a path), and change single keys
on the command line with `--set section.key=value` (repeatable):

```text
npusim presets
npusim simulate PROGRAM --npu edge16 --set precision.acc_bits=16 --set precision.overflow=wrap
```

In Python: `NPUConfig.load("edge16")`, `NPUConfig.from_toml(path)`,
`config.with_overrides({"precision.acc_bits": 16})`, `config.to_toml()`.

Files are validated strictly (a TOML string is not an integer; an unknown key is an error that
suggests the closest known key); `--set` values are coerced from text, and `none` clears an
optional key. Every error is one line naming the file (or `overrides`) and the key path, and
the command exits with status 2.

Shipped presets (`npusim/presets/`): {presets}. Each commented line in a preset names the
publication or design choice behind its number.
"""


def keys_markdown(model: type[BaseModel]) -> list[str]:
    """Markdown tables of every key of a TOML schema: the top level, then each section
    (``[name]``) or array of tables (``[[name]]``), recursively."""
    out = ["### top level", ""] + _field_rows(model)
    _sections(model, "", out)
    return out


def npu_file_markdown() -> str:
    """The NPU file reference (markdown), generated from `NPUConfig`."""
    out = [_NPU_INTRO.replace("{presets}", ", ".join(f"`{p}`" for p in list_presets())).rstrip(),
           "", "## Keys", ""]
    out += keys_markdown(NPUConfig)
    example = NPUConfig.load("edge16").with_overrides({"precision.acc_bits": 16,
                                                       "precision.overflow": "wrap"})
    out += ["", "## Example", "",
            "The `edge16` preset with a 16-bit wrapping accumulator, as `config.to_toml()` "
            "writes it:", "", "```toml", example.to_toml().rstrip(), "```", ""]
    return "\n".join(out)


# ------------------------------------------------------------------- program format

#: What each op computes (the op table declares its interface; this is its meaning).
_PROGRAM_INTRO = """\
# The IntegerProgram file

<!-- generated by `python -m npusim.hw.docgen docs` from npusim/ir/program.py and the op
table npusim/ir/ops.py; do not edit by hand: tests/test_docs.py checks it -->

An IntegerProgram is the one interface between training (`quantize`, `npusim train --export`,
`npusim import`) and the simulator. It is a single safetensors
file: named integer arrays, and a JSON manifest stored as a string in the safetensors header's
`__metadata__` under the key `"{key}"`. Nothing is unpickled; the header is read and checked
before any tensor is. Loading (`npusim.ir.program.load_program`) validates everything below and
names the file, node and field of the first problem (exit status 2 on the command line);
writing (`save_program`) validates, then writes atomically.

```text
npusim inspect PROGRAM     # one row per node: op, shapes, bits, scales, shifts, MACs
```

## Manifest

| key | type | meaning |
|---|---|---|
| `format` | string | always `"{name}"` |
| `version` | integer | format version, currently `{version}` |
| `producer` | table | who wrote the file (tool, model, data set, ...); free-form |
| `quant_config` | table | the training library's `QuantConfig` the program was trained with; free-form |
| `requant` | table | the requantization the multipliers were derived with: every key of the table below |
| `input` | string | name of the input tensor (C, H, W): raw uint8 pixels for trained programs |
| `outputs` | array of strings | names of the output tensors (the logits) |
| `meta` | table | free-form (accuracy measured at export, ...) |
| `tensors` | table | tensor name → tensor spec (below) |
| `nodes` | array of tables | the graph, in execution order (below) |

### Tensor spec

| key | type | meaning |
|---|---|---|
| `shape` | array of integers | shape without the batch dimension |
| `bits` | integer | bit width of the integer values |
| `signed` | boolean | two's complement (true) or unsigned |
| `scale` | number or array | real value = scale · (q − zero_point); per output channel for weights |
| `zero_point` | integer | the integer that represents real 0 |

### Node

| key | type | meaning |
|---|---|---|
| `name` | string | unique node name; its arrays are stored as `<name>.<array>` |
| `op` | string | one of the ops below |
| `inputs` | array of strings | input tensor names (the op fixes how many) |
| `output` | string | output tensor name |
| `attrs` | table | the op's attributes (below); a missing optional one takes its default |

### Arrays

Weights (`<node>.weight`) and biases (`<node>.bias`) have tensor specs of the same name (bits,
sign, per-channel scales) and are stored in the smallest of
int8/int16/int32/int64 (uint8 for unsigned widths up to 8) that holds their declared bits, and
every value is checked against the declared range. A requantizing node also stores its integer
multipliers and shifts (`<node>.multiplier`, `<node>.shift`, one per output channel), derived
from the real scales by the `requant` settings; the simulator re-derives them when an NPU file
pins other `[requant]` keys.

### `requant`

| key | type | default | constraints | description |
|---|---|---|---|---|
"""


def _attr_text(a: ops.Attr) -> str:
    kind = {"int": "int", "bool": "bool", "clamp": "[lo, hi]"}[a.kind]
    rng = ""
    if a.kind == "int" and a.lo is not None:
        rng = f" in [{a.lo}, {a.hi}]" if a.hi is not None else f" >= {a.lo}"
    if a.required:
        dflt = ", required"
    elif a.default is None:
        dflt = ", optional"
    else:
        dflt = f", default {str(a.default).lower() if isinstance(a.default, bool) else a.default}"
    return f"`{a.name}` ({kind}{rng}{dflt})"


def program_format_markdown() -> str:
    """The IntegerProgram format reference (markdown), generated from the op table."""
    intro = (_PROGRAM_INTRO.replace("{key}", METADATA_KEY).replace("{name}", FORMAT_NAME)
             .replace("{version}", str(FORMAT_VERSION)))
    out = [intro.rstrip()]
    for name, info in RequantSpec.model_fields.items():
        out.append("| " + " | ".join(_cell(c) for c in (
            f"`{name}`", _type_text(info.annotation), _default(info), _constraints(info),
            info.description or "")) + " |")
    out += ["", "## Ops", "",
            "From `npusim.ir.ops.OPS`. *unit*: where the cost model runs the op (`array`: the "
            "MAC array as a GEMM; `vector`: the vector unit; `none`: a view). *requantizes*: "
            "whether its outputs pass through a per-channel multiplier and shift (a node can "
            "turn it off with `requant = false` where the op has that attribute). A `clamp` "
            "attribute gives the output's integer range and is required when the node "
            "requantizes. `acc_bits_target` records the accumulator width the layer was "
            "trained for (A2Q).", "",
            "| op | inputs | arrays | attributes | unit | requantizes | semantics |",
            "|---|---|---|---|---|---|---|"]
    for name, op in ops.OPS.items():
        out.append("| " + " | ".join(_cell(c) for c in (
            f"`{name}`", str(op.inputs), ", ".join(f"`{a}`" for a in op.arrays) or "—",
            ", ".join(_attr_text(a) for a in op.attrs) or "—", op.unit,
            "yes" if op.real_multipliers is not None else "no",
            op.doc)) + " |")
    out.append("")
    return "\n".join(out)


#: File name under the docs folder -> generator.
GENERATED = {"npu_file.md": npu_file_markdown, "program_format.md": program_format_markdown}


def write_docs(folder: str | Path) -> list[Path]:
    """Write every generated doc into `folder`; returns the paths."""
    paths = []
    for name, make in GENERATED.items():
        path = Path(folder) / name
        atomic_write_bytes(path, make().encode("utf-8"))
        paths.append(path)
    return paths


def main(argv: list[str]) -> int:
    """``python -m npusim.hw.docgen [FOLDER]`` (default ``docs``)."""
    for path in write_docs(argv[0] if argv else "docs"):
        print(path)  # noqa: T201 - a script's output
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
