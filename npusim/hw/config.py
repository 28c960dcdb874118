"""The virtual NPU's description (docs/npu_file.md): a TOML file validated by pydantic models.

`NPUConfig.load("edge16")` reads a shipped preset, `NPUConfig.from_toml(path)` a user's file;
`config.with_overrides({"precision.acc_bits": 16})` returns a new validated copy. Every error
is a one-line `ConfigError` that names the file (or "overrides") and the key path, e.g.
``edge.toml: precision.acc_bits: Input should be less than or equal to 62 (got 99)``.

The optional, partial ``[requant]`` section pins only the requantization keys the hardware
fixes (`npusim.ir.requant.RequantOverrides`); every other key is the program's own, and the
simulator says (log warning, `Simulator.requant_changes`) where a pinned key differs.

Per-layer precision: ``[[layer]]`` tables, each a ``match`` glob (`fnmatch`, case-sensitive)
on the program's node names and a partial ``precision`` table (``acc_bits``, ``pe_acc_bits``,
``overflow``, ``pe_overflow``, ``acc_overflow``). A node takes the keys of the FIRST table whose
pattern matches it over the body's ``[precision]`` (`NPUConfig.precision_for`); a table's
``overflow`` sets both levels unless the table names ``pe_overflow`` / ``acc_overflow`` too.
``--set`` reaches them by index: ``layer[0].precision.acc_bits=24``, ``layer[0].match=stem*``
(index ``len`` appends a table). A pattern that matches no node of a program is refused when the
program is run (`NPUConfig.check_layers`).

Files are validated strictly (a TOML string is not an integer, a boolean is not a width);
overrides are validated leniently so that command-line strings ("16", "ws") are coerced.
Nothing here imports torch or numba.
"""

from __future__ import annotations

import difflib
import fnmatch
import hashlib
import json
import math
import re
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from npusim.errors import UserError
from npusim.ir.requant import RequantOverrides

__all__ = [
    "ArrayConfig",
    "ConfigError",
    "Dataflow",
    "LayerConfig",
    "LayerPrecision",
    "MemoryConfig",
    "NPUConfig",
    "Overflow",
    "PrecisionConfig",
    "RequantOverrides",
    "TechnologyConfig",
    "WeightStorage",
    "list_presets",
    "parse_set_option",
]

Dataflow = Literal["os", "ws", "is"]
Overflow = Literal["exact", "wrap", "saturate"]
WeightStorage = Literal["packed", "pad4", "pad8"]

#: Widest integer register the requantization product may need (acc_bits + multiplier_bits).
PRODUCT_REGISTER_BITS = 64

_MODEL_CONFIG = ConfigDict(extra="forbid", frozen=True)


class ConfigError(UserError):
    """A bad NPU configuration; the message is always one line naming the file and key path."""

    def __init__(self, message: object) -> None:
        super().__init__(" ".join(str(message).splitlines()))


def _pos_float(default: float, description: str, ge: float, le: float) -> Any:
    return Field(default, ge=ge, le=le, allow_inf_nan=False, description=description)


class ArrayConfig(BaseModel):
    """The MAC array: shape, dataflow, clock and the widest operands its datapath accepts."""

    model_config = _MODEL_CONFIG

    rows: int = Field(16, ge=1, le=4096, description="PE rows (the reduction chunk height for "
                      "ws/is); <= 4096, 16x the largest shipped array (TPU v1, 256x256)")
    cols: int = Field(16, ge=1, le=4096, description="PE columns; <= 4096 as rows")
    dataflow: Dataflow = Field("os", description="output / weight / input stationary")
    clock_mhz: float = _pos_float(500.0, "array clock; 0.001 (1 kHz) to 10,000 (10 GHz, above "
                                  "any CMOS logic clock)", 1e-3, 1e4)
    max_weight_bits: int = Field(8, ge=2, le=16, description="widest weight operand")
    max_input_bits: int = Field(8, ge=2, le=16, description="widest activation operand")


