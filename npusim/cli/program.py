"""Commands on one program: inspect, simulate, bounds, cost, presets."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from npusim.cli.common import DATA_HELP, ROOT_HELP, _check_data, _fail, app


def _write_table(df, csv: Optional[Path], what: str) -> None:
    if csv is not None:
        from npusim.io import write_csv

        write_csv(df, csv)
        typer.echo(f"{what}: {csv}")


@app.command()
def inspect(
    program: Path = typer.Argument(..., help="An IntegerProgram file."),
    csv: Optional[Path] = typer.Option(None, help="Write the full per-node table (attributes "
                                       "and input names included) as CSV."),
) -> None:
    """Print an IntegerProgram's nodes, shapes, bits, scales and shifts."""
    from npusim.io import check_output_path
    from npusim.ir.program import load_program
    from npusim.report.inspect import program_screen, program_table

    if csv is not None:
        check_output_path(csv, "--csv")
    prog = load_program(program)
    rq = prog.requant
    typer.echo(f"{program}: {len(prog.nodes)} nodes, input {prog.input} "
               f"{list(prog.tensors[prog.input].shape)}; requant {rq.get('scale_mode')} "
               f"{rq.get('multiplier_bits')}-bit {rq.get('rounding')}")
    table = program_table(prog)
    typer.echo(program_screen(table).to_string(index=False))
    _write_table(table, csv, "per-node table")


def _echo_requant_changes(cfg, prog) -> None:
    """One line where the NPU's pinned [requant] keys override the program's."""
    from npusim.ir.requant import RequantSpec, changes_text

    changes = cfg.requant.changes(RequantSpec.from_dict(prog.requant))
    if changes:
        typer.echo(f"requant: the NPU's [requant] differs from the program's: "
                   f"{changes_text(changes)}")


def _shorthands(sets: list[str], acc_bits: Optional[int], overflow: Optional[str]) -> list[str]:
    """``--set`` items with the ``--acc-bits`` / ``--overflow`` shorthands added."""
    out = list(sets)
    if acc_bits is not None:
        out += [f"precision.pe_acc_bits={acc_bits}", f"precision.acc_bits={acc_bits}"]
    if overflow is not None:
        out.append(f"precision.overflow={overflow}")
    return out


def _check_runnable(cfg, prog, npu: str) -> None:
    """The one check `simulate` and `cost` share, before any data is read: the NPU's
    [[layer]] patterns match nodes of the program (named by `npu`), and it can run every node
    (`npusim.sim.simulator.check_runnable`: datapath widths, accumulators, requant)."""
    from npusim.sim.simulator import check_runnable

    cfg.check_layers([n.name for n in prog.nodes], source=npu)
    check_runnable(cfg, prog)


def _rate_text(stats) -> str:
    """The overflow rate of a run, or why there is none."""
    import math

    from npusim.sim.simulator import overflow_rate

    rate = overflow_rate(stats)
    return "not counted (--no-count-events)" if math.isnan(rate) else f"{rate:.2e} events per MAC"


def _load_npu(npu: str, sets: list[str]):
    from npusim.hw.config import NPUConfig, parse_set_option

    cfg = NPUConfig.load(npu)
    return cfg.with_overrides(parse_set_option(sets)) if sets else cfg


