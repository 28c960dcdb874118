"""Versioned energy-per-action tables (docs/npu_file.md): a TOML file validated by pydantic.

A table has one entry per (component, action), e.g. ``int_multiplier.multiply`` or
``sram.access``, each with a unit, a value or fit coefficients, and a source line. The shipped
default, ``horowitz45`` (``npusim/energy/horowitz45.toml``), holds Horowitz's ISSCC 2014 45 nm
figures fitted in bits the way QKeras QTools does. A user's table is validated as strictly as
the NPU configuration: any problem is one ``EnergyTableError`` line naming the file and the key
path. Per-entry overrides (``NPUConfig.technology.energy_overrides``) are validated the same
way and recorded in the table (``table.overrides``), in ``table.sources()`` and in every cost
row.

Nothing here imports torch or numba.
"""

from __future__ import annotations

import difflib
import math
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Mapping

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from npusim.errors import UserError

__all__ = [
    "ALIASES",
    "ENTRY_SPECS",
    "EnergyEntry",
    "EnergyTable",
    "EnergyTableError",
    "list_energy_tables",
    "load_energy_table",
    "table_for_npu",
]

Model = Literal["constant", "linear", "quadratic", "loglog"]

#: Every entry a table must have: its unit and the models it may use. The cost model charges
#: exactly these actions, so a table may neither omit one nor add an unknown one.
ENTRY_SPECS: dict[str, tuple[str, frozenset[str]]] = {
    "int_adder.add": ("pJ/op", frozenset({"constant", "linear"})),
    "int_multiplier.multiply": ("pJ/op", frozenset({"constant", "linear", "quadratic"})),
    "fp32_adder.add": ("pJ/op", frozenset({"constant"})),
    "fp32_multiplier.multiply": ("pJ/op", frozenset({"constant"})),
    "register.write": ("pJ/bit", frozenset({"constant"})),
    "comparator.compare": ("pJ/op", frozenset({"constant", "linear"})),
    "shifter.shift": ("pJ/op", frozenset({"constant", "linear"})),
    "sram.access": ("pJ/bit", frozenset({"constant", "loglog"})),
    "dram.access": ("pJ/bit", frozenset({"constant"})),
    "leakage.pe": ("mW/PE", frozenset({"constant"})),
    "leakage.sram": ("mW/KiB", frozenset({"constant"})),
}

#: Short names accepted by `EnergyTable.energy` (``table.energy("int_mul", bw=4, ba=4)``).
ALIASES: dict[str, str] = {
    "int_add": "int_adder.add",
    "int_mul": "int_multiplier.multiply",
    "fp32_add": "fp32_adder.add",
    "fp32_mul": "fp32_multiplier.multiply",
    "register": "register.write",
    "compare": "comparator.compare",
    "shift": "shifter.shift",
    "sram": "sram.access",
    "dram": "dram.access",
    "leakage_pe": "leakage.pe",
    "leakage_sram": "leakage.sram",
}

# The parameters each model reads; a table giving another one is an error (not silently unused).
_MODEL_PARAMS: dict[str, tuple[str, ...]] = {
    "constant": ("value",),
    "linear": ("value",),
    "quadratic": ("c2", "c1"),
    "loglog": ("points",),
}
_ALL_PARAMS = ("value", "c2", "c1", "points")

_FROZEN = ConfigDict(extra="forbid", frozen=True)


class EnergyTableError(UserError):
    """A bad energy table or override; the message is one line naming the file and key path."""

    def __init__(self, message: object) -> None:
        super().__init__(" ".join(str(message).splitlines()))


def _energy(description: str) -> Any:
    return Field(None, ge=0, allow_inf_nan=False, description=description)


