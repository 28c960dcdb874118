"""What the simulator tests share: an NPU at one narrow width, and a run checked against the
reference engine (the order-faithful kernel on every output)."""

import numpy as np

from npusim.hw.config import NPUConfig
from npusim.sim.simulator import SimResult, Simulator


def narrow_npu(dataflow: str, rows: int, bits: int, mode: str) -> NPUConfig:
    """edge16 with both levels at `bits` in overflow `mode`, `dataflow` on `rows` rows."""
    return NPUConfig.preset("edge16").with_overrides(
        {"array.dataflow": dataflow, "array.rows": rows, "precision.acc_bits": bits,
         "precision.pe_acc_bits": bits, "precision.overflow": mode})


def equals_reference(cfg: NPUConfig, prog, x: np.ndarray, runs: int = 1) -> SimResult:
    """Run `prog` on `x` with the default engine (`runs` times: later batches take the paths
    the earlier ones' hints chose) and the reference engine; assert equal outputs, event
    counts and accumulator extremes; return the default engine's last result."""
    ref = Simulator(cfg, engine="reference").run(prog, x)
    sim = Simulator(cfg)
    for _ in range(runs):
        fast = sim.run(prog, x)
        np.testing.assert_array_equal(fast.outputs["y"], ref.outputs["y"])
        cols = ["pe_overflows", "acc_overflows", "acc_min", "acc_max"]
        assert fast.stats[cols].equals(ref.stats[cols])
    return fast
