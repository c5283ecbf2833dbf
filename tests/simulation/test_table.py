"""medsweep's recorded curves as a replay source: nearest recorded neighbours, one-line refusals, and a
real Ray Tune sweep replaying them through the driver."""

import csv
import math

import pytest

from medsweep.config import ConfigError
from medsweep.search import sweep
from medsweep.simulation import table
from tests.conftest import compose_config

COLUMNS = ["finetune", "learning_rate", "warmup_ratio", "r", "target_modules", "epochs", "seed", "evaluation", "step",
           "epoch", "val_f1_macro", "val_accuracy", "val_recall_macro", "val_auroc", "val_loss", "seconds", "cpu_seconds"]


def f1_of(finetune, lr, seed, evaluation):
    """A recorded curve with a known shape: LoRA above full, better at higher lr, seed 43 a bit worse."""
    base = (0.5 if finetune == "lora" else 0.3) + 0.1 * math.log10(lr / 1e-4) - (0.02 if seed == 43 else 0.0)
    return round(base + 0.05 * evaluation, 5)


def write_table(path, evaluations=3, drop=(), cpu=False):
    rows = []
    for finetune, lrs, r, targets in (("full", [1e-5, 1e-4], 0, ""), ("lora", [1e-4, 1e-3], 8, "query,value")):
        for lr in lrs:
            for seed in (42, 43):
                for evaluation in range(1, evaluations + 1):
                    f1 = f1_of(finetune, lr, seed, evaluation)
                    rows.append({"finetune": finetune, "learning_rate": lr, "warmup_ratio": 0.0, "r": r,
                                 "target_modules": targets, "epochs": 2, "seed": seed, "evaluation": evaluation,
                                 "step": 10 * evaluation, "epoch": evaluation, "val_f1_macro": f1, "val_accuracy": f1,
                                 "val_recall_macro": f1, "val_auroc": 0.9, "val_loss": 1.0 - f1,
                                 "seconds": (20 if finetune == "full" else 10) * evaluation,
                                 "cpu_seconds": (7 * evaluation) if cpu else 0})
    columns = [c for c in COLUMNS if c not in drop]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def params(finetune="lora", lr=1e-3, seed=0, warmup=0.0):
    return {"finetune": finetune, "learning_rate": lr, "warmup_ratio": warmup, "r": 8 if finetune == "lora" else 0,
            "target_modules": "query,value" if finetune == "lora" else "", "epochs": 2, "seed": seed}


def test_a_recorded_point_replays_its_own_curve_and_the_seed_picks_the_recording(tmp_path):
    curves = table.CurveTable(write_table(tmp_path / "t.csv"))
    first = curves.curve(params(seed=0), 3)   # seed 0 -> the first recorded seed (42)
    second = curves.curve(params(seed=1), 3)  # seed 1 -> 43
    assert [p["val_f1_macro"] for p in first] == [f1_of("lora", 1e-3, 42, e) for e in (1, 2, 3)]
    assert [p["val_f1_macro"] for p in second] == [f1_of("lora", 1e-3, 43, e) for e in (1, 2, 3)]
    assert [p["seconds"] for p in first] == [10, 20, 30]


def test_the_replay_runs_on_the_recorded_cpu_seconds_where_the_table_has_them(tmp_path):
    recorded = table.CurveTable(write_table(tmp_path / "cpu.csv", cpu=True))
    assert [p["seconds"] for p in recorded.curve(params(), 3)] == [7, 14, 21]


def test_an_off_grid_point_mixes_its_nearest_recorded_neighbours_nearer_weighing_more(tmp_path):
    curves = table.CurveTable(write_table(tmp_path / "t.csv"))
    low, high = f1_of("lora", 1e-4, 42, 3), f1_of("lora", 1e-3, 42, 3)
    near_high = curves.curve(params(lr=7e-4), 3)[-1]["val_f1_macro"]
    near_low = curves.curve(params(lr=1.5e-4), 3)[-1]["val_f1_macro"]
    assert low < near_low < near_high < high
    # Beyond the recorded range: the edge's curve.
    assert curves.curve(params(lr=1e-2), 3)[-1]["val_f1_macro"] == pytest.approx(high)