def _size_key(key: str) -> float:
    """A loglog point / node-scaling key ("8", "1024", "28.0") as a positive number."""
    try:
        value = float(key)
    except ValueError:
        raise ValueError(f"key {key!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"key {key!r} must be a positive number")
    return value


class EnergyEntry(BaseModel):
    """One (component, action): unit, model, its parameters and where the numbers come from."""

    model_config = _FROZEN

    unit: str = Field(min_length=1, description="unit of the evaluated entry")
    model: Model = Field("constant", description="constant | linear | quadratic | loglog")
    value: float | None = _energy("constant value, or per-bit slope of a linear entry")
    c2: float | None = _energy("quadratic coefficient (per bit^2)")
    c1: float | None = _energy("linear coefficient of a quadratic entry (per bit)")
    points: dict[str, float] | None = Field(
        None, description="loglog points: size_kib (as a string key) -> value")
    source: str = Field(min_length=1, description="where the number comes from")
    node_scaled: bool = Field(True, description="false for off-chip parts (DRAM)")

    @model_validator(mode="after")
    def _check_params(self) -> EnergyEntry:
        need = _MODEL_PARAMS[self.model]
        for p in _ALL_PARAMS:
            given = getattr(self, p) is not None
            if p in need and not given:
                raise ValueError(f"{self.model} model needs '{p}'")
            if p not in need and given:
                raise ValueError(f"'{p}' is not used by a {self.model} model "
                                 f"(it reads {', '.join(need)})")
        if self.points is not None:
            if len(self.points) < 2:
                raise ValueError("points: a loglog fit needs at least two points")
            sizes = []
            for k, v in self.points.items():
                sizes.append(_size_key(k))
                if not (math.isfinite(v) and v > 0):
                    raise ValueError(f"points.{k}: must be a positive number (got {v!r})")
            if len(set(sizes)) != len(sizes):
                raise ValueError("points: two keys name the same size")
        return self

    def formula(self) -> str:
        """The entry's value or fit as text, e.g. ``0.003125*b``."""
        if self.model == "constant":
            return f"{self.value:g}"
        if self.model == "linear":
            return f"{self.value:g}*b"
        if self.model == "quadratic":
            return f"{self.c2:g}*b^2 + {self.c1:g}*b, b = sqrt(bw*ba)"
        pts = ", ".join(f"{k} KiB: {v:g}" for k, v in _sorted_points(self.points))
        return f"log-log interpolation through ({pts})"


class NodeScaling(BaseModel):
    """Technology-node factors: energy at node X = factors[X] x the table's energy."""

    model_config = _FROZEN

    factors: dict[str, float] = Field(min_length=1)
    source: str = Field(min_length=1)

    @model_validator(mode="after")
    def _check_factors(self) -> NodeScaling:
        for k, v in self.factors.items():
            _size_key(k)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"factors.{k}: must be a positive number (got {v!r})")
        return self


class EnergyTableFile(BaseModel):
    """The on-disk table: header, node scaling and entries[component][action]."""

    model_config = _FROZEN

    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    node_nm: float = Field(gt=0, allow_inf_nan=False)
    supply_v: float = Field(gt=0, allow_inf_nan=False)
    description: str = Field(min_length=1)
    node_scaling: NodeScaling
    entries: dict[str, dict[str, EnergyEntry]]


def _sorted_points(points: Mapping[str, float] | None) -> list[tuple[str, float]]:
    return sorted((points or {}).items(), key=lambda kv: float(kv[0]))


def loglog_interpolate(points: Mapping[str, float], size: float) -> float:
    """Piecewise-linear interpolation in (log size, log value); end segments extrapolate."""
    pts = [(math.log(float(k)), math.log(v)) for k, v in _sorted_points(points)]
    x = math.log(size)
    # pick the segment containing x, or the first / last one beyond the ends
    i = 0
    while i < len(pts) - 2 and x > pts[i + 1][0]:
        i += 1
    (x0, y0), (x1, y1) = pts[i], pts[i + 1]
    return math.exp(y0 + (y1 - y0) * (x - x0) / (x1 - x0))


# ---------------------------------------------------------------------------- the table


