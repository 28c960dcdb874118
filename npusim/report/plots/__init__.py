"""Figures from sweep results: PNG plus the CSV behind each (docs/architecture.md). Importing this
package does not import matplotlib; drawing the first figure does (Agg, no display)."""

from npusim.report.plots.figures import (
                                  accumulator_ranges,
                                  accuracy_vs_acc_bits,
                                  axis_label,
                                  custom,
                                  energy_vs_accuracy,
                                  layer_energy,
                                  pareto_front,
                                  save,
                                  savings,
)
from npusim.report.plots.marvin import precision_heatmap, training_savings

__all__ = ["accumulator_ranges", "accuracy_vs_acc_bits", "axis_label", "custom",
           "energy_vs_accuracy", "layer_energy", "pareto_front", "precision_heatmap", "save",
           "savings", "training_savings"]
