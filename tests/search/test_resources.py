"""cluster.gpus_per_trial=auto: the probe's shape, the packing arithmetic, the run-dir record, and
the probe itself run on a CPU up to its memory reading."""

import gc
import json

import pytest
import torch

from medsweep.config import ConfigError, validate
from medsweep.search import resources
from tests.conftest import TINY, compose_config, run_cli

GIB = 2**30
SPACE = {"trainer": {"batch_size": {"type": "choice", "values": [8, 4]},
                     "max_length": {"type": "int", "lower": 16, "upper": 48},
                     "learning_rate": {"type": "loguniform", "lower": 1e-4, "upper": 1e-2}},
         "model": {"lora": {"r": {"type": "choice", "values": [4, 16, 8]},
                            "target_modules": {"type": "choice", "values": ["query,value", "all-linear", "query"]}}}}


@pytest.fixture
def auto_config(tmp_path):
    config = compose_config(TINY + ["model.finetune=lora", "cluster.gpus_per_trial=auto", "trainer.eval_batch_size=12",
                                    "sweep.max_concurrent=4"], run_dir=tmp_path)
    config["sweep"]["search_space"] = SPACE
    return config


def reading(peak_gib: float, total_gib: float = 80.0, context_gib: float = 0.6, oom: bool = False) -> dict:
    return {"device": "NVIDIA H100 80GB HBM3", "total_bytes": int(total_gib * GIB), "peak_allocated_bytes": int(peak_gib * 0.9 * GIB),
            "peak_reserved_bytes": int(peak_gib * GIB), "context_bytes": int(context_gib * GIB), "out_of_memory": oom,
            "shapes": [], "steps": 3, "dtype": "bfloat16", "seconds": 4.0}


def test_the_probe_runs_the_largest_shape_the_search_space_can_draw(auto_config):
    shape = resources.largest_shape(auto_config)
    assert shape == {"trainer.batch_size": 8, "trainer.max_length": 48, "trainer.eval_batch_size": 12, "model.lora.r": 16,
                     "model.lora.target_modules": "all-linear", "model.finetune": "lora"}
    probed = resources.probe_config(auto_config)
    assert (probed["trainer"]["batch_size"], probed["trainer"]["max_length"], probed["model"]["lora"]["r"]) == (8, 48, 16)
    assert auto_config["trainer"]["max_length"] == 32  # the sweep's own config is untouched


@pytest.mark.parametrize("peak, total, concurrent, gpus, per_gpu, fit", [
    (6.0, 80.0, 4, 1, 4, 10),     # 6 GiB x 1.2 + 0.6 = 7.8 GiB: 10 fit, the sweep only runs 4 at once
    (6.0, 80.0, 16, 1, 10, 10),   # more concurrency than fits: as many as fit
    (6.0, 80.0, 8, 2, 4, 10),     # 8 trials over 2 GPUs: 4 per GPU, not 8 on the first
    (30.0, 80.0, 4, 1, 2, 2),     # 36.6 GiB each: 2 fit
    (70.0, 80.0, 4, 1, 1, 0),     # does not fit with the margin: one per GPU (the trial halves its batch)
    (6.0, 80.0, 1, 1, 1, 10),     # one at a time: the whole GPU
])
def test_share_is_the_most_trials_that_fit_with_the_margin(peak, total, concurrent, gpus, per_gpu, fit):
    plan = resources.choose_share(reading(peak, total), max_concurrent=concurrent, num_gpus=gpus)
    assert (plan["trials_per_gpu"], plan["fit_per_gpu"]) == (per_gpu, fit)
    assert plan["gpus_per_trial"] == pytest.approx(1 / per_gpu, abs=1e-4)
    # Every trial sharing the GPU, margin and CUDA context included, fits in it (or it runs alone).
    assert per_gpu == 1 or per_gpu * (peak * 1.2 + 0.6) <= total


