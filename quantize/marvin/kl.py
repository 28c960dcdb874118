"""Information loss of a fixed-point copy of a weight tensor: ``KL(P_float || P_fixed)``.

``P_float`` is the histogram of the float weights on ``bins`` equal bins over
``[-max|w|, max|w|]``. ``P_fixed`` is the distribution of the fixed-point copy (round to
nearest at ``<WL, FL>``) on the same bins, with each fixed-point value's mass spread uniformly
over its rounding cell ``[(q - 1/2) 2^-FL, (q + 1/2) 2^-FL)`` (clipped to the weights'
range): the density the fixed-point copy
stands for. Spreading the mass (rather than binning the discrete values) keeps the measure free
of aliasing between the fixed-point grid and the histogram bins -- a grid slightly coarser than
the bins would otherwise leave empty bins and an infinite KL at 8+ bits -- while a coarse grid
still flattens the histogram inside each cell and so registers the information lost. The
construction is the project's ([ours], docs/methods.md: MARViN metric).

NumPy only (the controller passes ``tensor.detach().cpu().numpy()``).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["KL_FLOOR", "fixed_point_kl", "histograms"]

# Probability floor for an empty P_fixed bin that P_float occupies (cannot happen with spread
# cells, kept so the divergence is always finite): 1e-12 is far below 1/N for any layer.
KL_FLOOR = 1e-12


def histograms(w: np.ndarray, word_bits: int, frac_bits: int, bins: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(edges, p_float, p_fixed)`` of a weight tensor on ``bins`` bins (see module doc)."""
    x = np.asarray(w, dtype=np.float64).ravel()
    n = x.size
    if n == 0:
        raise ValueError("histograms: empty weight tensor")
    m = float(np.abs(x).max())
    if m == 0.0 or not math.isfinite(m):
        edges = np.linspace(-1.0, 1.0, bins + 1)
        p = np.histogram(x, edges)[0] / n
        return edges, p, p.copy()
    edges = np.linspace(-m, m, bins + 1)
    p = np.histogram(x, edges)[0] / n
    half = 1 << (int(word_bits) - 1)
    step = math.ldexp(1.0, -int(frac_bits))
    q = np.sort(np.clip(np.round(x / step), -half, half - 1).astype(np.int64))
    # CDF of the spread fixed-point copy at each edge: whole cells below + the part of the
    # cell that contains the edge. Cells are clipped to [-max|w|, max|w|] (the weights' own
    # range), so the outermost levels do not pile their mass into the end bins.
    t = edges / step
    j = np.floor(t + 0.5)
    below = np.searchsorted(q, j, side="left").astype(np.float64)
    inside = np.searchsorted(q, j, side="right") - below
    lo = np.maximum((j - 0.5) * step, -m)
    hi = np.minimum((j + 0.5) * step, m)
    width = hi - lo
    frac = np.where(width > 0, (edges - lo) / np.where(width > 0, width, 1.0), 1.0)
    cdf = below + inside * np.clip(frac, 0.0, 1.0)
    cdf[0], cdf[-1] = 0.0, float(n)
    pq = np.clip(np.diff(cdf), 0.0, None) / n
    return edges, p, pq


def fixed_point_kl(w: np.ndarray, word_bits: int, frac_bits: int, bins: int = 256,
                   bias_correction: bool = True) -> float:
    """``KL(P_float || P_fixed)`` in nats (see the module docstring).

    With `bias_correction` the divergence a sample of ``n`` weights shows by chance alone is
    subtracted (Miller-Madow / chi-square: ``E[2n KL] ~ B - 1`` for ``B`` occupied bins when
    the weights are drawn from ``P_fixed``), floored at 0. Without it a layer's KL has a noise
    floor of about ``B / 2n`` (0.06 nats for 2,000 weights on 256 bins, measured), so small
    layers could never meet a small ``eps`` at any word length below ~12 bits.
    """
    x = np.asarray(w).ravel()
    _, p, q = histograms(x, word_bits, frac_bits, bins)
    mask = p > 0
    kl = float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], KL_FLOOR))))
    if bias_correction:
        kl = max(0.0, kl - (int(np.count_nonzero(q)) - 1) / (2.0 * x.size))
    return kl
