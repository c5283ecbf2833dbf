"""Learning curves to replay, served by one Ray actor per sweep: YAHPO Gym's LCBench surrogate
(replay.source=lcbench) or medsweep's own recorded curves (replay.source=table, table.py).

The surrogate (an ONNX model plus ConfigSpace and pandas) costs ~100 MB and ~2 s to load: loaded
in each of 128 trial processes it would need more memory than the simulated cluster itself. One
actor on the driver's node loads it once; a trial asks it for its whole curve in one call (~1 ms).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import tempfile
from pathlib import Path

from medsweep.config import ConfigError
from medsweep.search.space import get_path
from medsweep.simulation import table

LCBENCH_EPOCHS = 52  # every LCBench curve has 52 epochs
SERVER_NAME = "medsweep-curves"
_server = None  # the driver's handle: a named actor still dies when its creator drops every handle
# medsweep's metric names for what LCBench records. Balanced accuracy is macro recall exactly; LCBench
# has no F1, so val_f1_macro (medsweep's default objective) replays balanced accuracy as well.
METRICS = {"val_accuracy": ("val_accuracy", 0.01), "val_recall_macro": ("val_balanced_accuracy", 1.0),
           "val_f1_macro": ("val_balanced_accuracy", 1.0), "val_loss": ("val_cross_entropy", 1.0)}


def check_data(replay: dict) -> Path:
    """The folder holding lcbench/, checked before Ray starts (one line if it is missing)."""
    if replay["data_path"] is None:
        raise ConfigError("replay.source=lcbench needs replay.data_path: the folder that holds lcbench/ "
                          "(YAHPO Gym's surrogate data, github.com/slds-lmu/yahpo_data)")
    folder = Path(replay["data_path"]).expanduser().resolve()
    if not (folder / "lcbench" / "model.onnx").is_file():
        raise ConfigError(f"replay.data_path {replay['data_path']!r} has no lcbench/model.onnx")
    try:
        import onnxruntime  # noqa: F401
        import yahpo_gym  # noqa: F401
    except ImportError:
        raise ConfigError("replay.source=lcbench needs the simulate extra: pip install 'medsweep[simulate]'") from None
    return folder


class LCBench:
    """One LCBench task's surrogate: `curve(params, evaluations)` -> one dict per evaluation."""

    def __init__(self, task: str, data_path: str | Path):
        # yahpo keeps its data path in a settings file, by default under the home directory: a private one here.
        os.environ["YAHPO_LOCAL_CONFIG"] = str(Path(tempfile.mkdtemp(prefix="medsweep-yahpo-")) / "settings.yaml")
        from yahpo_gym import benchmark_set, local_config

        local_config.init_config(data_path=str(data_path))
        # One thread: the surrogate shares the machine with every simulated trial. Loading prints a
        # request to cite the data (docs/benchmarks.md does) into every sweep's console: kept out of it.
        with contextlib.redirect_stdout(io.StringIO()):
            self.bench = benchmark_set.BenchmarkSet("lcbench", instance=str(task), multithread=False, check=False)
        space = self.bench.get_opt_space(drop_fidelity_params=True)
        self.space = {name: space[name] for name in space.keys()}

    def point(self, params: dict) -> dict:
        """A full LCBench configuration: the given parameters clipped to the surrogate's ranges, the rest at its defaults."""
        config = {}
        for name, hyper in self.space.items():
            value = params.get(name, hyper.default_value)
            if hasattr(hyper, "lower"):
                value = min(max(float(value), float(hyper.lower)), float(hyper.upper))
                value = int(round(value)) if "Integer" in type(hyper).__name__ else value
            config[name] = value
        return config

    def curve(self, params: dict, evaluations: int) -> list[dict]:
        """`evaluations` points spread evenly over the 52 epochs: cumulative seconds and medsweep's metric names."""
        config = self.point(params)
        epochs = [max(1, round(LCBENCH_EPOCHS * k / evaluations)) for k in range(1, evaluations + 1)]
        raw = self.bench.objective_function([{**config, "epoch": epoch} for epoch in epochs])
        points = []
        for epoch, values in zip(epochs, raw):
            point = {name: float(values[source]) * scale for name, (source, scale) in METRICS.items()}
            if not all(math.isfinite(v) for v in point.values()):
                raise FloatingPointError(f"the surrogate returned a non-finite value for {config} at epoch {epoch}")
            points.append(dict(point, epoch=epoch, seconds=float(values["time"])))
        return points


def lcbench_params(config: dict) -> dict:
    """The LCBench hyperparameters this trial's config sets, through replay.parameters."""
    return {name: get_path(config, key) for name, key in config["replay"]["parameters"].items()}


def check_source(config: dict) -> None:
    """The replay source's data, checked before Ray starts (one line if it is missing or malformed)."""
    if config["replay"]["source"] == "table":
        table.check_table(config)
    else:
        check_data(config["replay"])


def start_server(config: dict):
    """The sweep's curve server (a named Ray actor owned by the driver); the existing one if it runs."""
    import ray

    replay = config["replay"]
    global _server
    if replay["source"] == "table":
        source, arguments = table.CurveTable, (table.table_path(replay).resolve(),)
    else:
        source, arguments = LCBench, (replay["task"], check_data(replay))
    server = ray.remote(num_cpus=0)(source).options(name=SERVER_NAME, get_if_exists=True, max_restarts=-1)
    _server = server.remote(*arguments)
    return _server


def curve_of(config: dict, evaluations: int) -> list[dict]:
    """A trial's curve, from the sweep's server."""
    import ray

    params = table.table_params(config) if config["replay"]["source"] == "table" else lcbench_params(config)
    server = ray.get_actor(SERVER_NAME)
    return ray.get(server.curve.remote(params, evaluations))