@app.command()
def simulate(
    program: Path = typer.Argument(..., help="An IntegerProgram file."),
    npu: str = typer.Option("edge16", help="NPU preset name or TOML file."),
    data: Optional[str] = typer.Option(None, help=DATA_HELP + " Default: the program's."),
    split: str = typer.Option("test", help="Data split."),
    limit: Optional[int] = typer.Option(None, min=1, help="Simulate only the first N images."),
    set_: list[str] = typer.Option([], "--set", help="Override an NPU field: key=value "
                                   "(a [[layer]] table: layer[0].precision.acc_bits=24)."),
    acc_bits: Optional[int] = typer.Option(None, help="Shorthand: both accumulator levels "
                                           "of the body (--set precision.{pe_,}acc_bits=N)."),
    overflow: Optional[str] = typer.Option(None, help="Shorthand for --set precision.overflow"
                                           "=...: exact, wrap or saturate."),
    csv: Optional[Path] = typer.Option(None, help="Write the per-layer table as CSV."),
    predictions: Optional[Path] = typer.Option(
        None, help="Write each image's label and predicted class as CSV."),
    root: Optional[str] = typer.Option(None, help=ROOT_HELP),
    engine: str = typer.Option("auto", help="Conv engine: auto, reference, float or int8."),
    count_events: bool = typer.Option(
        True, "--count-events/--no-count-events",
        help="Count overflow events. Off: layers whose accumulators only wrap skip the "
             "order-faithful walk (same outputs, events shown as <NA>)."),
) -> None:
    """Simulate a program bit-accurately on a virtual NPU; print top-1 and per-layer stats."""
    import time

    from npusim.data import load_dataset
    from npusim.io import check_output_path
    from npusim.ir.program import load_program
    from npusim.sim.simulator import Simulator

    for path, opt in ((csv, "--csv"), (predictions, "--predictions")):
        if path is not None:
            check_output_path(path, opt)
    prog = load_program(program)
    cfg = _load_npu(npu, _shorthands(set_, acc_bits, overflow))
    _check_runnable(cfg, prog, npu)
    name = data or prog.meta.get("dataset")
    if not name:
        _fail("--data: the program does not record its data set; name one")
    _check_data(name)
    ds = load_dataset(name, split, root=root).subset(limit)
    t0 = time.perf_counter()
    sim = Simulator(cfg, engine=engine, count_events=count_events)
    res = sim.run(prog, ds.images, progress=None)
    secs = time.perf_counter() - t0
    out = prog.outputs[0]
    shape = list(prog.tensors[out].shape)
    if [d for d in shape if d != 1] == [ds.num_classes]:
        top1 = f"top-1 {100 * res.accuracy(ds.labels):.2f}%"
    else:  # an argmax over anything else is no accuracy
        top1 = f"no top-1 (output {out!r} {shape} is not {ds.num_classes} class scores)"
    typer.echo(f"{cfg.name}: {len(ds)} {name}/{split} images in {secs:.1f} s "
               f"({sim.engine.label}), {top1}, overflow rate {_rate_text(res.stats)}")
    _echo_requant_changes(cfg, prog)
    cols = ["layer", "op", "output_shape", "macs_per_image", "pe_acc_bits", "acc_bits",
            "overflow", "pe_overflows", "acc_overflows", "acc_min", "acc_max", "observed_bits",
            "bound_l1_bits", "bound_dtype_bits"]
    typer.echo(res.stats[[c for c in cols if c in res.stats]].to_string(index=False))
    if csv is not None:
        from npusim.io import write_csv

        write_csv(res.stats, csv)
        typer.echo(f"per-layer table: {csv}")
    if predictions is not None:
        _write_predictions(predictions, ds, res.predictions)


def _write_predictions(path: Path, ds, predicted) -> None:
    """One row per image: its index, label and prediction (with class names if known)."""
    import pandas as pd

    from npusim.io import write_csv

    table = pd.DataFrame({"image": range(len(ds)), "label": ds.labels, "predicted": predicted})
    if ds.classes:
        names = list(ds.classes)
        table["label_name"] = [names[i] for i in ds.labels]
        table["predicted_name"] = [names[i] if 0 <= i < len(names) else "" for i in predicted]
    write_csv(table, path)
    typer.echo(f"predictions: {path}")


@app.command()
def bounds(
    program: Path = typer.Argument(..., help="An IntegerProgram file."),
    data: Optional[str] = typer.Option(None, help="Also simulate this data set for observed "
                                       "bits. " + DATA_HELP),
    split: str = typer.Option("test", help="Data split (with --data)."),
    limit: int = typer.Option(200, min=1, help="Images to observe."),
    root: Optional[str] = typer.Option(None, help=ROOT_HELP),
    csv: Optional[Path] = typer.Option(None, help="Write the per-layer table as CSV."),
    suggest: bool = typer.Option(False, "--suggest", help="Write per-layer [[layer]] tables "
                                 "with the narrowest safe accumulator widths (an NPU config)."),
    basis: Optional[str] = typer.Option(None, help="With --suggest: widths 'bound' (safe for "
                                        "any input, the default) or 'observed' (no overflow "
                                        "on --data, the default with --data)."),
    npu: str = typer.Option("edge16", help="With --suggest: the base NPU (its dataflow and "
                            "rows decide the pe level)."),
    set_: list[str] = typer.Option([], "--set", help="With --suggest: override a base NPU "
                                   "field: key=value."),
    out: Optional[Path] = typer.Option(None, help="With --suggest: write the TOML here "
                                       "(default: stdout)."),
) -> None:
    """Per-layer accumulator bits a program needs: data-type bound, exact weight bound, observed.

    With --suggest: the narrowest width per layer that the exact weight (L1) bound proves safe
    and, with --data, the narrowest whose running sums (both levels, exact simulation) never
    overflowed on the data, as a ready NPU config: the base NPU with one [[layer]] table per
    conv/linear node (its own name as the pattern; the base's tables are replaced)."""
    from npusim.io import check_output_path
    from npusim.ir.program import load_program
    from npusim.report.inspect import bounds_table

    if not suggest and (basis or out):
        _fail("--basis / --out: only with --suggest")
    if basis not in (None, "bound", "observed"):
        _fail(f"--basis: expected bound or observed, got {basis!r}")
    if basis == "observed" and not data:
        _fail("--basis observed: needs --data (the images to observe)")
    if suggest and csv is not None:
        _fail("--csv: not with --suggest (it writes the TOML to --out)")
    if data:
        _check_data(data)
    for path, opt in ((csv, "--csv"), (out, "--out")):
        if path is not None:
            check_output_path(path, opt)
    prog = load_program(program)
    cfg = _load_npu(npu, set_) if suggest else None
    images = None
    if data:
        from npusim.data import load_dataset

        images = load_dataset(data, split, root=root).subset(limit).images
    if not suggest:
        table = bounds_table(prog, images)
        typer.echo(table.to_string(index=False))
        _write_table(table, csv, "per-layer table")
        return
    from npusim.report.inspect import suggest_widths

    df = suggest_widths(prog, images, cfg.array.dataflow, cfg.array.rows)
    basis = basis or ("observed" if data else "bound")
    text = _suggest_toml(cfg, df, basis, f"{data}/{split}, {len(images)} images" if data else "")
    if out is None:
        typer.echo(text, nl=False)
        return
    from npusim.io import atomic_write_bytes

    atomic_write_bytes(out, text.encode("utf-8"))
    typer.echo(f"suggested widths ({basis}): {out}", err=True)


