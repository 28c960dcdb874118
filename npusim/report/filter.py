"""A small, safe row-filter language for result tables (never eval/query).

Grammar (``and`` binds tighter than ``or``; ``&``/``|`` are accepted as aliases)::

    expr  := conj ("or" conj)*
    conj  := atom ("and" atom)*
    atom  := "(" expr ")" | "not" atom | COLUMN OP VALUE | COLUMN ["not"] "in" "[" VALUE ("," VALUE)* "]"
    OP    := == | != | < | <= | > | >=        (= is read as ==)
    VALUE := a number, a 'quoted' or "quoted" string, or a bare word (true/false for booleans)

Columns are checked against the table; values are compared with pandas boolean masks. Missing
values (NaN) never match a comparison except ``!=`` and ``not in``.
"""

from __future__ import annotations

import operator
import re

import pandas as pd

from npusim.errors import UserError

MAX_LENGTH = 4000  # characters of one filter
MAX_DEPTH = 32  # nesting of parentheses / not

_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<str>'[^']*'|"[^"]*")
  | (?P<num>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?![\w.\-/+%:]))
  | (?P<op>==|!=|<=|>=|<|>|=|&&?|\|\|?|[()\[\],])
  | (?P<word>[A-Za-z_][\w.\-/+%:]*)
""", re.VERBOSE)

_OPS = {"==": operator.eq, "=": operator.eq, "!=": operator.ne, "<": operator.lt,
        "<=": operator.le, ">": operator.gt, ">=": operator.ge}


class FilterError(UserError):
    """A filter that cannot be parsed or does not fit the table (one line)."""


def _tokens(text: str) -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise FilterError(f"unexpected character {text[pos]!r} at position {pos} "
                              "(expected column op value, joined by and/or)")
        pos = m.end()
        kind, tok = m.lastgroup, m.group()
        if kind == "ws":
            continue
        if kind == "str":
            out.append(("value", tok[1:-1]))
        elif kind == "num":
            out.append(("value", float(tok) if re.search(r"[.eE]", tok) else int(tok)))
        elif kind == "op":
            out.append(("op", {"&": "and", "&&": "and", "|": "or", "||": "or"}.get(tok, tok)))
        else:
            low = tok.lower()
            out.append(("op", low) if low in ("and", "or", "not", "in") else ("word", tok))
    return out


class _Parser:
    def __init__(self, df: pd.DataFrame, text: str):
        self.df, self.toks, self.i, self.depth = df, _tokens(text), 0, 0

    def peek(self) -> tuple[str, object] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, what: str = "more") -> tuple[str, object]:
        tok = self.peek()
        if tok is None:
            raise FilterError(f"unexpected end of filter (expected {what})")
        self.i += 1
        return tok

    def expect(self, op: str) -> None:
        if self.take(repr(op)) != ("op", op):
            raise FilterError(f"expected {op!r}, got {self.toks[self.i - 1][1]!r}")

    def is_op(self, *ops: str) -> bool:
        tok = self.peek()
        return tok is not None and tok[0] == "op" and tok[1] in ops

    def expr(self) -> pd.Series:
        mask = self.conj()
        while self.is_op("or"):
            self.take()
            mask = mask | self.conj()
        return mask

    def conj(self) -> pd.Series:
        mask = self.atom()
        while self.is_op("and"):
            self.take()
            mask = mask & self.atom()
        return mask

    def atom(self) -> pd.Series:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise FilterError(f"nested more than {MAX_DEPTH} deep")
        try:
            if self.is_op("("):
                self.take()
                mask = self.expr()
                self.expect(")")
                return mask
            if self.is_op("not"):
                self.take()
                return ~self.atom()
            return self.comparison()
        finally:
            self.depth -= 1

    def value(self) -> object:
        kind, v = self.take("a value")
        if kind == "op":
            raise FilterError(f"expected a value, got {v!r}")
        return v

    def comparison(self) -> pd.Series:
        kind, col = self.take("a column")
        if kind != "word":
            raise FilterError(f"expected a column name, got {col!r}")
        if col not in self.df.columns:
            raise FilterError(f"unknown column {col!r}; known: {', '.join(map(str, self.df.columns))}")
        s = self.df[col]
        negate = False
        if self.is_op("not"):
            self.take()
            negate = True
            if not self.is_op("in"):
                raise FilterError(f"expected 'in' after {col} not")
        if self.is_op("in"):
            self.take()
            self.expect("[")
            values = [self.value()]
            while self.is_op(","):
                self.take()
                values.append(self.value())
            self.expect("]")
            mask = pd.Series(False, index=s.index)
            for v in values:
                mask = mask | _compare(s, col, "==", v)
            return ~mask if negate else mask
        kind, op = self.take("an operator")
        if op not in _OPS:
            raise FilterError(f"expected an operator (== != < <= > >= in) after {col}, got {op!r}")
        return _compare(s, col, op, self.value())


def _compare(s: pd.Series, col: str, op: str, v: object) -> pd.Series:
    """The mask of `s op v`, with `v` read in the column's type."""
    fn = _OPS[op]
    if pd.api.types.is_bool_dtype(s):
        truth = {"true": True, "false": False, "1": True, "0": False}.get(str(v).lower())
        if truth is None:
            raise FilterError(f"column {col!r} is true/false, got {v!r}")
        return fn(s, truth).fillna(op == "!=").astype(bool)
    if pd.api.types.is_numeric_dtype(s) or not isinstance(v, str):
        if isinstance(v, str):
            try:
                v = float(v)
            except ValueError:
                raise FilterError(f"column {col!r} is numeric, got {v!r}") from None
        num = pd.to_numeric(s, errors="coerce")
        mask = fn(num, v)
    else:
        text = s.astype("string")
        mask = fn(text, v)
    if op == "!=":
        return mask.fillna(True).astype(bool) | s.isna()
    return mask.fillna(False).astype(bool) & s.notna()


def row_mask(df: pd.DataFrame, text: str) -> pd.Series:
    """The boolean mask of the rows of `df` that `text` (the filter language above) keeps."""
    if len(text) > MAX_LENGTH:
        raise FilterError(f"longer than {MAX_LENGTH} characters")
    p = _Parser(df, text)
    if not p.toks:
        raise FilterError("empty filter")
    mask = p.expr()
    if p.peek() is not None:
        raise FilterError(f"unexpected {p.peek()[1]!r} after a complete condition")
    return mask


def filter_rows(df: pd.DataFrame, text: str) -> pd.DataFrame:
    """The rows of `df` that the filter `text` keeps."""
    return df[row_mask(df, text)]
