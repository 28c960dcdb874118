"""Integer-exact evaluation: the program run by the simulator on an ideal NPU.

`run_integer(program, images)` is `npusim.sim.Simulator.run` on `NPUConfig.ideal` (exact,
unbounded accumulators, a datapath wide enough for any program) with the program's own
requant settings: there is one interpreter of an IntegerProgram, and what training reports as
integer accuracy is what the NPU computes.
"""

from __future__ import annotations

import numpy as np

from npusim.hw.config import NPUConfig
from npusim.ir.program import IntegerProgram
from npusim.ir.requant import RequantSpec
from npusim.sim import Simulator


def ideal_npu(program: IntegerProgram, settings: RequantSpec | None = None) -> NPUConfig:
    """The ideal NPU for `program`: exact accumulators and its (or `settings`') requant."""
    return NPUConfig.ideal(settings.to_dict() if settings is not None else None)


def run_integer(program: IntegerProgram, images: np.ndarray,
                settings: RequantSpec | None = None, batch_size: int = 256) -> np.ndarray:
    """Integer logits of `program` on uint8 `images` (N, C, H, W), exact accumulators."""
    sim = Simulator(ideal_npu(program, settings))
    return sim.run(program, images, batch_size=batch_size).logits