class EnergyTable:
    """A validated energy table, optionally with overrides and a node / supply scaling.

    `energy(key, ...)` evaluates one entry in its unit (pJ/op, pJ/bit, mW/PE, mW/KiB), scaled
    to the technology set by `for_technology` (on-chip entries only): x the node factor, and
    x (V / V_table)^2 for dynamic energies or x (V / V_table) for leakage power (first-order
    CV^2 and V*I_leak rules).
    """

    def __init__(self, data: EnergyTableFile, path: str,
                 overrides: Mapping[str, float] | None = None, node_nm: float | None = None,
                 supply_v: float | None = None) -> None:
        self.data = data
        self.path = path
        self.overrides: dict[str, float] = dict(overrides or {})
        self.node_nm = data.node_nm if node_nm is None else float(node_nm)
        self.supply_v = data.supply_v if supply_v is None else float(supply_v)
        self.node_factor = self._node_factor(self.node_nm)
        self._original: EnergyTableFile | None = None

    # --------------------------------------------------------------- identity
    @property
    def name(self) -> str:
        return self.data.name

    @property
    def version(self) -> str:
        return self.data.version

    @property
    def overrides_label(self) -> str:
        """``key=value;...`` of the applied overrides ("" when none)."""
        return ";".join(f"{k}={v:g}" for k, v in sorted(self.overrides.items()))

    @property
    def label(self) -> str:
        """``name@version`` plus ``+overrides(...)`` when any are applied."""
        base = f"{self.name}@{self.version}"
        return base + (f"+overrides({self.overrides_label})" if self.overrides else "")

    def __repr__(self) -> str:
        return (f"EnergyTable({self.label}, {self.path}, node {self.node_nm:g} nm "
                f"x{self.node_factor:g}, {self.supply_v:g} V)")

    # ---------------------------------------------------------------- scaling
    def _node_factor(self, node_nm: float) -> float:
        for key, factor in self.data.node_scaling.factors.items():
            if math.isclose(float(key), node_nm, rel_tol=1e-9):
                return factor
        have = ", ".join(f"{float(k):g} nm" for k in self.data.node_scaling.factors)
        raise EnergyTableError(
            f"{self.path}: node_scaling.factors: no factor for {node_nm:g} nm (the table has "
            f"{have}); supply one with --set technology.energy_overrides.node_scaling."
            f"{node_nm:g}=FACTOR or in the table's [node_scaling] factors")

    def for_technology(self, node_nm: float, supply_v: float) -> EnergyTable:
        """This table evaluated at another node / supply (refused when no node factor is known)."""
        t = EnergyTable(self.data, self.path, self.overrides, node_nm, supply_v)
        t._original = self._original
        return t

    def _scale(self, entry: EnergyEntry) -> float:
        if not entry.node_scaled:
            return 1.0
        v = self.supply_v / self.data.supply_v
        return self.node_factor * (v if entry.unit.startswith("mW") else v * v)

    # ------------------------------------------------------------- evaluation
    def entry(self, key: str) -> EnergyEntry:
        """The entry ``component.action`` (or an alias such as ``int_mul``)."""
        full = ALIASES.get(key, key)
        comp, _, action = full.partition(".")
        try:
            return self.data.entries[comp][action]
        except KeyError:
            raise KeyError(_unknown_entry_msg(key)) from None

    def keys(self) -> list[str]:
        """Every entry key, in the table's order."""
        return [f"{c}.{a}" for c, acts in self.data.entries.items() for a in acts]

    def energy(self, key: str, bits: float | None = None, *, bw: float | None = None,
               ba: float | None = None, size_kib: float | None = None) -> float:
        """Evaluate an entry in its unit at the table's technology scaling.

        Args:
            key: ``component.action`` or an alias (``int_add``, ``int_mul``, ``sram``...).
            bits: operand width of a linear (or quadratic, when bw/ba are not given) entry.
            bw, ba: the two operand widths of a multiply; b = sqrt(bw * ba).
            size_kib: buffer size of a loglog (SRAM) entry.
        """
        e = self.entry(key)
        return self._raw(e, key, bits, bw, ba, size_kib) * self._scale(e)

    def _raw(self, e: EnergyEntry, key: str, bits, bw, ba, size_kib) -> float:
        if e.model == "constant":
            return float(e.value)
        if bw is not None and ba is not None:
            b = math.sqrt(float(bw) * float(ba))
        elif bits is not None:
            b = float(bits)
        elif bw is not None or ba is not None:
            b = float(bw if bw is not None else ba)
        else:
            b = None
        if e.model == "linear":
            if b is None:
                raise TypeError(f"energy({key!r}): a linear entry needs bits=")
            return e.value * b
        if e.model == "quadratic":
            if b is None:
                raise TypeError(f"energy({key!r}): a quadratic entry needs bw= and ba= (or bits=)")
            return e.c2 * b * b + e.c1 * b
        if size_kib is None or not size_kib > 0:
            raise TypeError(f"energy({key!r}): a loglog entry needs size_kib > 0")
        return loglog_interpolate(e.points, float(size_kib))

    def sram_pj_per_bit(self, size_kib: float) -> float:
        """SRAM energy per bit read or written in a buffer of `size_kib` KiB."""
        return self.energy("sram.access", size_kib=size_kib)

    # ---------------------------------------------------------------- sources
    def sources(self) -> pd.DataFrame:
        """Every number of the table with its unit and source (overrides marked as such)."""
        rows = []
        orig = self._original
        for key in self.keys():
            e = self.entry(key)
            src = e.source
            changed = [k for k in self.overrides if _override_entry(k) == key]
            if changed and orig is not None:
                was = orig.entries[key.split(".")[0]][key.split(".")[1]].formula()
                src = f"override {', '.join(f'{k}={self.overrides[k]:g}' for k in changed)} " \
                      f"(table: {was}); {e.source}"
            rows.append({"entry": key, "model": e.model, "value": e.formula(), "unit": e.unit,
                         "node_scaled": e.node_scaled, "source": src})
        ns = self.data.node_scaling
        overridden = {_find_node_key(ns.factors, o.split(".", 1)[1]) for o in self.overrides
                      if o.startswith("node_scaling.")}
        for k, f in ns.factors.items():
            key = f"node_scaling.{k}"
            src = ns.source
            if k in overridden:
                was = self._original_factors().get(k)
                src = f"override {key}={f:g}" + (f" (table: {was:g}); {ns.source}"
                                                  if was is not None else "")
            rows.append({"entry": key, "model": "factor", "value": f"{f:g}", "unit": "x",
                         "node_scaled": False, "source": src})
        df = pd.DataFrame(rows)
        df["table"] = self.label
        return df

    def _original_factors(self) -> dict[str, float]:
        src = self._original if self._original is not None else self.data
        return dict(src.node_scaling.factors)


