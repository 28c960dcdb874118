"""Commands on one program: inspect, simulate, bounds, cost, presets."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from npusim.cli.common import _fail, app


@app.command()
def inspect(program: Path = typer.Argument(..., help="An IntegerProgram file.")) -> None:
    """Print an IntegerProgram's nodes, shapes, bits, scales and shifts."""
    from npusim.ir.program import load_program
    from npusim.report.inspect import program_table

    prog = load_program(program)
    typer.echo(f"{program}: {len(prog.nodes)} nodes, input {prog.input} "
               f"{list(prog.tensors[prog.input].shape)}, requant {prog.requant}")
    typer.echo(program_table(prog).to_string(index=False))


def _echo_requant_changes(cfg, prog) -> None:
    """One line where the NPU's pinned [requant] keys override the program's."""
    from npusim.ir.requant import RequantSpec, changes_text

    changes = cfg.requant.changes(RequantSpec.from_dict(prog.requant))
    if changes:
        typer.echo(f"requant: the NPU's [requant] differs from the program's: "
                   f"{changes_text(changes)}")


def _load_npu(npu: str, sets: list[str]):
    from npusim.hw.config import NPUConfig, parse_set_option

    cfg = NPUConfig.load(npu)
    return cfg.with_overrides(parse_set_option(sets)) if sets else cfg


@app.command()
def simulate(
    program: Path = typer.Argument(..., help="An IntegerProgram file."),
    npu: str = typer.Option("edge16", help="NPU preset name or TOML file."),
    data: Optional[str] = typer.Option(None, help="Data set (default: the one it was trained on)."),
    split: str = typer.Option("test", help="Data split."),
    limit: Optional[int] = typer.Option(None, min=1, help="Simulate only the first N images."),
    set_: list[str] = typer.Option([], "--set", help="Override an NPU field: key=value."),
    csv: Optional[Path] = typer.Option(None, help="Write the per-layer table as CSV."),
    root: Optional[str] = typer.Option(None, help="Data directory (cifar10)."),
    engine: str = typer.Option("auto", help="Conv engine: auto, reference, float or int8."),
) -> None:
    """Simulate a program bit-accurately on a virtual NPU; print top-1 and per-layer stats."""
    import time

    from npusim.data import load_dataset
    from npusim.io import check_output_path
    from npusim.ir.program import load_program
    from npusim.sim.simulator import Simulator, overflow_rate

    if csv is not None:
        check_output_path(csv, "--csv")
    prog = load_program(program)
    cfg = _load_npu(npu, set_)
    name = data or prog.meta.get("dataset")
    if not name:
        _fail("--data: the program does not record its data set; name one")
    ds = load_dataset(name, split, root=root).subset(limit)
    t0 = time.perf_counter()
    sim = Simulator(cfg, engine=engine)
    res = sim.run(prog, ds.images)
    secs = time.perf_counter() - t0
    out = prog.outputs[0]
    shape = list(prog.tensors[out].shape)
    if [d for d in shape if d != 1] == [ds.num_classes]:
        top1 = f"top-1 {100 * res.accuracy(ds.labels):.2f}%"
    else:  # an argmax over anything else is no accuracy
        top1 = f"no top-1 (output {out!r} {shape} is not {ds.num_classes} class scores)"
    typer.echo(f"{cfg.name}: {len(ds)} {name}/{split} images in {secs:.1f} s "
               f"({sim.engine_used} engine), {top1}, overflow rate {overflow_rate(res.stats):.2e}")
    _echo_requant_changes(cfg, prog)
    cols = ["layer", "op", "output_shape", "macs_per_image", "pe_overflows", "acc_overflows",
            "acc_min", "acc_max", "observed_bits", "bound_l1_bits", "bound_dtype_bits"]
    typer.echo(res.stats[[c for c in cols if c in res.stats]].to_string(index=False))
    if csv is not None:
        from npusim.io import write_csv

        write_csv(res.stats, csv)
        typer.echo(f"per-layer table: {csv}")


@app.command()
def bounds(
    program: Path = typer.Argument(..., help="An IntegerProgram file."),
    data: Optional[str] = typer.Option(None, help="Also simulate this data set for observed bits."),
    limit: int = typer.Option(200, min=1, help="Images to observe."),
) -> None:
    """Per-layer accumulator bits a program needs: data-type bound, exact weight bound, observed."""
    from npusim.ir.program import load_program
    from npusim.report.inspect import bounds_table

    prog = load_program(program)
    images = None
    if data:
        from npusim.data import load_dataset

        images = load_dataset(data, "test").subset(limit).images
    typer.echo(bounds_table(prog, images).to_string(index=False))


def _baselines_csv(csv: Path) -> Path:
    return csv.with_name(f"{csv.stem}_baselines.csv")


