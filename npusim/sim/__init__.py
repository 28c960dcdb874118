"""The bit-accurate simulator: `Simulator(config).run(program, images)`."""

from npusim.sim.simulator import SimResult, SimulationError, Simulator, run_many

__all__ = ["SimResult", "SimulationError", "Simulator", "run_many"]
