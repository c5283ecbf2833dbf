"""Every config composes; mistakes fail fast with one line, before Ray starts."""

import time

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

from medsweep.config import ConfigError, validate
from medsweep.search.sweep import preflight
from tests.conftest import CONF, compose_config, run_cli

GROUPS = ["model", "data", "trainer", "tracker", "cluster"]


@pytest.mark.parametrize("group, option", [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))])
def test_every_group_option_composes_and_validates(group, option):
    # A simulated cluster declares GPUs it does not have: it composes with a sweep that replays curves.
    extra = ["+sweep=replay_lcbench"] if (group, option) == ("cluster", "simulated") else []
    config = compose_config([f"{group}={option}", *extra])
    validate(config)
    if group == "model":
        assert config["model"]["name"] == option
        assert config["model"]["trust_remote_code"] is False


@pytest.mark.parametrize("sweep", [p.stem for p in sorted((CONF / "sweep").glob("*.yaml"))])
def test_every_sweep_composes(sweep):
    config = compose_config([f"+sweep={sweep}"])
    validate(config)
    assert config["sweep"]["name"] == sweep and config["sweep"]["num_trials"] >= 2


def test_user_facing_keys_exist_with_these_names():
    config = compose_config()
    for path in ["model.name_or_path", "trainer.learning_rate", "trainer.max_length", "trainer.epochs",
                 "trainer.batch_size", "trainer.seed", "sweep.num_trials", "sweep.max_concurrent",
                 "sweep.metric", "sweep.mode", "cluster.address", "data.path"]:
        node = config
        for part in path.split("."):
            assert part in node, path
            node = node[part]


def test_defaults_are_the_embedded_model_and_data():
    config = compose_config()
    assert config["model"]["name_or_path"] == "builtin:minilm-l6"
    assert config["data"]["path"] == "builtin:medical_abstracts"
    assert config["sweep"]["num_trials"] == 1 and config["sweep"]["metric"] == "val_f1_macro"


def test_unknown_key_is_an_error():
    with pytest.raises(ConfigCompositionException) as info:
        compose_config(["trainer.lerning_rate=1e-4"])
    assert isinstance(info.value.__cause__, (ConfigKeyError, ValidationError)) or "lerning_rate" in str(info.value)


def test_wrong_type_is_an_error():
    with pytest.raises(ConfigCompositionException):
        compose_config(["trainer.batch_size=sixteen"])


@pytest.mark.parametrize("override, message", [
    ("trainer.learning_rate=-1", "trainer.learning_rate must be > 0"),
    ("trainer.learning_rate=0", "trainer.learning_rate must be > 0"),
    ("trainer.max_length=0", "trainer.max_length must be >= 1"),
    ("data.val_fraction=1.5", "data.val_fraction must be in (0, 1)"),
    ("data.val_fraction=0", "data.val_fraction must be in (0, 1)"),
    ("data.format=xlsx", "data.format must be one of ('csv', 'jsonl', 'parquet', 'hf'), got 'xlsx'"),
    ("trainer.class_weighting=inverse", "trainer.class_weighting must be one of ('none', 'balanced')"),
    ("sweep.num_trials=0", "sweep.num_trials must be >= 1"),
    ("sweep.mode=maximum", "sweep.mode must be one of"),
    ("sweep.startup_trials=0", "sweep.startup_trials must be >= 1 or null, got 0"),
    ("sweep.metrics=[val_f1_macro,val_ece]", "sweep.metrics and sweep.modes must have the same length"),
    ("promote.top_k=0", "promote.top_k must be >= 1"),
    ("promote.seeds=[1,42]", "must not contain trainer.seed (42)"),
])
def test_range_checks(override, message):
    with pytest.raises(ConfigError) as info:
        validate(compose_config([override]))
    assert message in str(info.value)


def test_metric_that_no_trial_reports_is_rejected_before_ray():
    with pytest.raises(ConfigError, match="sweep.metric 'val_f2' is not reported"):
        preflight(compose_config(["sweep.metric=val_f2"]))


@pytest.mark.parametrize("overrides, message", [
    (["sweep.metric=val_sensitivity"], "'val_sensitivity' is not reported for a 5-class task"),
    (["sweep.metric=val_f1_class_5"], "'val_f1_class_5' is not reported for a 5-class task"),
    (["sweep.metrics=[val_f1_macro,val_brier]", "sweep.modes=[max,min]"], "sweep.metric 'val_brier' is not reported"),
])
def test_metrics_the_task_does_not_report_are_rejected_before_ray(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        preflight(compose_config(overrides))


def test_any_reported_metric_can_drive_the_sweep_and_metrics_lists_set_the_primary():
    config = compose_config(["sweep.metric=val_f1_class_4", "sweep.mode=max"])
    preflight(config)
    config = compose_config(["sweep.metrics=[val_ece,val_f1_macro]", "sweep.modes=[min,max]"])
    plan = preflight(config)
    assert (plan.metric, plan.mode) == ("val_ece", "min")
    # The plan resolves the primary objective; the config the user composed is not rewritten.
    assert (config["sweep"]["metric"], config["sweep"]["mode"]) == ("val_f1_macro", "max")


def test_unreachable_cluster_address_fails_within_seconds():
    started = time.time()
    with pytest.raises(ConfigError, match="cannot be reached"):
        preflight(compose_config(["cluster=ray", "cluster.address=127.0.0.1:9"]))
    assert time.time() - started < 15


def test_cli_bad_override_is_one_line_and_nonzero_and_writes_no_results(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli("trainer.learning_rate=-1", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "medsweep: error: trainer.learning_rate must be > 0, got -1.0"
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (run_dir / "ray").exists() and not (run_dir / "promoted").exists()


def test_cli_misspelled_key_fails(tmp_path):
    proc = run_cli("trainer.lerning_rate=1e-4", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("medsweep: error: unknown config key 'trainer.lerning_rate'; "
                                   "did you mean trainer.learning_rate?")
    assert not (tmp_path / "run").exists()


def test_hub_model_offline_fails_fast_with_a_clear_message(tmp_path):
    # A closed port stands in for an unreachable Hub; the check must not hang or retry for long.
    started = time.time()
    proc = run_cli("model=biobert", f"hydra.run.dir={tmp_path / 'run'}",
                   env={"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")})
    assert proc.returncode == 2, proc.stderr
    assert "dmis-lab/biobert-v1.1" in proc.stderr and "cannot be reached" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert time.time() - started < 60


def test_a_sweep_whose_every_trial_failed_ends_in_one_line_not_a_traceback(tmp_path, monkeypatch, capsys):
    # What ranking raises when no trial kept a checkpoint (every trial errored): the CLI says so in one
    # line naming the leaderboard, exit 1 (a failed run, not a config mistake), and no traceback.
    import sys

    from medsweep import run
    from medsweep.promotion.ranking import NoUsableTrial

    def every_trial_failed(config, on_checked=None):
        raise NoUsableTrial("no trial kept a checkpoint with val_f1_macro: ['CUDA out of memory']")

    monkeypatch.setattr(run, "execute", every_trial_failed)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")  # cli() sets it to 1 in this process: restored after the test
    monkeypatch.setattr(sys, "argv", ["medsweep.run", "+sweep=smoke", f"hydra.run.dir={tmp_path / 'run'}"])
    with pytest.raises(SystemExit) as stopped:
        run.cli()
    assert stopped.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("medsweep: error: no trial kept a checkpoint") and "leaderboard.csv" in err
    assert len(err.splitlines()) == 1
