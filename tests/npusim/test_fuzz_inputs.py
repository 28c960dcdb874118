"""Hypothesis fuzz of the loaders: program manifests mutated at random (values of other types,
deleted keys, added keys), random NPU TOML files and random ``--set`` strings.

Every example runs in a forked child under an address-space cap (2 GiB above what the child
already maps), so a loader that tries to allocate without bound fails the test instead of the
machine, and the test process itself is never capped. Each example must either load or raise a
`UserError` subclass whose message is one line; any other exception is a bug.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import resource
import traceback
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.npusim.test_bad_inputs import _FIELDS, MANIFEST, program_bytes

CAP_BYTES = 2 << 30
EXAMPLES = 200


def _mapped_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * resource.getpagesize()


def _serve(conn) -> None:
    """The forked child: cap the address space, then run each function sent until None."""
    from npusim.errors import UserError

    cap = _mapped_bytes() + CAP_BYTES
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    while (job := conn.recv()) is not None:
        fn, args = job
        try:
            fn(*args)
            conn.send(("ok", ""))
        except UserError as e:
            conn.send(("user", str(e)))
        except BaseException as e:  # noqa: BLE001 - the child reports whatever escaped
            conn.send(("bug", f"{type(e).__name__}: {e}\n{traceback.format_exc()[-3000:]}"))
    conn.close()


class CappedWorker:
    """A forked child under the memory cap that runs examples one by one (forking once per
    test, not per example); a child that dies is reported as a bug and replaced."""

    def __init__(self) -> None:
        self._start()

    def _start(self) -> None:
        ctx = multiprocessing.get_context("fork")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child,), daemon=True)
        self.proc.start()
        child.close()

    def run(self, fn: Callable[..., Any], *args: Any) -> tuple[str, str]:
        """("ok" | "user" | "bug", message) of `fn(*args)` in the child."""
        try:
            self.conn.send((fn, args))
            return self.conn.recv()
        except (EOFError, BrokenPipeError):
            self.proc.join()
            code = self.proc.exitcode
            self._start()
            return "bug", f"the child died (exit code {code})"

    def close(self) -> None:
        self.conn.send(None)
        self.proc.join()


@pytest.fixture(scope="module")
def worker():
    w = CappedWorker()
    yield w
    w.close()


def check(worker: CappedWorker, fn: Callable[..., Any], *args: Any) -> str:
    kind, msg = worker.run(fn, *args)
    assert kind != "bug", msg
    if kind == "user":
        assert msg and "\n" not in msg, repr(msg)
    event(kind)  # --hypothesis-show-statistics: how many examples loaded, how many were refused
    return kind


# ------------------------------------------------------------------ JSON values and mutations

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(-2, 2**40)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=4),
    max_leaves=8)


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path to a dict entry or list item inside `value`."""
    out = []
    items = value.items() if isinstance(value, dict) else enumerate(value) \
        if isinstance(value, list) else ()
    for k, v in items:
        out.append((*prefix, k))
        out += _paths(v, (*prefix, k))
    return out


def _parent(doc: Any, path: tuple) -> Any:
    for p in path[:-1]:
        doc = doc[p]
    return doc


@st.composite
def mutated_manifest(draw) -> Any:
    doc = json.loads(json.dumps(MANIFEST))
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(doc)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = _parent(doc, path)
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(JSON)
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=8))] = draw(JSON)
        else:
            parent.insert(path[-1], draw(JSON))
    return doc


def _load_program_bytes(blob: bytes, path: str) -> None:
    from npusim.ir.program import load_program
    from npusim.report.inspect import program_table

    with open(path, "wb") as f:
        f.write(blob)
    program_table(load_program(path))


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(manifest=mutated_manifest())
def test_mutated_manifests_load_or_raise_a_user_error(worker, tmp_path, manifest):
    blob = program_bytes(manifest_text=json.dumps(manifest))
    check(worker, _load_program_bytes, blob, str(tmp_path / "p.safetensors"))


# ------------------------------------------------------------------ NPU TOML files

def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) \
            else repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v if x is not None) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml(x)}" for k, x in v.items()
                               if x is not None) + "}"
    return '""'  # None: TOML has no null


VALUE = JSON | st.sampled_from(["os", "ws", "is", "exact", "wrap", "saturate", "packed", "pad4",
                                "horowitz45", "fixed", "pow2", "float"]) | st.integers(-4, 70)


@st.composite
def npu_toml(draw) -> str:
    lines = []
    if draw(st.integers(0, 3)):  # a file without a name now and then
        lines.append(f"name = {_toml(draw(st.text(max_size=6) | VALUE))}")
    sections = dict(_FIELDS, requant={"scale_mode": 0, "multiplier_bits": 0, "rounding": 0})
    for section in draw(st.lists(st.sampled_from([*sections, "bogus"]), unique=True, max_size=4)):
        known = list(sections.get(section, {})) + ["bogus_key"]
        keys = draw(st.lists(st.sampled_from(known), unique=True, max_size=4))
        lines.append(f"[{section}]")
        lines += [f"{k} = {_toml(draw(VALUE))}" for k in keys]
    return "\n".join(lines) + "\n"


def _load_npu(text: str) -> None:
    from npusim.hw.config import NPUConfig

    NPUConfig.from_toml_str(text, source="fuzz.toml")


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(text=npu_toml())
def test_random_npu_toml_loads_or_raises_a_user_error(worker, text):
    check(worker, _load_npu, text)


# ------------------------------------------------------------------ --set strings

SET_KEYS = [f"{s}.{k}" for s, keys in _FIELDS.items() for k in keys] + [
    "name", "precision", "requant.scale_mode", "technology.energy_overrides.mac.int8", "bogus",
    "array.rows.x", ""]


@st.composite
def set_items(draw) -> list[str]:
    items = []
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(SET_KEYS) | st.sampled_from(SET_KEYS) | st.text(max_size=10))
        value = draw(st.text(max_size=10) | st.integers().map(str) | st.floats().map(repr)
                     | st.integers(-2, 64).map(str) | st.sampled_from(
                         ["none", "nan", "inf", "ws", "wrap", "saturate", "pad8", "pow2"]))
        items.append(draw(st.sampled_from([f"{key}={value}", key, f"{key}=={value}"])))
    return items


def _overrides(items: list[str]) -> None:
    from npusim.hw.config import NPUConfig, parse_set_option

    NPUConfig.preset("edge16").with_overrides(parse_set_option(items))


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(items=set_items())
def test_random_set_options_apply_or_raise_a_user_error(worker, items):
    check(worker, _overrides, items)


def _hog() -> None:
    bytearray(3 << 30)


def _user_error() -> None:
    from npusim.errors import UserError

    raise UserError("a\nb")


def _die() -> None:
    import os

    os._exit(7)


def test_the_harness_reports_outcomes(worker):
    """An allocation past the cap is a MemoryError in the child (reported, not survived
    silently); a dead child is a bug and is replaced; user errors and successes pass through."""
    kind, msg = worker.run(_hog)
    assert kind == "bug" and "MemoryError" in msg
    assert worker.run(_user_error) == ("user", "a b")
    assert worker.run(_die) == ("bug", "the child died (exit code 7)")
    assert worker.run(print, "fine") == ("ok", "")
