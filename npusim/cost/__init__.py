"""Cost model (docs/npu_file.md): cycles, energy, power and storage per layer and per bit width.

`estimate_cost(program, npu)` -> `CostReport` (per-layer, per-component, totals and FP32 /
INT8 baselines); `action_counts` and `price` keep counts and energy-per-action apart;
`layer_mapping` is SCALE-Sim's systolic cycle and access model; `load_energy_table` reads a
versioned energy table (default ``horowitz45``). Importing this package does not import torch.
"""

from npusim.cost.energy_table import (
                                      EnergyTable,
                                      EnergyTableError,
                                      list_energy_tables,
                                      load_energy_table,
                                      table_for_npu,
)
from npusim.cost.estimate import COMPONENTS, CostReport, action_counts, charging_rules, estimate_cost, price
from npusim.cost.mapping import (
                                      Precision,
                                      gemm_dims,
                                      layer_mapping,
                                      network_mapping,
                                      program_precision,
                                      stored_bits,
                                      systolic_gemm,
)

__all__ = [
    "COMPONENTS",
    "CostReport",
    "EnergyTable",
    "EnergyTableError",
    "Precision",
    "action_counts",
    "charging_rules",
    "estimate_cost",
    "gemm_dims",
    "layer_mapping",
    "list_energy_tables",
    "load_energy_table",
    "network_mapping",
    "price",
    "program_precision",
    "stored_bits",
    "systolic_gemm",
    "table_for_npu",
]