# ------------------------------------------------------------------------- loading

def _tables_dir() -> Any:
    return resources.files("npusim").joinpath("energy")


def list_energy_tables() -> list[str]:
    """Names of the shipped energy tables."""
    try:
        entries = list(_tables_dir().iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(e.name[:-5] for e in entries if e.name.endswith(".toml") and e.is_file())


def load_energy_table(name_or_path: str | Path = "horowitz45",
                      overrides: Mapping[str, float] | None = None) -> EnergyTable:
    """A shipped table by name (``horowitz45``) or a TOML file, with optional overrides.

    Overrides are ``{"dram.access": 8.0}`` (a constant/linear value),
    ``{"int_multiplier.multiply.c2": 0.003}`` (a fit coefficient), ``{"sram.access.32": 0.25}``
    (one loglog point, by size in KiB) or ``{"node_scaling.28": 0.5}`` (a node factor).
    """
    text_name = str(name_or_path)
    if not isinstance(name_or_path, Path) and text_name in list_energy_tables():
        source = f"energy/{text_name}.toml"
        text = _tables_dir().joinpath(f"{text_name}.toml").read_text(encoding="utf-8")
    else:
        source = text_name
        path = Path(name_or_path)
        try:
            text = path.read_bytes().decode("utf-8")
        except FileNotFoundError:
            raise EnergyTableError(f"{source}: no such file (shipped tables: "
                                   f"{', '.join(list_energy_tables())})") from None
        except IsADirectoryError:
            raise EnergyTableError(f"{source}: is a directory, not a TOML file") from None
        except UnicodeDecodeError as exc:
            raise EnergyTableError(f"{source}: not UTF-8 text (byte {exc.start})") from None
        except OSError as exc:
            raise EnergyTableError(f"{source}: cannot read ({exc.strerror or exc})") from None
    data = _parse(text, source)
    table = EnergyTable(data, source)
    table._original = data
    if overrides:
        table = _apply_overrides(table, overrides)
    return table


def table_for_npu(npu: Any) -> EnergyTable:
    """The table an `NPUConfig` names, with its energy overrides, at its node and supply."""
    tech = npu.technology
    table = load_energy_table(tech.energy_table, dict(tech.energy_overrides))
    return table.for_technology(tech.node_nm, tech.supply_v)


def _parse(text: str, source: str) -> EnergyTableFile:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise EnergyTableError(f"{source}: TOML syntax error: {exc}") from None
    except RecursionError:
        raise EnergyTableError(f"{source}: TOML arrays or tables nested too deeply") from None
    return _validate(raw, source, strict=True)


def _validate(raw: dict[str, Any], source: str, strict: bool) -> EnergyTableFile:
    # Entry keys first: a misspelt entry is reported as such, not as the entry it fails to give.
    entries = raw.get("entries")
    if isinstance(entries, dict):
        for comp, acts in entries.items():
            if not isinstance(acts, dict):
                raise EnergyTableError(f"{source}: entries.{comp}: expected a table of actions "
                                       f"([entries.{comp}.<action>])")
            for action in acts:
                key = f"{comp}.{action}"
                if key not in ENTRY_SPECS:
                    raise EnergyTableError(f"{source}: entries.{key}: {_unknown_entry_msg(key)}")
    try:
        data = EnergyTableFile.model_validate(raw, strict=strict)
    except ValidationError as exc:
        raise _error(exc, source) from None
    for key, (unit, models) in ENTRY_SPECS.items():
        comp, action = key.split(".")
        e = data.entries.get(comp, {}).get(action)
        if e is None:
            raise EnergyTableError(f"{source}: entries.{key}: missing entry (every table needs "
                                   f"{', '.join(ENTRY_SPECS)})")
        if e.unit != unit:
            raise EnergyTableError(f"{source}: entries.{key}.unit: expected {unit!r} for this "
                                   f"entry (got {e.unit!r})")
        if e.model not in models:
            raise EnergyTableError(f"{source}: entries.{key}.model: {e.model!r} is not allowed "
                                   f"here (allowed: {', '.join(sorted(models))})")
    if not any(math.isclose(float(k), data.node_nm) for k in data.node_scaling.factors):
        raise EnergyTableError(f"{source}: node_scaling.factors: no factor for the table's own "
                               f"node {data.node_nm:g} nm (it should be 1.0)")
    return data


def _unknown_entry_msg(key: str) -> str:
    close = difflib.get_close_matches(key, list(ENTRY_SPECS) + list(ALIASES), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(ENTRY_SPECS)})"
    return f"unknown entry {key!r}{hint}"