class PrecisionConfig(BaseModel):
    """Accumulator widths and overflow modes at the two levels (docs/architecture.md, section 3)."""

    model_config = _MODEL_CONFIG

    pe_acc_bits: int | None = Field(
        None, ge=2, le=62,
        description="partial-sum width inside the array; left out (or set to none): the same as "
        "acc_bits, so --set precision.acc_bits=N narrows both. It may not exceed acc_bits: the "
        "partial sums feed the accumulator, and a wider one would be cut at the first add "
        "(a file that sets pe_acc_bits explicitly needs it set again when acc_bits is narrowed)")
    acc_bits: int = Field(32, ge=2, le=62, description="accumulator width; 62 leaves the "
                          "64-bit register two bits for the exact-mode carry checks")
    overflow: Overflow = Field("exact", description="default overflow mode for both levels")
    pe_overflow: Overflow | None = Field(None, description="override for the array level")
    acc_overflow: Overflow | None = Field(None, description="override for the accumulator")

    @model_validator(mode="after")
    def _pe_within_acc(self) -> PrecisionConfig:
        if self.pe_acc_bits is None:  # "same as acc_bits"; model_fields_set still says unset
            object.__setattr__(self, "pe_acc_bits", self.acc_bits)
        elif self.pe_acc_bits > self.acc_bits:
            raise ValueError(
                f"precision.pe_acc_bits = {self.pe_acc_bits} is wider than precision.acc_bits = "
                f"{self.acc_bits}: the array's partial sums feed the accumulator; set "
                f"precision.pe_acc_bits <= {self.acc_bits} too (or none: the same as acc_bits)")
        return self

    @property
    def pe_mode(self) -> Overflow:
        """Overflow mode of the partial sums inside the array."""
        return self.pe_overflow if self.pe_overflow is not None else self.overflow

    @property
    def acc_mode(self) -> Overflow:
        """Overflow mode of the accumulator."""
        return self.acc_overflow if self.acc_overflow is not None else self.overflow


class LayerPrecision(BaseModel):
    """The precision keys a ``[[layer]]`` table may set; a key left out is the body's."""

    model_config = _MODEL_CONFIG

    pe_acc_bits: int | None = Field(None, ge=2, le=62, description="partial-sum width")
    acc_bits: int | None = Field(None, ge=2, le=62, description="accumulator width")
    overflow: Overflow | None = Field(None, description="overflow mode of both levels")
    pe_overflow: Overflow | None = Field(None, description="override for the array level")
    acc_overflow: Overflow | None = Field(None, description="override for the accumulator")


class LayerConfig(BaseModel):
    """One ``[[layer]]`` table: the nodes whose names match `match` run at `precision`."""

    model_config = _MODEL_CONFIG

    match: str = Field(min_length=1, description="fnmatch glob on the program's node names")
    precision: LayerPrecision = Field(default_factory=LayerPrecision)

    def applies_to(self, node_name: str) -> bool:
        """Whether this table's pattern matches `node_name` (case-sensitive fnmatch)."""
        return fnmatch.fnmatchcase(node_name, self.match)

    def short(self) -> str:
        """``stem*:acc_bits=24,pe_acc_bits=24`` (for labels and result columns)."""
        keys = ",".join(f"{k}={v}" for k, v in self.precision.model_dump().items()
                        if v is not None)
        return f"{self.match}:{keys or '(body)'}"


class MemoryConfig(BaseModel):
    """On-chip buffers, DRAM bandwidth and how sub-byte weights are stored."""

    model_config = _MODEL_CONFIG

    weight_sram_kib: float = _pos_float(64.0, "weight buffer size; 1 byte (2^-10 KiB) "
                                        "to 2^26 KiB = 64 GiB (Cerebras WSE-3: 44 GB)",
                                        2.0**-10, 2.0**26)
    activation_sram_kib: float = _pos_float(64.0, "activation buffer size; as weight_sram_kib",
                                            2.0**-10, 2.0**26)
    accumulator_sram_kib: float = _pos_float(16.0, "accumulator buffer size; as weight_sram_kib",
                                             2.0**-10, 2.0**26)
    dram_bandwidth_bytes_per_cycle: float = _pos_float(
        16.0, "DRAM bytes per array cycle; 1/1024 to 2^20 (HBM3E's ~5 TB/s is 5,000 B/cycle "
        "at 1 GHz; larger is an 'unlimited' what-if)", 2.0**-10, 2.0**20)
    sram_word_bits: int = Field(64, ge=8, le=8192, description="SRAM access width; 8 to 8192 "
                                "bits (a 4096-column array of 2-bit operands)")
    weight_storage: WeightStorage = Field(
        "packed", description="sub-byte weights packed, or padded to 4 / 8 bits")


