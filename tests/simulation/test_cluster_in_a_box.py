"""A cluster in a box: medsweep's real driver over 2 simulated Ray nodes declaring 4 GPUs each, trials
replaying LCBench curves. One sweep of 40 trials, shared by the tests below (~1 minute on 2 cores)."""

import csv
import json
from pathlib import Path

import pytest
from ray.tune import Callback

from medsweep.config import ConfigError
from medsweep.evaluation.metrics import METRIC_NAMES
from medsweep.search import resources, sweep
from medsweep.simulation import cluster as simulated
from medsweep.simulation import curves
from tests.conftest import compose_config

pytest.importorskip("yahpo_gym", reason="needs the simulate extra: pip install -e '.[simulate]'")
BENCHMARKS = Path(__file__).resolve().parents[2].parent / "shared" / "benchmarks"
pytestmark = pytest.mark.skipif(not (BENCHMARKS / "lcbench" / "model.onnx").is_file(),
                                reason=f"needs YAHPO Gym's lcbench/ in {BENCHMARKS}")
GIB = 1024 ** 3


def replay_config(tmp_path, extra=()):
    return compose_config(["+sweep=replay_lcbench", "cluster=simulated", "cluster.simulate.nodes=2",
                           "cluster.simulate.gpus_per_node=4", "cluster.simulate.cpus_per_node=16",
                           f"replay.data_path={BENCHMARKS}", *extra], run_dir=tmp_path)


class InFlight(Callback):
    """The most trials Tune had running at once (resources held), counted at every step of its loop."""

    def __init__(self):
        self.most = 0

    def on_step_end(self, iteration, trials, **info):
        self.most = max(self.most, sum(trial.status == "RUNNING" for trial in trials))


def stub_probe(config):
    """What measure_peak_memory would read on an 80 GiB GPU for a trial peaking at 16 GiB reserved."""
    return {"peak_reserved_bytes": 16 * GIB, "peak_allocated_bytes": 14 * GIB, "context_bytes": GIB // 2,
            "total_bytes": 80 * GIB, "device": "a simulated 80 GiB GPU", "dtype": "bfloat16", "out_of_memory": False,
            "shapes": [], "steps": 3, "seconds": 0.0}


@pytest.fixture(scope="module")
def packed_sweep(tmp_path_factory):
    """gpus_per_trial=auto with the probe stubbed: 16 GiB x (1 + margin) + context fits 4 to an 80 GiB GPU,
    so 8 declared GPUs hold 32 trials at 0.25 each. FIFO and trials of 2 x 8 s: the first 32 overlap."""
    run_dir = tmp_path_factory.mktemp("packed")
    config = replay_config(run_dir, ["cluster.gpus_per_trial=auto", "sweep.num_trials=40", "sweep.max_concurrent=32",
                                     "sweep.scheduler=fifo", "trainer.evaluations=2", "replay.evaluation_s=8"])
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(resources, "probe_on_a_gpu", stub_probe)
    in_flight = InFlight()
    try:
        plan = sweep.preflight(config)
        results = sweep.run_sweep(plan, callbacks=[in_flight])
        yield run_dir, config, results, in_flight.most
    finally:
        monkeypatch.undo()
        simulated.stop()


def test_auto_share_from_the_stubbed_probe_packs_32_trials_on_8_declared_gpus(packed_sweep):
    run_dir, config, results, most = packed_sweep
    probe = json.loads((run_dir / resources.PROBE_FILE).read_text())
    assert (probe["gpus_per_trial"], probe["trials_per_gpu"], probe["num_gpus"]) == (0.25, 4, 8.0)
    assert config["cluster"]["gpus_per_trial"] == 0.25
    assert most == 32  # never more (Ray holds 0.25 GPU each), and the declared GPUs were filled


def test_replayed_trials_report_like_medsweep_trials_through_the_real_driver(packed_sweep):
    run_dir, config, results, _ = packed_sweep
    assert len(results) == 40 and all(r.error is None for r in results)
    with open(run_dir / "leaderboard.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 40 and {r["status"] for r in rows} == {"completed"}
    assert all(r["evaluations"] == "2" and r["best_step"] in ("26", "52") for r in rows)
    metrics = results[0].metrics
    # The names a fine-tune reports, so the leaderboard, ASHA, trackers and the report read them unchanged.
    for name in ("val_f1_macro", "val_accuracy", "val_loss", "val_recall_macro"):
        assert name[len("val_"):] in METRIC_NAMES and 0 <= metrics[name] <= (10 if name == "val_loss" else 1)
    assert (metrics["evaluation"], metrics["step"], metrics["final"]) == (2, 52, True)
    # Balanced accuracy is macro recall: the replay reports LCBench's under both names it stands for.
    assert metrics["val_recall_macro"] == metrics["val_f1_macro"]
    # Both simulated nodes ran trials, and each trial left a small real checkpoint to resume from.
    assert len({r.metrics["node_id"] for r in results}) == 2
    checkpoint = results[0].checkpoint
    assert json.loads((Path(checkpoint.path) / "replay.json").read_text())["evaluation"] == 2
    # The study (optuna.journal) holds every trial, and names its objective.
    import optuna

    from medsweep.search import study

    loaded = optuna.load_study(study_name=study.study_name(config), storage=study.open_storage(study.storage_url(config)))
    assert len(loaded.trials) == 40 and loaded.metric_names == ["val_f1_macro"]


def test_different_configurations_replay_different_curves(packed_sweep):
    _, _, results, _ = packed_sweep
    values = {round(r.metrics["val_f1_macro"], 6) for r in results}
    assert len(values) > 30  # TPE and random proposals over 5 dimensions: curves differ by configuration


def test_a_simulated_cluster_without_replayed_trials_is_one_line(tmp_path):
    config = replay_config(tmp_path, ["replay.source=null", "promote.enabled=true"])
    with pytest.raises(ConfigError, match="must replay curves"):
        sweep.preflight(config)


def test_a_missing_surrogate_is_one_line_before_ray_starts(tmp_path):
    config = replay_config(tmp_path, [f"replay.data_path={tmp_path}"])
    with pytest.raises(ConfigError, match="has no lcbench/model.onnx"):
        sweep.preflight(config)


def test_surrogate_points_are_clipped_to_its_ranges_and_curves_are_monotone_in_time(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    bench = curves.LCBench("3945", BENCHMARKS)
    point = bench.point({"learning_rate": 5.0, "batch_size": 3, "max_units": 300.4})
    assert point["learning_rate"] == pytest.approx(0.1) and point["batch_size"] == 16 and point["max_units"] == 300
    curve = bench.curve({"learning_rate": 0.01, "batch_size": 64}, 4)
    assert [p["epoch"] for p in curve] == [13, 26, 39, 52]
    assert all(a["seconds"] < b["seconds"] for a, b in zip(curve, curve[1:]))
    assert not list(tmp_path.iterdir())  # yahpo's settings file went to a private temp folder, not HOME