def _loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc)


def _error(exc: ValidationError, source: str) -> EnergyTableError:
    err = exc.errors()[0]
    loc, kind, msg = tuple(err["loc"]), err["type"], err["msg"]
    if kind == "extra_forbidden":
        msg = "unknown key"
        known = _known_keys(loc[:-1])
        if known:
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            msg += f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(known)})"
    elif kind == "missing":
        msg = "missing key"
    elif kind == "value_error":
        msg = msg.removeprefix("Value error, ")
    else:
        value = repr(err.get("input"))
        msg += f" (got {value if len(value) <= 60 else value[:57] + '...'})"
    more = len(exc.errors()) - 1
    where = f"{_loc(loc)}: " if loc else ""
    return EnergyTableError(f"{source}: {where}{msg}" + (f" (+{more} more)" if more else ""))


def _known_keys(parent: tuple[Any, ...]) -> list[str]:
    if not parent:
        return list(EnergyTableFile.model_fields)
    if parent == ("node_scaling",):
        return list(NodeScaling.model_fields)
    if len(parent) == 3 and parent[0] == "entries":
        return list(EnergyEntry.model_fields)
    return []


# ------------------------------------------------------------------------ overrides

def _override_entry(key: str) -> str | None:
    """The entry an override key changes (``sram.access.32`` -> ``sram.access``)."""
    parts = key.split(".")
    if len(parts) >= 2 and f"{parts[0]}.{parts[1]}" in ENTRY_SPECS:
        return f"{parts[0]}.{parts[1]}"
    return None