def _suggest_toml(cfg, df, basis: str, observed_on: str) -> str:
    """`cfg` as TOML with one [[layer]] table per row of `df` at the `basis` widths, each
    preceded by a comment giving both the bound's and the observed widths."""
    from npusim.hw.config import layer_tables_toml

    body = cfg.model_copy(update={"layer": []}).to_toml()
    lines = [f"# [[layer]] widths: {basis} "
             + ("(the exact weight L1 bound: safe for any input)" if basis == "bound" else
                f"(no overflow on {observed_on}; NOT proven for other inputs)"),
             f"# for a {cfg.array.rows}-row {cfg.array.dataflow} array; written by "
             "npusim bounds --suggest", body.rstrip("\n")]
    has_obs = "observed_acc_bits" in df
    for r in df.to_dict("records"):
        note = (f"# {r['layer']}: product {r['product_bits']} b; L1 bound acc "
                f"{r['bound_acc_bits']} / pe {r['bound_pe_acc_bits']}")
        if has_obs:
            note += (f"; observed ({observed_on}) acc {r['observed_acc_bits']} / pe "
                     f"{r['observed_pe_acc_bits']}")
        table = {"match": r["match"], "precision": {
            "pe_acc_bits": int(r[f"{basis}_pe_acc_bits"]), "acc_bits": int(r[f"{basis}_acc_bits"])}}
        tl = layer_tables_toml([table])
        lines += ["", note, *tl[1:]]
    return "\n".join(lines) + "\n"


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
        None, help="Simulate this data set for non-zero MAC counts (default: static counts). "
        + DATA_HELP),
    split: str = typer.Option("test", help="Data split (with --data)."),
    root: Optional[str] = typer.Option(None, help=ROOT_HELP),
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
    if data is not None:
        _check_data(data)
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
    _check_runnable(cfg, prog, npu)
    stats = None
    if data is not None:
        from npusim.data import load_dataset
        from npusim.sim.simulator import Simulator

        ds = load_dataset(data, split, root=root).subset(limit)
        stats = Simulator(cfg).run(prog, ds.images, progress=None).stats
    rep = estimate_cost(prog, cfg, stats=stats, images=batch, table=table)
    tot = rep.total
    a = cfg.array
    typer.echo(f"{program}: {cfg.name} ({a.rows}x{a.cols} {a.dataflow}, {a.clock_mhz:g} MHz), "
               f"energy table {table.label}, batch {batch}, {tot['counts_source']} counts"
               + (f" ({len(ds)} {data}/{split} images)" if stats is not None else "")
               )
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
    typer.echo(_dram_text(tot, cfg))
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


def _dram_text(tot: dict, cfg) -> str:
    """DRAM traffic and energy per image split into weights and activations, and why: whether
    the weights stay resident in the weight SRAM and whether activations spill at this batch."""
    kib = 1024
    if tot["weights_resident"]:
        w_why = (f"all weights fit the {cfg.memory.weight_sram_kib:g} KiB weight SRAM and stay "
                 f"resident (no weight traffic in steady state)")
    elif tot["weights_fit_sram"]:
        w_why = (f"weights do not all fit the {cfg.memory.weight_sram_kib:g} KiB weight SRAM: "
                 f"each layer's are read once per batch of {tot['batch']}")
    else:
        w_why = "a layer's weights exceed the weight SRAM: read for every image"
    spill = tot["activation_spill_layers"]
    a_why = (f"activations spill to DRAM in {spill} layer(s): the batch's live activations "
             f"exceed the\n  {cfg.memory.activation_sram_kib:g} KiB activation SRAM, so "
             f"energy per image can rise with the batch" if spill else
             f"activations stay in the {cfg.memory.activation_sram_kib:g} KiB activation SRAM "
             f"(only the input and the logits move)")
    return (f"DRAM per image: weights {tot['dram_weight_bytes'] / kib:.2f} KiB "
            f"({tot['dram_weight_pj'] / 1e3:.2f} nJ), activations "
            f"{tot['dram_activation_bytes'] / kib:.2f} KiB "
            f"({tot['dram_activation_pj'] / 1e3:.2f} nJ)\n  weights: {w_why}\n  activations: {a_why}")


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
