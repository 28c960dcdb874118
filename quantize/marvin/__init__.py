"""MARViN: fixed-point training with per-layer word lengths switched within epochs by a KL
rule and a vanishing-gradient guard (docs/methods.md, MARViN). The training cost of a run is
estimated by `npusim.cost.training`."""

from quantize.marvin.config import MarvinConfig, MarvinConfigError
from quantize.marvin.controller import PrecisionController, propose_word_bits, sqnr_db
from quantize.marvin.fixed_point import frac_bits_for, quantize_fixed
from quantize.marvin.kl import fixed_point_kl
from quantize.marvin.layers import LayerFormat, attach, detach, marvin_layers
from quantize.marvin.train import MarvinResult, layer_geometry, save_run, train_marvin

__all__ = ["sqnr_db", "LayerFormat", "MarvinConfig", "MarvinConfigError", "MarvinResult",
           "PrecisionController", "attach", "detach", "fixed_point_kl", "frac_bits_for",
           "layer_geometry", "marvin_layers", "propose_word_bits", "quantize_fixed",
           "save_run", "train_marvin"]