def _find_node_key(factors: Mapping[str, float], key: str) -> str | None:
    try:
        want = float(key)
    except ValueError:
        return None
    for k in factors:
        if math.isclose(float(k), want, rel_tol=1e-9):
            return k
    return None


def _override_value(key: str, value: Any, source: str) -> float:
    if isinstance(value, bool):
        raise EnergyTableError(f"{source}: overrides: {key}: expected a number (got {value!r})")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise EnergyTableError(f"{source}: overrides: {key}: expected a number "
                               f"(got {value!r})") from None
    if not math.isfinite(v):
        raise EnergyTableError(f"{source}: overrides: {key}: expected a finite number (got {v!r})")
    return v


def _apply_overrides(table: EnergyTable, overrides: Mapping[str, Any]) -> EnergyTable:
    source = table.path
    raw = table.data.model_dump()
    applied: dict[str, float] = {}
    for key, value in overrides.items():
        key = str(key).strip()
        v = _override_value(key, value, source)
        parts = key.split(".")
        if parts[0] == "node_scaling":
            rest = ".".join(parts[1:])
            if not rest:
                raise EnergyTableError(f"{source}: overrides: {key}: name the node, e.g. "
                                       f"node_scaling.28=0.5")
            try:
                _size_key(rest)
            except ValueError as exc:
                raise EnergyTableError(f"{source}: overrides: {key}: {exc}") from None
            factors = raw["node_scaling"]["factors"]
            factors[_find_node_key(factors, rest) or rest] = v
            applied[key] = v
            _validate(raw, f"{source}: overrides: {key}={v:g}", strict=False)
            continue
        entry_key = _override_entry(key)
        if entry_key is None:
            close = difflib.get_close_matches(".".join(parts[:2]), list(ENTRY_SPECS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else \
                f" (known entries: {', '.join(ENTRY_SPECS)}, node_scaling.<nm>)"
            raise EnergyTableError(f"{source}: overrides: unknown key {key!r}{hint}")
        comp, action = entry_key.split(".")
        entry = raw["entries"][comp][action]
        param = ".".join(parts[2:])
        model = entry["model"]
        if not param:
            if model in ("constant", "linear"):
                entry["value"] = v
            elif model == "quadratic":
                raise EnergyTableError(f"{source}: overrides: {key}: a quadratic fit; override "
                                       f"one coefficient, {key}.c2 or {key}.c1")
            else:
                pts = ", ".join(k for k, _ in _sorted_points(entry["points"]))
                raise EnergyTableError(f"{source}: overrides: {key}: a loglog fit; override one "
                                       f"point by its size in KiB, {key}.<size> ({pts})")
        elif model == "quadratic" and param in ("c2", "c1"):
            entry[param] = v
        elif model == "loglog" and _find_node_key(entry["points"], param) is not None:
            entry["points"][_find_node_key(entry["points"], param)] = v
        else:
            can = {"constant": entry_key, "linear": entry_key,
                   "quadratic": f"{entry_key}.c2 / .c1",
                   "loglog": f"{entry_key}.<size> with size in "
                             f"{', '.join(k for k, _ in _sorted_points(entry['points'] or {}))}"}
            raise EnergyTableError(f"{source}: overrides: unknown key {key!r} ({entry_key} is a "
                                   f"{model} entry; override {can[model]})")
        applied[key] = v
        _validate(raw, f"{source}: overrides: {key}={v:g}", strict=False)
    data = _validate(raw, source, strict=False)
    new = EnergyTable(data, source, {**table.overrides, **applied}, table.node_nm, table.supply_v)
    new._original = table._original if table._original is not None else table.data
    return new
