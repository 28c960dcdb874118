"""The one place that decides which engine computes a conv's exact sums.

The result of every conv output is defined by the order-faithful accumulation of docs/architecture.md;
an engine only decides how the exact sums that stand in for it (where a bound proves no
overflow can happen) are computed:

- ``"reference"``: the order-faithful kernel on every output (the slowest; what the fast
  engines are tested against);
- ``"float"``: exact sums from an im2col + float GEMM (`npusim.sim.exact_conv`), exact
  because the weights' L1 bound proves every partial sum below 2^24 (float32) or 2^53;
- ``"int8"``: oneDNN's int8 conv (`npusim.sim.int8_engine`) on every layer whose operands fit
  it and whose bound proves it exact (others take the float engine); self-tested once per
  process, every call verified. A CPU or torch build without it is an error when the
  `Simulator` is made;
- ``"auto"`` (the default): ``"int8"`` where this process has it, else ``"float"``; when the
  int8 engine is missing because torch's private op is broken or its self-test failed, a
  warning says so.

Either fast engine whose checks reject a result recomputes that layer with the float engine
and logs a WARNING: nothing unverified gets out. There is no environment switch; choose the
engine with ``Simulator(config, engine=...)`` or ``npusim simulate --engine``.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np

from npusim.sim import int8_engine
from npusim.sim.exact_conv import InexactError, exact_conv2d
from npusim.sim.int8_engine import Int8Conv

log = logging.getLogger(__name__)

ENGINES = ("auto", "reference", "float", "int8")


class EngineError(ValueError):
    """An unknown engine name, or an engine this process cannot run; one-line reason."""


@dataclass(frozen=True)
class Engine:
    """A resolved engine: `name` as asked, `used` the engine that computes ("reference",
    "float" or "int8"), `int8_kind` the CPU's int8 path when `used` is "int8"."""

    name: str
    used: str
    int8_kind: str | None = None

    @property
    def label(self) -> str:
        """How the CLI names it: "reference engine", "float engine", or the int8 engine with
        the kernel that computes its convs on this CPU."""
        if self.used != "int8":
            return f"{self.used} engine"
        from npusim.sim import int8_tiles

        return (f"int8 engine, own {int8_tiles.ISA_NAMES[int8_tiles.ISA]} kernel"
                if int8_tiles.available() else "int8 engine, oneDNN")

    @property
    def reference(self) -> bool:
        """Every output runs the order-faithful kernel."""
        return self.used == "reference"

    def prepare_int8(self, w: np.ndarray, stride: int, padding: int, groups: int, zp_x: int,
                     x_range: tuple[int, int], signs: bool) -> Int8Conv | None:
        """The int8 preparation of a layer (raw inputs in `x_range`), or None where this
        engine does not use int8 for it."""
        if self.int8_kind is None:
            return None
        return int8_engine.prepare_int8_conv(w, stride, padding, groups, zp_x, x_range[0],
                                             x_range[1], signs=signs, kind=self.int8_kind)

    def exact_conv(self, x: np.ndarray, w: np.ndarray, stride: int = 1, padding: int = 0,
                   groups: int = 1, bound: int | None = None, int8: bool = True) -> np.ndarray:
        """Exact int64 ``conv2d(x, w)`` of NCHW integers (zero padding): the int8 engine where
        this engine has it, `int8` and the operands fit, else the float engine."""
        n, _, h, wd = x.shape
        o, _, kh, kw = w.shape
        if int8 and self.int8_kind is not None and x.size and x.dtype.kind in "iu":
            plan = self.prepare_int8(w, stride, padding, groups, 0, (int(x.min()), int(x.max())),
                                     signs=False)
            if plan is not None:
                ho = (h + 2 * padding - kh) // stride + 1
                wo = (wd + 2 * padding - kw) // stride + 1
                try:
                    res = int8_engine.checked_conv(x.transpose(0, 2, 3, 1), plan, (ho, wo))
                    return res.g.astype(np.int64).reshape(n, ho, wo, o).transpose(0, 3, 1, 2)
                except InexactError as e:
                    log.warning("%s (conv %s, stride %d): recomputed with the float engine", e,
                                tuple(w.shape), stride)
        return exact_conv2d(x, w, stride, padding, groups, bound)


def select(name: str) -> Engine:
    """The engine called `name` (one of `ENGINES`), resolved for this process; raises
    EngineError for an unknown name or an int8 engine this process does not have."""
    if name not in ENGINES:
        raise EngineError(f"engine must be one of {', '.join(ENGINES)}; got {name!r}")
    if name in ("reference", "float"):
        return Engine(name, name)
    sup = int8_engine.probe()
    if sup.ok:
        return Engine(name, "int8", sup.kind)
    if name == "int8":
        raise EngineError(f"engine 'int8' is unavailable here: {sup.reason} "
                          f"(use engine 'auto' or 'float')")
    if sup.cpu:
        warnings.warn(f"int8 engine unavailable ({sup.reason}); using the float engine",
                      RuntimeWarning, stacklevel=3)
    else:
        log.info("int8 engine off: %s; using the float engine", sup.reason)
    return Engine(name, "float")


def exact_conv(x: np.ndarray, w: np.ndarray, stride: int = 1, padding: int = 0, groups: int = 1,
               engine: str = "auto") -> np.ndarray:
    """Exact int64 ``conv2d(x, w)`` of NCHW integer arrays with zero padding, computed by
    `engine` ("auto", "float" or "int8"; see the module docstring)."""
    if engine == "reference":
        raise EngineError("exact_conv: engine 'reference' has no exact-sum path; use 'float'")
    return select(engine).exact_conv(x, w, stride, padding, groups)