@app.command()
def cost(
    program: Optional[Path] = typer.Argument(None, help="An IntegerProgram file."),
    npu: str = typer.Option("edge16", help="NPU preset name or TOML file."),
    set_: list[str] = typer.Option([], "--set", help="Override an NPU field: key=value."),
    energy_table: Optional[str] = typer.Option(
        None, help="Energy table: a shipped name or a TOML file (default: the NPU's)."),
    csv: Optional[Path] = typer.Option(
        None, help="Write the per-layer table here (and the baselines to *_baselines.csv)."),
    data: Optional[str] = typer.Option(
        None, help="Simulate this data set for non-zero MAC counts (default: static counts)."),
    split: str = typer.Option("test", help="Data split (with --data)."),
    limit: int = typer.Option(100, min=1, help="Images to simulate (with --data)."),
    batch: int = typer.Option(1, min=1, help="Images per batch: weights that fit the weight "
                              "SRAM are read from DRAM once per batch."),
    sources: bool = typer.Option(False, "--sources", help="Print every energy number with its "
                                 "source and how composite actions are charged, then exit."),
) -> None:
    """Energy, latency, power and storage of a program, with FP32 and INT8 baselines."""
    import pandas as pd

    from npusim.cost import charging_rules, estimate_cost, table_for_npu
    from npusim.io import check_output_path

    if csv is not None:
        check_output_path(csv, "--csv")
        check_output_path(_baselines_csv(csv), "--csv (its baselines)")
    sets = list(set_) + ([f"technology.energy_table={energy_table}"] if energy_table else [])
    cfg = _load_npu(npu, sets)
    table = table_for_npu(cfg)
    if sources:
        typer.echo(f"energy table {table.label} ({table.path}), node {table.node_nm:g} nm, "
                   f"{table.supply_v:g} V: {table.data.description}")
        for r in table.sources().itertuples(index=False):
            typer.echo(f"{r.entry:26s} {r.value} {r.unit}\n{'':26s} source: {r.source}")
        typer.echo("how composite actions are charged:")
        for r in charging_rules().itertuples(index=False):
            typer.echo(f"{r.action:26s} {r.charged_as}")
        return
    if program is None:
        _fail("PROGRAM: an IntegerProgram file is needed (or use --sources)")
    from npusim.ir.program import load_program

    prog = load_program(program)
    stats = None
    if data is not None:
        from npusim.data import load_dataset
        from npusim.sim.simulator import Simulator

        ds = load_dataset(data, split).subset(limit)
        stats = Simulator(cfg).run(prog, ds.images).stats
    rep = estimate_cost(prog, cfg, stats=stats, images=batch, table=table)
    tot = rep.total
    a = cfg.array
    typer.echo(f"{program}: {cfg.name} ({a.rows}x{a.cols} {a.dataflow}, {a.clock_mhz:g} MHz), "
               f"energy table {table.label}, batch {batch}, {tot['counts_source']} counts"
               + (f" ({len(ds)} {data}/{split} images)" if stats is not None else "")
               + (", weights resident in SRAM" if tot["weights_resident"] else ""))
    _echo_requant_changes(cfg, prog)
    lay = rep.layers
    view = pd.DataFrame({
        "layer": lay["layer"], "op": lay["op"], "macs": lay["macs"], "cycles": lay["cycles"],
        "latency_us": lay["latency_us"].round(2), "energy_nj": (lay["energy_pj"] / 1e3).round(2),
        **{f"{c}_%": (100 * lay[f"{c}_pj"] / lay["energy_pj"].where(lay["energy_pj"] > 0)).round(1)
           for c in ("mac", "accumulator", "sram", "dram")}})
    typer.echo(view.to_string(index=False))
    e = tot["energy_per_image_pj"]
    split_txt = ", ".join(f"{c} {100 * tot[f'{c}_pj'] / e:.1f}%" for c in
                          ("mac", "operand", "accumulator", "requant", "vector", "sram",
                           "lookup", "dram", "leakage") if tot[f"{c}_pj"]) if e else ""
    typer.echo(f"total: {e / 1e6:.3f} uJ/image ({split_txt}); latency {tot['latency_us']:.1f} us "
               f"({tot['cycles']} cycles, {tot['stall_cycles']} stall); avg power "
               f"{tot['avg_power_mw']:.2f} mW (leakage {tot['leakage_power_mw']:.2f} mW); weights "
               f"{tot['weight_storage_bytes'] / 1024:.2f} KiB; peak activations "
               f"{tot['peak_activation_bytes'] / 1024:.2f} KiB")
    base = rep.baselines
    typer.echo(pd.DataFrame({
        "variant": base["variant"], "energy_uj": base["energy_per_image_uj"].round(3),
        "latency_us": base["latency_us"].round(1), "avg_power_mw": base["avg_power_mw"].round(2),
        "weights_kib": (base["weight_storage_bytes"] / 1024).round(2),
        "energy_saving": base["energy_saving"].round(2),
        "storage_saving": base["storage_saving"].round(2)}).to_string(index=False))
    if csv is not None:
        from npusim.io import write_csv

        write_csv(rep.layers, csv)
        write_csv(rep.baselines, _baselines_csv(csv))
        typer.echo(f"per-layer table: {csv}")


@app.command()
def presets() -> None:
    """List the NPU presets shipped with npusim."""
    from npusim.hw.config import NPUConfig, list_presets

    for name in list_presets():
        cfg = NPUConfig.preset(name)
        a, p = cfg.array, cfg.precision
        typer.echo(f"{name:8s} {a.rows}x{a.cols} {a.dataflow} {a.clock_mhz:g} MHz, "
                   f"acc {p.pe_acc_bits}/{p.acc_bits} bits {p.overflow}: {cfg.description}")


# ----------------------------------------------------------------------- sweeps & reports
