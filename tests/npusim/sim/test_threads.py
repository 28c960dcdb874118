import numpy as np
import pytest

from npusim.sim import int8_engine
from npusim.sim.threads import ELEM_WORK, PARALLEL_MIN_WORK, parallel


def test_parallel_is_the_work_line():
    assert parallel(PARALLEL_MIN_WORK) and not parallel(PARALLEL_MIN_WORK - 1)


@pytest.mark.parametrize("images, serial", [(1, True), (41, True), (42, False), (64, False)])
def test_the_engines_input_pass_takes_every_thread_where_the_rule_says(monkeypatch, images,
                                                                        serial):
    """`int8_engine.prologue` runs its pass over the input (the uint8 operand, the window
    sums) on one thread below the line `threads.parallel` draws for `ELEM_WORK` per element,
    the line the simulator's nodes use: 16 x 28 x 28 maps serially up to 41 of them, on every
    thread from 42 (ResNet-20's 16-channel layers at batch 64: 2^19.6 elements)."""
    assert (images * 16 * 28 * 28 * ELEM_WORK < PARALLEL_MIN_WORK) == serial
    rng = np.random.default_rng(0)
    plan = int8_engine.prepare_int8_conv(rng.integers(-127, 128, (16, 16, 3, 3)), 1, 1, 1, 0,
                                         0, 255)
    x = rng.integers(0, 256, (images, 28, 28, 16)).astype(np.uint8)
    calls = []
    monkeypatch.setattr(int8_engine.numba, "get_num_threads", lambda: 2)
    monkeypatch.setattr(int8_engine.numba, "set_num_threads", calls.append)
    _, _, s, _ = int8_engine.prologue(x, plan, (28, 28))
    assert calls == ([1, 2] if serial else [])
    xp = np.pad(x.astype(np.int64) * (1 + np.arange(images) % 4)[:, None, None, None],
                ((0, 0), (1, 1), (1, 1), (0, 0)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(1, 2)).sum(axis=(0, 1, 2))
    np.testing.assert_array_equal(s[0].transpose(2, 0, 1), win)  # the window sums all the same
