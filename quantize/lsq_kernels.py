"""LSQ's fake quantization and its closed-form backward (`quantizers._LSQFunction`) as numba
kernels over CPU float32/float64 tensors: one pass over a tensor each way, where torch's
elementwise ops made four (forward) and eleven (backward). The forward is torch's to the bit
(``round(x / s).clamp(qmin, qmax) * s``: IEEE division, ties to even, NaN kept); so is the
input gradient; the step gradient sums the same per-element terms in float64 rather than in
torch's order (tests/quantize/test_lsq_kernels.py holds both to torch's formulas)."""

from __future__ import annotations

import numba
import numpy as np
import torch

_BLOCK = 1 << 14  # elements per parallel task


def usable(x: torch.Tensor, step: torch.Tensor) -> bool:
    """The kernels take `x` and `step`: CPU float32 or float64 tensors of one dtype (a step of
    another dtype keeps torch's type promotion: its ops)."""
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
            and step.device.type == "cpu" and step.dtype == x.dtype)


def _rows(t: torch.Tensor, c: int) -> np.ndarray:
    """`t` as a C-contiguous (c, -1) NumPy view (copied where not contiguous)."""
    return t.detach().contiguous().numpy().reshape(c, -1)


def forward(x: torch.Tensor, step: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """``round(x / s).clamp(qmin, qmax) * s`` with `step` a scalar or one step per slice of
    dim 0 (`usable` x, step in x's dtype)."""
    c = step.numel() if step.dim() else 1
    out = torch.empty(x.shape, dtype=x.dtype)
    dt = np.float32 if x.dtype == torch.float32 else np.float64
    _forward(_rows(x, c), _rows(step, c)[:, 0], dt(qmin), dt(qmax), out.numpy().reshape(c, -1))
    return out


def backward(x: torch.Tensor, step: torch.Tensor, grad: torch.Tensor, qmin: int, qmax: int,
             want_gx: bool) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(``grad`` where ``qmin <= x / s <= qmax`` else 0, or None without `want_gx`; per step,
    the sum of ``(q - u) * grad`` inside the range and ``q * grad`` outside, with
    ``u = x / s`` and ``q = round(u).clamp(qmin, qmax)``) in `step`'s shape."""
    c = step.numel() if step.dim() else 1
    xr = _rows(x, c)
    nb = -(-xr.shape[1] // _BLOCK)
    gx = torch.empty(x.shape, dtype=x.dtype) if want_gx else torch.empty(0, dtype=x.dtype)
    part = np.empty((c, nb), np.float64)
    dt = np.float32 if x.dtype == torch.float32 else np.float64
    _backward(xr, _rows(grad.to(x.dtype), c), _rows(step, c)[:, 0], dt(qmin), dt(qmax),
              want_gx, gx.numpy().reshape(c if want_gx else 1, -1), part)
    gs = torch.from_numpy(part.sum(axis=1)).to(step.dtype).reshape(step.shape)
    return (gx if want_gx else None), gs


@numba.njit(inline="always")
def _level(u, qmin, qmax):
    """``round(u).clamp(qmin, qmax)`` as torch computes it: ties to even; comparisons, not
    min/max, so a NaN stays NaN as torch's clamp keeps it."""
    q = np.rint(u)
    if q < qmin:
        return qmin
    if q > qmax:
        return qmax
    return q


@numba.njit(parallel=True, cache=True)
def _forward(x, s, qmin, qmax, out):
    c_n, m = x.shape
    nb = (m + _BLOCK - 1) // _BLOCK
    for t in numba.prange(c_n * nb):
        c = t // nb
        b = t - c * nb
        sc = s[c]
        for i in range(b * _BLOCK, min(m, (b + 1) * _BLOCK)):
            out[c, i] = _level(x[c, i] / sc, qmin, qmax) * sc


# reassociation only (no reciprocals, no contraction, no finite-math assumptions): the step
# gradient's float64 sum vectorizes instead of one dependent add per element (3x the time);
# every per-element value is computed exactly as without it
@numba.njit(parallel=True, cache=True, fastmath={"reassoc"})
def _backward(x, g, s, qmin, qmax, want_gx, gx, part):
    c_n, m = x.shape
    nb = (m + _BLOCK - 1) // _BLOCK
    one = x.dtype.type(1)
    zero = x.dtype.type(0)
    for t in numba.prange(c_n * nb):
        c = t // nb
        b = t - c * nb
        sc = s[c]
        acc = 0.0
        for i in range(b * _BLOCK, min(m, (b + 1) * _BLOCK)):
            u = x[c, i] / sc
            inside = (u >= qmin) & (u <= qmax)  # NaN and +-inf are outside
            gi = g[c, i]
            if want_gx:
                gx[c, i] = gi * (one if inside else zero)  # torch's grad * inside
            # a select, not a product: a non-finite u outside gives q
            acc += (_level(u, qmin, qmax) - (u if inside else zero)) * gi
        part[c, b] = acc
