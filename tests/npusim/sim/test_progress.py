"""`Simulator.run(progress=...)`: a bar of batches on stderr when asked, nothing otherwise, and
the same result either way."""

import numpy as np

from npusim.hw.config import NPUConfig
from npusim.sim.simulator import Simulator
from tests.npusim.cost.test_mapping import residual_program


def test_progress_bar_goes_to_stderr_and_changes_nothing(capsys):
    prog = residual_program()
    shape = prog.tensors[prog.input].shape
    images = np.random.default_rng(0).integers(0, 256, size=(10, *shape), dtype=np.uint8)
    sim = Simulator(NPUConfig.preset("edge16"))
    quiet = sim.run(prog, images, batch_size=4)
    assert capsys.readouterr().err == ""
    shown = sim.run(prog, images, batch_size=4, progress=True)
    assert "simulate" in capsys.readouterr().err
    for k in quiet.outputs:
        assert np.array_equal(quiet.outputs[k], shown.outputs[k])
