"""When a pass is worth more than one thread: the one rule the simulator's nodes
(`simulator.node_work`) and the int8 engine's input passes (`int8_engine.prologue`) share."""

#: work (multiply-accumulates) below which a pass runs on one thread: a parallel region waits
#: for every worker, which costs more than the work when the machine is busy (torch does the
#: same)
PARALLEL_MIN_WORK = 1 << 24
#: multiply-accumulates one element read or written stands for: a residual add's output costs
#: ~2.4 ns on one thread of the AVX2 EPYC, the engine's tiles ~15 GMAC/s (reports/BENCHMARKS.md
#: round 19; the input passes' window sums on a VNNI Xeon, round 20: ResNet-20 b64 exact 6%
#: faster with them on two threads from 2^19 elements than from 2^22)
ELEM_WORK = 32


def parallel(work: int) -> bool:
    """`work` (multiply-accumulates, or `ELEM_WORK` per element a pass reads and writes) is
    worth every thread."""
    return work >= PARALLEL_MIN_WORK
