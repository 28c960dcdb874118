"""Sweep axes and grids: ``--set key=v1,v2`` / ``key=a:b[:step]`` parsed and validated up front.

An axis sets one or more keys (``precision.pe_acc_bits,precision.acc_bits=8:20`` ties the two
accumulator levels together) to each of a list of values. NPU axes name `NPUConfig` fields;
quantization axes name `QuantConfig` fields plus two shorthands, ``bits`` (W/A pairs such as
``8/8,4/4`` or ``8,4`` for equal widths) and ``overrides`` (per-layer widths,
``layer3.*:w2a2+fc:w8``). Every value is checked against the base configuration when the
axis is parsed, and every combination when the grid is expanded, so a typo fails before any
training with a one-line `ConfigError` that names the key. Nothing here imports torch.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Literal, Sequence

from npusim.hw.config import ConfigError, NPUConfig
from npusim.ir.requant import RequantSpec

if TYPE_CHECKING:
    from quantize.config import QuantConfig

__all__ = ["Axis", "Grid", "Point", "parse_npu_axis", "parse_quant_axis", "parse_values"]

#: Ranges longer than this are refused (a typo such as ``8:2000`` would otherwise run for days).
MAX_RANGE = 512

_RANGE = re.compile(r"^(-?\d+):(-?\d+)(?::(-?\d+))?$")
_OVERRIDE = re.compile(r"^(?P<pat>[^:]+):(?:w(?P<w>\d+))?(?:a(?P<a>\d+))?$")
QUANT_SHORTHANDS = ("bits", "overrides")


@dataclass(frozen=True)
class Axis:
    """One swept dimension: every key in `keys` takes each value in `values` in turn."""

    kind: Literal["npu", "quant"]
    keys: tuple[str, ...]
    values: tuple[Any, ...]
    text: str = ""

    @property
    def name(self) -> str:
        return ",".join(self.keys)


@dataclass(frozen=True)
class Point:
    """One configuration of a grid: a quantization config and an NPU config.

    `quant_set` / `npu_set` are the swept values that made it (for labels and columns).
    """

    quant: "QuantConfig"
    npu: NPUConfig
    quant_set: tuple[tuple[str, Any], ...] = ()
    npu_set: tuple[tuple[str, Any], ...] = ()

    def label(self) -> str:
        """A short human label, e.g. ``lsq-W4A4 acc_bits=12 overflow=wrap``."""
        parts = [self.quant.short_name()]
        if self.quant.overrides:
            parts[0] += "+" + "+".join(_override_text(o) for o in self.quant.overrides)
        parts += [f"{','.join(_short_key(k) for k in key.split(','))}={v}"
                  for key, v in self.npu_set]
        return " ".join(parts)


def _short_key(key: str) -> str:
    """``precision.acc_bits`` -> ``acc_bits``; ``layer[0].precision.acc_bits`` ->
    ``layer[0].acc_bits`` (a layer table's key keeps its index)."""
    parts = key.split(".")
    return f"{parts[0]}.{parts[-1]}" if parts[0].startswith("layer[") else parts[-1]


# ------------------------------------------------------------------------------ values

def _scalar(text: str) -> Any:
    """'16' -> 16, '0.5' -> 0.5, 'true' -> True, anything else stays a string."""
    t = text.strip()
    if re.fullmatch(r"-?\d+", t):
        return int(t)
    if re.fullmatch(r"-?(\d+\.\d*|\.\d+|\d+)([eE]-?\d+)?", t):
        return float(t)
    if t.lower() in ("true", "false"):
        return t.lower() == "true"
    return t


def parse_values(text: str, what: str = "value") -> list[Any]:
    """``"8,16"``, ``"10:32"`` (inclusive), ``"8:20:2"``, ``"wrap,saturate"``, ``"8,12:14"``.

    Numbers become ints/floats; the order is kept and repeats are dropped.
    """
    if not text.strip():
        raise ConfigError(f"{what}: no values (expected v1,v2,... or a:b or a:b:step)")
    out: list[Any] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            raise ConfigError(f"{what}: empty value in {text!r}")
        m = _RANGE.match(part)
        if m:
            a, b = int(m.group(1)), int(m.group(2))
            step = int(m.group(3)) if m.group(3) is not None else 1
            if step <= 0:
                raise ConfigError(f"{what}: range {part!r} needs a positive step")
            if b < a:
                raise ConfigError(f"{what}: range {part!r} is empty (end < start)")
            if (b - a) // step + 1 > MAX_RANGE:
                raise ConfigError(f"{what}: range {part!r} has more than {MAX_RANGE} values")
            vals: list[Any] = list(range(a, b + 1, step))
        elif ":" in part and re.fullmatch(r"[-\d:]+", part):
            raise ConfigError(f"{what}: bad range {part!r} (expected a:b or a:b:step, integers)")
        else:
            vals = [_scalar(part)]
        for v in vals:
            if v not in out:
                out.append(v)
    return out


def _split_item(item: str, flag: str) -> tuple[tuple[str, ...], str]:
    key, sep, value = str(item).partition("=")
    keys = tuple(k.strip() for k in key.split(","))
    if not sep or not all(keys) or any(re.search(r"\s", k) or any(not p for p in k.split("."))
                                       for k in keys):
        raise ConfigError(f"{flag} {item!r}: expected KEY=V1,V2,... or KEY=A:B[:STEP], "
                          f"e.g. precision.acc_bits=10:32")
    if len(set(keys)) != len(keys):
        raise ConfigError(f"{flag} {item!r}: a key is repeated")
    return keys, value


# --------------------------------------------------------------------------- NPU axes

def parse_npu_axis(item: str, base: NPUConfig | None = None) -> Axis:
    """``"precision.acc_bits=10:32"`` -> an NPU axis, every value validated against `base`."""
    base = base or NPUConfig.preset("edge16")
    keys, value = _split_item(item, "--set")
    values = parse_values(value, f"--set {','.join(keys)}")
    for v in values:
        try:
            base.with_overrides({k: v for k in keys})
        except ConfigError as e:
            raise ConfigError(f"--set {','.join(keys)}={v}: {_strip_source(e)}") from None
    return Axis("npu", keys, tuple(values), str(item))


def _strip_source(e: Exception) -> str:
    return str(e).removeprefix("overrides: ")


# ------------------------------------------------------------------------ quant axes

def _quant_fields() -> dict[str, Any]:
    from quantize.config import QuantConfig

    known = {k: None for k in QuantConfig.model_fields if k not in ("overrides", "options",
                                                                      "requant")}
    known.update({f"requant.{k}": None for k in RequantSpec.model_fields})
    return known


def _override_text(o: Any) -> str:
    w = f"w{o.weight_bits}" if o.weight_bits is not None else ""
    a = f"a{o.act_bits}" if o.act_bits is not None else ""
    return f"{o.pattern}:{w}{a}"


def parse_overrides(text: str) -> tuple[dict[str, Any], ...]:
    """``"layer3.*:w2a2+fc:w8"`` -> LayerOverride dicts; ``"none"`` -> ()."""
    if str(text).strip().lower() in ("none", ""):
        return ()
    out = []
    for spec in str(text).split("+"):
        m = _OVERRIDE.match(spec.strip())
        if not m or (m.group("w") is None and m.group("a") is None):
            raise ConfigError(f"bad override {spec!r} (expected PATTERN:wNaM, PATTERN:wN or "
                              f"PATTERN:aM, joined with '+')")
        d: dict[str, Any] = {"pattern": m.group("pat")}
        if m.group("w") is not None:
            d["weight_bits"] = int(m.group("w"))
        if m.group("a") is not None:
            d["act_bits"] = int(m.group("a"))
        out.append(d)
    return tuple(out)


def _quant_updates(keys: tuple[str, ...], value: Any) -> dict[str, Any]:
    """The QuantConfig field updates one axis value stands for."""
    upd: dict[str, Any] = {}
    for k in keys:
        if k == "bits":
            w, _, a = str(value).partition("/")
            if not re.fullmatch(r"\d+", w.strip()) or (a and not re.fullmatch(r"\d+", a.strip())):
                raise ConfigError("expected W/A bit pairs such as 8/8, or 4 for W = A")
            upd["weight_bits"], upd["act_bits"] = int(w), int(a or w)
        elif k == "overrides":
            upd["overrides"] = parse_overrides(value)
        elif isinstance(value, str) and value.lower() in ("none", "null"):
            upd[k] = None
        else:
            upd[k] = value
    return upd


def make_quant(base: "QuantConfig", updates: dict[str, Any]) -> "QuantConfig":
    """`base` with (possibly dotted ``requant.*``) field updates, validated (one-line error)."""
    from quantize.config import QuantConfig, QuantConfigError

    data = base.model_dump()
    for k, v in updates.items():
        if k.startswith("requant."):
            data["requant"] = {**data["requant"], k.split(".", 1)[1]: v}
        else:
            data[k] = v
    try:
        return QuantConfig.make(**data)
    except QuantConfigError as e:
        raise ConfigError(str(e)) from None


def parse_quant_axis(item: str, base: "QuantConfig | None" = None) -> Axis:
    """``"method=lsq,pact"``, ``"bits=8/8,4/4,2/2"``, ``"weight_bits=2:8"``,
    ``"overrides=none,layer3.*:w2a2"`` -> a quantization axis, validated against `base`."""
    from quantize.config import QuantConfig

    base = base or QuantConfig()
    keys, value = _split_item(item, "--quant")
    known = _quant_fields()
    for k in keys:
        if k not in known and k not in QUANT_SHORTHANDS:
            import difflib

            close = difflib.get_close_matches(k, [*known, *QUANT_SHORTHANDS], n=1)
            hint = (f" (did you mean {close[0]!r}?)" if close
                    else f" (known: {', '.join([*QUANT_SHORTHANDS, *known])})")
            raise ConfigError(f"--quant {k}: unknown key{hint}")
    if "overrides" in keys or "bits" in keys:
        # their values contain ':' and '/', which are not ranges
        values: list[Any] = []
        for part in value.split(","):
            part = part.strip()
            if not part:
                raise ConfigError(f"--quant {','.join(keys)}: empty value in {value!r}")
            if part not in values:
                values.append(part)
    else:
        values = parse_values(value, f"--quant {','.join(keys)}")
    for v in values:
        try:
            make_quant(base, _quant_updates(keys, v))
        except ConfigError as e:
            raise ConfigError(f"--quant {','.join(keys)}={v}: {e}") from None
    return Axis("quant", keys, tuple(values), str(item))


# ----------------------------------------------------------------------------- grids

@dataclass
class Grid:
    """The Cartesian product of quantization axes and NPU axes over base configurations.

    Points are ordered quantization-major, so all NPU points of one trained model are
    consecutive (each model is trained, or loaded from the cache, once).
    """

    quant_axes: Sequence[Axis] = ()
    npu_axes: Sequence[Axis] = ()
    base_npu: NPUConfig = field(default_factory=lambda: NPUConfig.preset("edge16"))
    base_quant: "QuantConfig | None" = None

    @classmethod
    def parse(cls, quant: Iterable[str] = (), sets: Iterable[str] = (),
              npu: str | NPUConfig = "edge16", base_quant: "QuantConfig | None" = None) -> "Grid":
        """Axes from ``--quant`` / ``--set`` strings; `npu` is a preset name, file or config."""
        base = npu if isinstance(npu, NPUConfig) else NPUConfig.load(npu)
        n_axes = [parse_npu_axis(s, base) for s in sets]
        q_axes = [parse_quant_axis(s, base_quant) for s in quant]
        _check_disjoint(n_axes, "--set")
        _check_disjoint(q_axes, "--quant")
        return cls(q_axes, n_axes, base, base_quant)

    def __len__(self) -> int:
        n = 1
        for a in (*self.quant_axes, *self.npu_axes):
            n *= len(a.values)
        return n

    def points(self) -> list[Point]:
        """Every combination, validated (a combination the configs refuse is a ConfigError)."""
        from quantize.config import QuantConfig

        base_q = self.base_quant or QuantConfig()
        q_points = []
        for combo in itertools.product(*(a.values for a in self.quant_axes)):
            upd: dict[str, Any] = {}
            for axis, v in zip(self.quant_axes, combo):
                upd.update(_quant_updates(axis.keys, v))
            sets = tuple((a.name, v) for a, v in zip(self.quant_axes, combo))
            try:
                q_points.append((make_quant(base_q, upd), sets))
            except ConfigError as e:
                raise ConfigError(f"--quant point {_combo_text(sets)}: {e}") from None
        n_points = []
        for combo in itertools.product(*(a.values for a in self.npu_axes)):
            ov = {k: v for axis, v in zip(self.npu_axes, combo) for k in axis.keys}
            sets = tuple((a.name, v) for a, v in zip(self.npu_axes, combo))
            try:
                n_points.append((self.base_npu.with_overrides(ov) if ov else self.base_npu, sets))
            except ConfigError as e:
                raise ConfigError(f"--set point {_combo_text(sets)}: {_strip_source(e)}") from None
        return [Point(q, n, qs, ns) for q, qs in q_points for n, ns in n_points]


def _combo_text(sets: tuple[tuple[str, Any], ...]) -> str:
    return " ".join(f"{k}={v}" for k, v in sets) or "(base)"


def _check_disjoint(axes: Sequence[Axis], flag: str) -> None:
    seen: dict[str, str] = {}
    for a in axes:
        for k in a.keys:
            for kk in {"bits": ("weight_bits", "act_bits")}.get(k, (k,)):
                if kk in seen:
                    raise ConfigError(f"{flag} {a.text}: {kk} is already swept by {seen[kk]!r}")
                seen[kk] = a.text
