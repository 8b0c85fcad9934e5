"""Command line: ``fastinfer demo`` (more commands arrive with the converters and the predictor)."""
from __future__ import annotations

import logging
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np


@click.group()
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """fastinfer: verified, fast inference for TRAINING runs."""
    ctx.obj = {"debug": debug}
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


@main.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where to write the run (default: a temporary folder).")
def demo(out: Path | None) -> None:
    """Build a small TRAINING run, load it with ModelLoader and predict every family."""
    from . import testing
    from .engine import InferenceEngine
    from .loader import ModelLoader

    out = out or Path(tempfile.mkdtemp(prefix="fastinfer-demo-"))
    X, targets = testing.synthetic_features()
    families = ["lightgbm", "xgboost", "ridge", "mlp"]
    click.echo(f"training {len(families)} families × {len(targets)} targets into {out} …")
    root = testing.write_training_run(out, X, targets, families)
    loader = ModelLoader(root)
    engine = InferenceEngine()
    row = X.iloc[[-1]]
    for target in loader.list_targets():
        for family in loader.list_families(target):
            model = loader.load(target, family)
            start = time.perf_counter()
            pred = engine.predict(model, row, family)
            micros = (time.perf_counter() - start) * 1e6
            click.echo(f"{target:>12} {family:>10} {float(np.ravel(pred)[0]):+.5f}  ({model.backend}, {micros:,.0f} µs)")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
