"""`npusim train --marvin`: the command's body (kept out of cli.py so that file stays a list of
thin commands). Prints; the library modules it calls only log."""

from __future__ import annotations

from pathlib import Path

import typer

__all__ = ["train_marvin_cmd"]


def train_marvin_cmd(model: str, data: str, epochs: int, out: Path | None, seed: int,
                     width: float, lr: float, batch_size: int, root: str | None,
                     config_path: Path | None, from_ckpt: Path | None, run_dir: Path) -> None:
    """Train `model` on `data` with MARViN, write the run's tables and figures to `run_dir`
    and, with `out`, the float master weights as an ordinary checkpoint."""
    from models import create_model
    from models.checkpoint import load_checkpoint, save_checkpoint
    from npusim.cli.common import CLIError
    from npusim.data import load_dataset
    from npusim.report.marvin import write_marvin_report
    from quantize.marvin import MarvinConfig, save_run, train_marvin

    if config_path is not None:
        if not config_path.is_file():
            raise CLIError(f"--marvin-config: {config_path} not found")
        try:
            text = config_path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise CLIError(f"--marvin-config: {config_path}: not UTF-8 text (byte {e.start})") \
                from None
        cfg = MarvinConfig.from_json(text, source=str(config_path))
    else:
        cfg = MarvinConfig()
    train_set = load_dataset(data, "train", root=root)
    test_set = load_dataset(data, "test", root=root)
    if from_ckpt is not None:
        net, fmeta = load_checkpoint(from_ckpt)
        name, kwargs = fmeta["model"], fmeta["model_kwargs"]
    else:
        kwargs = {"num_classes": train_set.num_classes,
                  "in_channels": train_set.input_shape[0], "width": width}
        name, net = model, create_model(model, **kwargs)
    res = train_marvin(net, train_set, epochs, cfg, test=test_set, lr=lr, batch_size=batch_size,
                       seed=seed)
    res.extra.update({"model": name, "dataset": data, "epochs": epochs, "lr": lr,
                      "batch_size": batch_size, "from": str(from_ckpt) if from_ckpt else None})
    save_run(res, run_dir)
    files = write_marvin_report(run_dir, run_dir)
    costs = (run_dir / "marvin_cost.csv")
    import pandas as pd

    c = pd.read_csv(costs).set_index("variant")
    mean_wl = (res.usage["weight_bits"] * res.usage["batches"]).sum() / res.usage["batches"].sum()
    typer.echo(f"MARViN {name} on {data}: fixed-point top-1 {100 * res.test_acc:.2f}%, float "
               f"master weights {100 * res.float_test_acc:.2f}%, mean word {mean_wl:.1f} bits, "
               f"{res.seconds:.0f} s")
    typer.echo(f"estimated training on edge16 vs float32: speedup "
               f"{c.loc['run', 'speedup_vs_fp32']:.2f}x, energy "
               f"{c.loc['run', 'energy_ratio_vs_fp32']:.3f}x (fixed8 "
               f"{c.loc['fixed8', 'speedup_vs_fp32']:.2f}x / "
               f"{c.loc['fixed8', 'energy_ratio_vs_fp32']:.3f}x, fixed16 "
               f"{c.loc['fixed16', 'speedup_vs_fp32']:.2f}x / "
               f"{c.loc['fixed16', 'energy_ratio_vs_fp32']:.3f}x)")
    from npusim.cost.training import mac_bit_costs

    mb = mac_bit_costs(res.geometry, res.usage)
    typer.echo(f"operand bits per MAC: weights {mb['weight_bits_per_mac']:.2f}, activations "
               f"{mb['act_bits_per_mac']:.2f}, gradients {mb['grad_bits_per_mac']:.2f}; MAC "
               f"cost vs float32: {mb['quadratic_cost_rel_fp32']:.4f} (quadratic in bits), "
               f"{mb['linear_cost_rel_fp32']:.4f} (linear in bits)")
    typer.echo(f"history, heatmap, costs: {run_dir} ({len(files) + 5} files)")
    if out is not None:
        save_checkpoint(net, out, {"model": name, "model_kwargs": kwargs, "dataset": data,
                                   "test_acc": res.float_test_acc,
                                   "marvin": {"config": cfg.model_dump(mode="json"),
                                              "fixed_point_test_acc": res.test_acc,
                                              "run_dir": str(run_dir)}})
        typer.echo(f"checkpoint: {out}")