def test_a_context_reading_below_the_floor_uses_the_floor_and_oom_means_one_per_gpu():
    low = resources.choose_share(reading(6.0, context_gib=0.1), max_concurrent=16, num_gpus=1)
    assert low["context_bytes_used"] == resources.CONTEXT_BYTES and low["fit_per_gpu"] == int(80 // (7.2 + 0.5))
    oom = resources.choose_share(reading(1.0, oom=True), max_concurrent=16, num_gpus=1)
    assert (oom["trials_per_gpu"], oom["gpus_per_trial"]) == (1, 1.0)


def test_auto_is_measured_once_printed_saved_and_written_into_the_config(auto_config, tmp_path, capsys):
    probed = []

    def probe(config):
        probed.append(config)
        return reading(6.0)

    assert resources.resolve_gpus_per_trial(auto_config, probe=probe, gpus=lambda: 1.0) == 0.25
    assert auto_config["cluster"]["gpus_per_trial"] == 0.25  # what trials and seed re-runs get
    assert len(probed) == 1 and probed[0]["trainer"]["batch_size"] == 8 and probed[0]["trainer"]["max_length"] == 48
    saved = json.loads((tmp_path / "gpu_probe.json").read_text())
    assert saved["gpus_per_trial"] == 0.25 and saved["trials_per_gpu"] == 4 and saved["margin"] == resources.MARGIN
    assert saved["probe"]["peak_reserved_bytes"] == 6 * GIB and saved["shape"]["trainer.max_length"] == 48
    line = capsys.readouterr().out.strip()
    assert line.count("\n") == 0 and "gpus_per_trial=0.25 (4 per GPU)" in line and "6.00 GiB reserved" in line
    # Resolved: a second Tuner (the seed re-runs) does not probe again.
    assert resources.resolve_gpus_per_trial(auto_config, probe=probe, gpus=lambda: 1.0) == 0.25 and len(probed) == 1


def test_without_a_gpu_auto_is_zero_in_one_line(auto_config, tmp_path, capsys):
    def probe(config):
        raise AssertionError("no probe without a GPU")

    assert resources.resolve_gpus_per_trial(auto_config, probe=probe, gpus=lambda: 0.0) == 0
    assert auto_config["cluster"]["gpus_per_trial"] == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "no GPU in the Ray cluster" in out
    assert json.loads((tmp_path / "gpu_probe.json").read_text())["gpus_per_trial"] == 0


def test_without_a_gpu_qlora_stops_in_one_line(auto_config):
    auto_config["model"]["quantization"] = "4bit"
    with pytest.raises(ConfigError, match="CUDA GPU"):
        resources.resolve_gpus_per_trial(auto_config, gpus=lambda: 0.0)


def test_a_failing_probe_is_one_line(auto_config):
    def probe(config):
        raise RuntimeError("ray.exceptions.RayTaskError: long traceback\nCUDA error: device-side assert")

    with pytest.raises(ConfigError) as info:
        resources.resolve_gpus_per_trial(auto_config, probe=probe, gpus=lambda: 1.0)
    assert "\n" not in str(info.value) and "device-side assert" in str(info.value)


class LiveTensors:
    """A CPU stand-in for the CUDA allocator: the bytes of every tensor storage alive when read."""

    def reset(self):
        self.resets = getattr(self, "resets", 0) + 1

    def read(self) -> dict:
        storages = {}
        for obj in gc.get_objects():
            if isinstance(obj, torch.Tensor) and obj.device.type == "cpu":
                storage = obj.untyped_storage()
                storages[storage.data_ptr()] = storage.nbytes()
        live = sum(storages.values())
        return {"device": "cpu", "total_bytes": 4 * GIB, "peak_allocated_bytes": live, "peak_reserved_bytes": live,
                "context_bytes": 0}


def test_the_real_probe_trains_at_the_probed_shape_up_to_the_memory_reading(auto_config):
    from medsweep import data
    from medsweep.training.model import build_model

    probed = resources.probe_config(auto_config)
    memory = LiveTensors()
    measured = resources.measure_peak_memory(probed, steps=2, memory=memory, device="cpu")
    assert memory.resets == 1 and not measured["out_of_memory"] and measured["dtype"] == "float32"
    # Two training steps at the largest batch x length, then one evaluation batch.
    assert measured["shapes"] == [(8, 48), (8, 48), (12, 48)]
    # Read while the model and AdamW's two moments per trainable weight were alive: the probe did step.
    model = build_model(probed["model"], data.load_splits(probed["data"]).label_names)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    assert measured["peak_allocated_bytes"] >= weights + 2 * trainable
    plan = resources.choose_share(measured, max_concurrent=4, num_gpus=1)
    assert plan["trials_per_gpu"] == 4  # a 2-layer BERT: 4 fit in 4 "GiB" many times over


def test_auto_is_a_valid_setting_and_other_strings_are_not():
    validate(compose_config(["cluster.gpus_per_trial=auto"]))
    validate(compose_config(["cluster.gpus_per_trial=0.25"]))
    for bad in ["cluster.gpus_per_trial=-1", "cluster.gpus_per_trial=true"]:
        with pytest.raises(ConfigError, match="cluster.gpus_per_trial must be a number >= 0 or auto"):
            validate(compose_config([bad]))


def test_cli_refuses_a_bad_gpu_share_in_one_line(tmp_path):
    proc = run_cli("cluster.gpus_per_trial=half", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "medsweep: error: cluster.gpus_per_trial must be a number >= 0 or auto, got 'half'"
    assert not (tmp_path / "run" / "ray").exists()


@pytest.mark.slow  # a real sweep through Ray, 1-3 min on 2 shared cores: `make test-slow`
def test_a_cpu_sweep_with_auto_runs_its_trials_on_cpus(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(*TINY, "cluster.gpus_per_trial=auto", "cluster.num_cpus=2", "promote.enabled=false",
                   f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "cluster.gpus_per_trial=auto: no GPU in the Ray cluster" in proc.stdout
    assert json.loads((run_dir / "gpu_probe.json").read_text())["gpus_per_trial"] == 0
    assert (run_dir / "leaderboard.csv").exists()


@pytest.mark.slow  # an embedded Ray and a fresh worker that imports the training stack: ~1 min on 2 shared cores
def test_the_probe_runs_as_a_ray_task_in_a_worker_that_then_exits(auto_config, monkeypatch):
    import ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ray.init(address="local", num_cpus=1, include_dashboard=False)
    try:
        measured = resources.probe_on_a_gpu(resources.probe_config(auto_config), num_gpus=0,
                                            memory=resources.ProcessMemory())
    finally:
        ray.shutdown()
    assert measured["shapes"] == [(8, 48)] * 3 + [(12, 48)] and not measured["out_of_memory"]
    assert measured["peak_reserved_bytes"] > 0 and measured["device"].startswith("cpu")