class TechnologyConfig(BaseModel):
    """Process node, supply and the energy table the cost model uses (`npusim.cost`)."""

    model_config = _MODEL_CONFIG

    node_nm: float = _pos_float(45.0, "process node; 1 to 1000 nm (no logic outside them)",
                                1.0, 1000.0)
    supply_v: float = _pos_float(0.9, "supply voltage; 0.1 to 5 V (near-threshold to 5 V "
                                 "CMOS)", 0.1, 5.0)
    energy_table: str = Field(
        "horowitz45", min_length=1,
        description="a shipped table's name or a path to a TOML table (relative to the cwd)")
    # Keys are "component.action"; the cost model checks them against its table.
    energy_overrides: dict[str, float] = Field(
        default_factory=dict, description="per-entry energy overrides")

    def __hash__(self) -> int:  # the dict field defeats pydantic's frozen hash
        return hash(_canonical_json(self))


def _canonical_json(model: BaseModel) -> str:
    return json.dumps(model.model_dump(mode="json"), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True, allow_nan=False)


class NPUConfig(BaseModel):
    """A virtual NPU: every section has defaults, so a TOML file gives only what differs."""

    model_config = _MODEL_CONFIG

    name: str = Field(min_length=1)
    description: str = ""
    array: ArrayConfig = Field(default_factory=ArrayConfig)
    precision: PrecisionConfig = Field(default_factory=PrecisionConfig)
    requant: RequantOverrides = Field(  # type: ignore[valid-type]
        default_factory=RequantOverrides,
        description="requantization keys this NPU pins (npusim.ir.requant.RequantSpec); a key "
        "left out is the program's own, so a section-less file runs a program as exported")
    memory: MemoryConfig = Field(default_factory=MemoryConfig)
    technology: TechnologyConfig = Field(default_factory=TechnologyConfig)
    layer: list[LayerConfig] = Field(
        default_factory=list, description="per-layer precision ([[layer]] tables); the first "
        "table whose match glob fits a node name wins, the body's [precision] elsewhere")

    @model_validator(mode="after")
    def _check_product_width(self) -> NPUConfig:
        # Only when the NPU pins the multiplier width (else the simulator checks each node's
        # product against the program's width when it plans the program).
        rq, acc = self.requant, self.precision.acc_bits
        if (rq.multiplier_bits is not None and rq.scale_mode in (None, "fixed")
                and acc + rq.multiplier_bits > PRODUCT_REGISTER_BITS):
            # The message names both key paths: a model-level error has no single loc.
            raise ValueError(
                f"precision.acc_bits + requant.multiplier_bits = {acc} + {rq.multiplier_bits}"
                f" = {acc + rq.multiplier_bits} bits: the fixed-point requant product "
                f"acc * M0 would not fit a {PRODUCT_REGISTER_BITS}-bit register "
                f"(narrow one of them, or use requant.scale_mode = \"pow2\" / \"float\")")
        return self

    @model_validator(mode="after")
    def _check_layer_widths(self) -> NPUConfig:
        for i in range(len(self.layer)):
            self._layer_precision(i)  # a table's effective widths obey the body's rules
        return self

    def __hash__(self) -> int:
        return hash(_canonical_json(self))

    # ----------------------------------------------------------------- loading

    @classmethod
    def from_toml(cls, path: str | Path) -> NPUConfig:
        """Read and strictly validate a TOML file; any problem is a one-line ConfigError."""
        source = str(path)
        try:
            raw = Path(path).read_bytes()
        except FileNotFoundError:
            raise ConfigError(
                f"{source}: no such file (shipped presets: {', '.join(list_presets())})"
            ) from None
        except IsADirectoryError:
            raise ConfigError(f"{source}: is a directory, not a TOML file") from None
        except OSError as exc:
            raise ConfigError(f"{source}: cannot read ({exc.strerror or exc})") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{source}: not UTF-8 text (byte {exc.start})") from None
        return cls.from_toml_str(text, source=source)

    @classmethod
    def from_toml_str(cls, text: str, source: str = "<string>") -> NPUConfig:
        """Parse TOML text; `source` names it in error messages."""
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            # tomllib's message carries "(at line L, column C)".
            raise ConfigError(f"{source}: TOML syntax error: {exc}") from None
        except RecursionError:
            raise ConfigError(f"{source}: TOML arrays or tables nested too deeply") from None
        try:
            return cls.model_validate(data, strict=True)
        except ValidationError as exc:
            raise _config_error(exc, source) from None

    @classmethod
    def preset(cls, name: str) -> NPUConfig:
        """A configuration shipped in `npusim/presets/`."""
        names = list_presets()
        if name not in names:
            raise ConfigError(f"unknown preset {name!r} (shipped presets: {', '.join(names)})")
        text = _presets_dir().joinpath(f"{name}.toml").read_text(encoding="utf-8")
        return cls.from_toml_str(text, source=f"presets/{name}.toml")

    @classmethod
    def ideal(cls, requant: Mapping[str, object] | None = None) -> NPUConfig:
        """An NPU that computes a program exactly: unbounded (``exact``, 62-bit) accumulators, a
        16-bit datapath (the widest a program may use) and the program's own requant settings,
        or the keys of `requant` pinned over them. The simulator still checks every
        requantization product against the 64-bit register, node by node."""
        base = cls(name="ideal", description="exact accumulators, 16-bit datapath",
                   array=ArrayConfig(max_weight_bits=16, max_input_bits=16),
                   requant=RequantOverrides(**dict(requant or {})))
        # 62-bit accumulators with a 32-bit M0 exceed the config-level 64-bit product check,
        # which exact accumulators do not need: their requantized sums are bounded per node
        return base.model_copy(update={"precision": PrecisionConfig(
            pe_acc_bits=62, acc_bits=62, overflow="exact")})

    @classmethod
    def load(cls, name_or_path: str | Path) -> NPUConfig:
        """A preset name (``edge16``) or a path to a TOML file (``my/npu.toml``)."""
        text = str(name_or_path)
        looks_like_path = (isinstance(name_or_path, Path) or text.endswith(".toml")
                           or "/" in text or "\\" in text)
        if not looks_like_path:
            if text in list_presets():
                return cls.preset(text)
            if not Path(text).is_file():
                raise ConfigError(f"{text}: neither a shipped preset nor a file "
                                  f"(shipped presets: {', '.join(list_presets())})")
        return cls.from_toml(name_or_path)

    # --------------------------------------------------------------- overrides

    def with_overrides(self, overrides: Mapping[str, object]) -> NPUConfig:
        """A new validated config with dotted key paths replaced; strings are coerced.

        ``{"precision.acc_bits": "16", "array.dataflow": "ws"}``; the string "none" clears an
        optional field (``precision.pe_overflow``); ``technology.energy_overrides.<key>`` sets
        one energy entry (its key may itself contain dots).
        """
        data = self.model_dump()
        if "pe_acc_bits" not in self.precision.model_fields_set:
            del data["precision"]["pe_acc_bits"]  # still unset: "the same as acc_bits"
        for key, value in overrides.items():
            _set_path(data, str(key), value)
        try:
            return type(self).model_validate(data)
        except ValidationError as exc:
            raise _config_error(exc, "overrides") from None

    # ----------------------------------------------------------------- writing

    def to_toml(self) -> str:
        """TOML text that `from_toml` reads back into an equal config."""
        dump = self.model_dump(mode="json")
        lines = [f"# npusim NPU configuration (config_hash {self.config_hash()})"]
        sections = []
        for key, value in dump.items():
            if isinstance(value, dict) and key in _SECTIONS:
                sections.append((key, value))
            elif key == "layer":
                continue
            elif value is not None:
                lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
        for key, table in sections:
            if all(v is None for v in table.values()):
                continue  # e.g. a [requant] that pins nothing
            lines.append("")
            lines.append(f"[{_toml_key(key)}]")
            for sub, value in table.items():
                if value is not None:  # TOML has no null; None is every such field's default
                    lines.append(f"{_toml_key(sub)} = {_toml_value(value)}")
        lines.extend(layer_tables_toml(dump["layer"]))
        return "\n".join(lines) + "\n"

    def config_hash(self) -> str:
        """First 16 hex digits of the SHA-256 of the canonical JSON dump (name included).

        An `energy_table` path is hashed as written, not by the contents of the file.
        """
        return hashlib.sha256(_canonical_json(self).encode("ascii")).hexdigest()[:16]

    # ------------------------------------------------------------ per-layer precision

    def layer_index(self, node_name: str) -> int | None:
        """Index of the first ``[[layer]]`` table matching `node_name`, or None (the body)."""
        return next((i for i, t in enumerate(self.layer) if t.applies_to(node_name)), None)

    def precision_for(self, node_name: str) -> PrecisionConfig:
        """The precision node `node_name` runs at: the body's with the first matching
        ``[[layer]]`` table's keys laid over it."""
        i = self.layer_index(node_name)
        return self.precision if i is None else self._layer_precision(i)

    def _layer_precision(self, i: int) -> PrecisionConfig:
        """Table `i`'s keys over the body's precision, validated as one: a table that sets
        acc_bits alone keeps pe_acc_bits "the same as acc_bits" when the body leaves it so."""
        upd = {k: v for k, v in self.layer[i].precision.model_dump().items() if v is not None}
        if "overflow" in upd:  # a layer's overflow sets both levels unless it names them
            upd.setdefault("pe_overflow", None)
            upd.setdefault("acc_overflow", None)
        body = self.precision
        data = {**body.model_dump(), **upd}
        if "pe_acc_bits" not in upd and "pe_acc_bits" not in body.model_fields_set:
            data["pe_acc_bits"] = None
        try:
            return PrecisionConfig.model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            msg = str(err.get("msg", exc)).removeprefix("Value error, ")
            raise ValueError(f"layer[{i}] ({self.layer[i].match!r}): {msg}") from None

    def check_layers(self, node_names: list[str] | tuple[str, ...], source: str = "npu") -> None:
        """Refuse (one-line ConfigError) a ``[[layer]]`` pattern that matches no node."""
        for i, t in enumerate(self.layer):
            if not any(t.applies_to(n) for n in node_names):
                shown = ", ".join(list(node_names)[:8]) + (", ..." if len(node_names) > 8 else "")
                raise ConfigError(f"{source}: layer[{i}].match {t.match!r} matches no node of "
                                  f"the program (nodes: {shown})")