def test_a_full_fine_tune_is_never_replayed_from_lora_curves(tmp_path):
    curves = table.CurveTable(write_table(tmp_path / "t.csv"))
    # At lr 1e-4 both modes are recorded; the full curve is 0.2 below LoRA's at every evaluation.
    full = curves.curve(params("full", lr=1e-4), 3)
    assert [p["val_f1_macro"] for p in full] == [f1_of("full", 1e-4, 42, e) for e in (1, 2, 3)]
    assert full[-1]["seconds"] == 60


@pytest.mark.parametrize("problem, message", [
    ("missing", "lacks the column(s) ['val_f1_macro']"),
    ("unreadable", "cannot be read as a curve table"),
    ("evaluations", "records 3 evaluations per trial; set trainer.evaluations=3"),
])
def test_a_bad_table_is_refused_in_one_line_before_ray_starts(tmp_path, problem, message):
    path = tmp_path / "t.csv"
    if problem == "missing":
        write_table(path, drop=("val_f1_macro",))
    elif problem == "unreadable":
        path.write_bytes(b"\x00\x01 not a table \xff\n\"unterminated")
    else:
        write_table(path)
    evaluations = 4 if problem == "evaluations" else 3
    config = compose_config(["+sweep=replay_lcbench", "replay.source=table", f"replay.table={path}",
                             f"trainer.evaluations={evaluations}"], run_dir=tmp_path / "run")
    with pytest.raises(ConfigError) as caught:
        sweep.preflight(config)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "run" / "leaderboard.csv").exists()


def test_the_shipped_table_holds_both_modes_two_seeds_and_alike_trials():
    curves = table.CurveTable(table.embedded_table())
    assert curves.values("finetune") == ["full", "lora"]
    assert len(curves.seeds) == 2
    assert len(curves.values("learning_rate")) >= 6 and curves.values("epochs") == [2, 4]
    assert all(0.0 <= point["val_f1_macro"] <= 1.0 for trial in curves.trials for point in trial["curve"])
    # Cumulative seconds: each evaluation after the one before.
    assert all(a["seconds"] < b["seconds"] for trial in curves.trials for a, b in zip(trial["curve"], trial["curve"][1:]))


def test_a_sweep_replays_the_table_through_real_ray_tune(tmp_path):
    path = write_table(tmp_path / "t.csv")
    config = compose_config(["+sweep=replay_lcbench", "replay.source=table", f"replay.table={path}",
                             "trainer.evaluations=3", "replay.time_scale=0.01", "sweep.num_trials=4",
                             "sweep.max_concurrent=2", "cluster.num_cpus=2", "cluster.cpus_per_trial=1",
                             "sweep.scheduler=fifo", "model.lora.r=8", "model.lora.target_modules='query,value'",
                             "trainer.warmup_ratio=0.0", "trainer.epochs=2", "trainer.learning_rate=1e-4"],
                            run_dir=tmp_path / "run")
    config["sweep"]["search_space"] = {"trainer": {"learning_rate": {"type": "loguniform", "lower": 1e-4, "upper": 1e-3}}}
    try:
        results = sweep.run_sweep(sweep.preflight(config))
    finally:
        import ray

        ray.shutdown()
    assert len(results) == 4 and all(r.error is None for r in results)
    curves = table.CurveTable(path)
    for result in results:
        lr = result.config["trainer"]["learning_rate"]
        expected = curves.curve(params(lr=lr, seed=config["trainer"]["seed"]), 3)[-1]["val_f1_macro"]
        assert result.metrics["val_f1_macro"] == pytest.approx(expected)
        assert result.metrics["evaluation"] == 3