_SECTIONS = {name for name, f in NPUConfig.model_fields.items()
             if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)}


def layer_tables_toml(tables: list[Mapping[str, Any]]) -> list[str]:
    """TOML lines of ``[[layer]]`` tables (dicts of `LayerConfig` fields; None keys left out)."""
    lines = []
    for t in tables:
        prec = {k: v for k, v in dict(t.get("precision") or {}).items() if v is not None}
        lines += ["", "[[layer]]", f"match = {_toml_str(str(t['match']))}",
                  f"precision = {_toml_value(prec)}"]
    return lines


# --------------------------------------------------------------------- presets

def _presets_dir() -> Any:
    return resources.files("npusim").joinpath("presets")


def list_presets() -> list[str]:
    """Names of the shipped presets, sorted."""
    try:
        entries = list(_presets_dir().iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(e.name[:-5] for e in entries if e.name.endswith(".toml") and e.is_file())


def parse_set_option(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``["precision.acc_bits=16", ...]`` (repeated ``--set`` options) -> an overrides dict."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        key = key.strip()
        if not sep or not key or any(not p for p in key.split(".")) or re.search(r"\s", key):
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. precision.acc_bits=16")
        if key in out:
            raise ConfigError(f"--set {item!r}: {key} is given more than once")
        out[key] = value.strip()
    return out


# ---------------------------------------------------------------------- errors

def _model_at(parts: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class found by following `parts` from NPUConfig (None if not a section)."""
    cls: type[BaseModel] = NPUConfig
    item: type[BaseModel] | None = None  # the model of a list field's items, after its name
    for part in parts:
        if isinstance(part, int) and item is not None:
            cls, item = item, None
            continue
        field = cls.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return None
        ann = field.annotation
        args = getattr(ann, "__args__", ())
        if getattr(ann, "__origin__", None) is list and args and issubclass(args[0], BaseModel):
            item = args[0]
            continue
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        cls = ann
    return None if item is not None else cls


def _loc_str(loc: tuple[Any, ...]) -> str:
    out = ""
    for p in loc:
        if not isinstance(p, str):
            out += f"[{p}]"  # a list index: layer[0]
            continue
        text = p if re.fullmatch(r"[A-Za-z0-9_-]+", p) else json.dumps(p)
        out += f".{text}" if out else text
    return out


def _suggest(parts: tuple[Any, ...]) -> str:
    cls = _model_at(parts[:-1])
    if cls is None or not isinstance(parts[-1], str):
        return ""
    close = difflib.get_close_matches(parts[-1], list(cls.model_fields), n=1)
    if close:
        return f" (did you mean {_loc_str((*parts[:-1], close[0]))!r}?)"
    return f" (known keys: {', '.join(cls.model_fields)})"


def _got(value: Any) -> str:
    text = repr(value)
    return f" (got {text if len(text) <= 60 else text[:57] + '...'})"


def _config_error(exc: ValidationError, source: str) -> ConfigError:
    """First pydantic error -> ``source: key.path: message (got value)``."""
    errors = exc.errors()
    err = errors[0]
    loc = tuple(err["loc"])
    kind, msg, value = err["type"], err["msg"], err.get("input")
    if kind == "extra_forbidden":
        msg = "unknown key" + _suggest(loc)
    elif kind == "missing":
        msg = "missing key"
    elif kind == "model_type":
        msg = f"expected a table of keys ([{_loc_str(loc)}] section)" + _got(value)
    elif kind == "value_error":
        msg = msg.removeprefix("Value error, ")
    else:
        msg += _got(value)
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    where = f"{_loc_str(loc)}: " if loc else ""
    return ConfigError(f"{source}: {where}{msg}{more}")


def _set_path(data: dict[str, Any], key: str, value: object) -> None:
    """Put `value` at dotted `key` inside a model dump, refusing paths the model lacks."""
    m = re.fullmatch(r"layer\[(\d+)\]\.(.+)", key)
    if m:
        _set_layer(data, key, int(m.group(1)), m.group(2), value)
        return
    if key == "layer" or key.startswith(("layer.", "layer[")):
        raise ConfigError(f"overrides: {key}: a [[layer]] table is set by index: "
                          f"layer[N].match=GLOB or layer[N].precision.KEY=VALUE")
    parts = key.split(".")
    node, cls = data, NPUConfig
    for i, part in enumerate(parts):
        field = cls.model_fields.get(part)
        if field is None:
            raise ConfigError(f"overrides: {key}: unknown key" + _suggest(tuple(parts[:i + 1])))
        rest = parts[i + 1:]
        sub = _model_at(tuple(parts[:i + 1]))
        if sub is not None:
            if not rest:
                raise ConfigError(f"overrides: {key}: is a section; set one of its keys "
                                  f"(e.g. {key}.{next(iter(sub.model_fields))})")
            node, cls = node[part], sub
            continue
        if rest:
            if isinstance(node.get(part), dict):  # a free-form table: the rest is one key
                node[part] = {**node[part], ".".join(rest): value}
                return
            raise ConfigError(f"overrides: {key}: unknown key "
                              f"({'.'.join(parts[:i + 1])} is not a section)")
        if (isinstance(value, str) and value.strip().lower() in ("none", "null")
                and field.default is None and not field.is_required()):
            value = None
        node[part] = value
        return


def _set_layer(data: dict[str, Any], key: str, index: int, rest: str, value: object) -> None:
    """``layer[N].match`` / ``layer[N].precision.KEY``; index ``len`` appends a table."""
    tables = data.setdefault("layer", [])
    if index > len(tables):
        raise ConfigError(f"overrides: {key}: there are {len(tables)} [[layer]] tables "
                          f"(layer[{len(tables)}] adds one)")
    if index == len(tables):
        tables.append({"precision": {}})
    table = tables[index]
    parts = rest.split(".")
    if parts == ["match"]:
        table["match"] = value
        return
    fields = LayerPrecision.model_fields
    if len(parts) == 2 and parts[0] == "precision" and parts[1] in fields:
        if isinstance(value, str) and value.strip().lower() in ("none", "null"):
            value = None
        table["precision"] = {**(table.get("precision") or {}), parts[1]: value}
        return
    close = difflib.get_close_matches(rest, ["match", *(f"precision.{f}" for f in fields)], n=1)
    hint = f" (did you mean 'layer[{index}].{close[0]}'?)" if close else \
        f" (known: match, precision.{{{', '.join(fields)}}})"
    raise ConfigError(f"overrides: {key}: unknown key{hint}")


# ------------------------------------------------------------------ TOML writer

def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_str(key)


def _toml_str(text: str) -> str:
    # JSON string escapes are valid TOML basic-string escapes; DEL must be escaped too.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"cannot write non-finite number {value!r} to TOML")
        return repr(value)
    if isinstance(value, str):
        return _toml_str(value)
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = ", ".join(f"{_toml_key(str(k))} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + items + " }"
    raise ConfigError(f"cannot write {type(value).__name__} value {value!r} to TOML")
