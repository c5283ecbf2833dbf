"""Rungs and schedulers: trainer.evaluations spreads a trial's evaluations over its own budget, and
sweep.scheduler picks the Ray Tune scheduler whose rungs are counted in those evaluations."""

import time

import pytest
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, HyperBandScheduler, MedianStoppingRule

from medsweep.config import ConfigError, validate
from medsweep.search.sweep import LOCAL_RAY_SYSTEM_CONFIG, build_scheduler, first_rung_hint, max_evaluations
from medsweep.training.trial import evaluation_interval, optimizer_steps, run_trial
from tests.conftest import TINY, compose_config


def sweep_config(tmp_path, *overrides):
    return compose_config(TINY + ["+sweep=smoke", *overrides], run_dir=tmp_path)


def test_evaluations_fall_at_even_fractions_of_each_trials_own_budget(tiny_config):
    # 96 rows / batch 16 = 6 steps per epoch, 2 epochs = 12 steps; 4 evaluations -> every 3 steps.
    tiny_config["trainer"].update(evaluations=4)
    result = run_trial(tiny_config)
    assert [h["step"] for h in result["history"]] == [3, 6, 9, 12]
    assert result["eval_every_steps"] == 3
    # Another trial with half the batch has twice the steps: still 4 evaluations, at its own quarters.
    assert evaluation_interval(dict(tiny_config["trainer"], batch_size=8), 96) == 6
    assert optimizer_steps(dict(tiny_config["trainer"], gradient_accumulation_steps=4), 96) == 4  # ceil(6/4)=2 per epoch
    assert evaluation_interval(dict(tiny_config["trainer"], evaluations=None, eval_every_steps=5), 96) == 5


def test_asha_rungs_are_counted_in_evaluations_and_stop_at_the_last(tmp_path):
    config = sweep_config(tmp_path, "sweep.num_trials=6", "trainer.evaluations=8", "sweep.grace_period=1")
    scheduler = build_scheduler(config, num_train=800)
    assert isinstance(scheduler, ASHAScheduler) and max_evaluations(config, 800) == 8
    # Rungs after 1, 2 and 4 of 8 evaluations (8: the end): a weak trial can stop after 1/8 of its budget.
    assert sorted(milestone for bracket in scheduler._brackets for milestone, _ in bracket._rungs) == [1, 2, 4, 8]
    # Without trainer.evaluations: one evaluation per epoch of the longest trial the space allows.
    config = sweep_config(tmp_path, "sweep.num_trials=6", "trainer.epochs=3")
    assert max_evaluations(config, 800) == 3


def test_a_first_rung_inside_the_warm_up_is_said_with_the_grace_period_that_clears_it(tmp_path, capsys):
    # The shipped sweeps: warm-up drawn up to 0.2, first rung at 2 of 6 evaluations (1/3): nothing to say.
    for name in ("lr_lora", "lr_full"):
        assert first_rung_hint(compose_config([f"+sweep={name}"], run_dir=tmp_path)) is None
    # At 1 of 6 (17%), trials drawing a warm-up above 17% are still warming up at the rung.
    config = compose_config(["+sweep=lr_lora", "sweep.grace_period=1"], run_dir=tmp_path)
    hint = first_rung_hint(config)
    assert "evaluation 1 of 6" in hint and "20%" in hint and "sweep.grace_period=2" in hint
    build_scheduler(config, num_train=500)
    assert "[medsweep] early stopping: the first rung" in capsys.readouterr().out
    # A warm-up that is not searched counts at its configured value; none at all: nothing to say.
    config = sweep_config(tmp_path, "sweep.num_trials=6", "trainer.evaluations=10", "sweep.grace_period=1",
                          "trainer.warmup_ratio=0.25", "~sweep.search_space.trainer.warmup_ratio")
    assert "sweep.grace_period=3" in first_rung_hint(config)
    config["trainer"]["warmup_ratio"] = 0.0
    assert first_rung_hint(config) is None
    # Rungs that are not fractions of a trial (no trainer.evaluations): no claim.
    config["trainer"].update(evaluations=None, warmup_ratio=0.25)
    assert first_rung_hint(config) is None


@pytest.mark.parametrize("name, kind", [("hyperband", HyperBandScheduler), ("median", MedianStoppingRule),
                                        ("fifo", FIFOScheduler), ("none", FIFOScheduler)])
def test_each_scheduler_option_builds_its_ray_scheduler(tmp_path, name, kind):
    config = sweep_config(tmp_path, "sweep.num_trials=6", "trainer.evaluations=4", f"sweep.scheduler={name}")
    assert type(build_scheduler(config, num_train=800)) is kind
    # A single run is never stopped early, whatever the scheduler.
    config["sweep"]["num_trials"] = 1
    assert type(build_scheduler(config, num_train=800)) is FIFOScheduler


def test_unknown_scheduler_and_zero_evaluations_are_config_errors(tmp_path):
    config = sweep_config(tmp_path, "sweep.scheduler=bohb")
    with pytest.raises(ConfigError, match="sweep.scheduler must be one of"):
        validate(config)
    config = sweep_config(tmp_path, "trainer.evaluations=0")
    with pytest.raises(ConfigError, match="trainer.evaluations must be >= 1"):
        validate(config)


@pytest.mark.slow  # starts a Ray cluster: ~20 s on a loaded 2-core machine (`make test-slow`)
def test_embedded_ray_starts_no_idle_workers(monkeypatch):
    import psutil
    import ray

    from medsweep.search.sweep import init_ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert LOCAL_RAY_SYSTEM_CONFIG["enable_worker_prestart"] is False
    init_ray({"address": None, "num_cpus": 2})
    try:
        # Other Ray clusters may run on this machine: find ours by its session folder.
        session = ray._private.worker._global_node.get_session_dir_path()
        raylet = [p for p in psutil.process_iter(["name", "cmdline"])
                  if p.info["name"] == "raylet" and any(session in part for part in p.info["cmdline"] or [])]
        assert len(raylet) == 1
        time.sleep(2)  # Ray would have started its prestarted workers by now
        idle = [c for c in raylet[0].children(recursive=True) if "IDLE" in " ".join(c.cmdline())]
        assert idle == []
    finally:
        ray.shutdown()


def test_asha_brackets_hedge_with_later_first_rungs_and_a_bad_count_is_refused(tmp_path):
    config = sweep_config(tmp_path, "sweep.num_trials=6", "trainer.evaluations=8", "sweep.brackets=3",
                          "sweep.grace_period=1")
    scheduler = build_scheduler(config, num_train=800)
    # Bracket k's first rung at grace x rf^k: 1, 2 and 4 of 8 evaluations.
    assert sorted(min(m for m, _ in bracket._rungs) for bracket in scheduler._brackets) == [1, 2, 4]
    config["sweep"]["brackets"] = 0
    with pytest.raises(ConfigError, match="sweep.brackets must be >= 1"):
        validate(config)


def test_constant_liar_reaches_the_sweeps_tpe_sampler(tmp_path):
    import optuna

    from medsweep.search.sweep import make_sampler

    config = sweep_config(tmp_path, "sweep.num_trials=30", "sweep.constant_liar=true")
    liar = make_sampler(config["sweep"])
    assert liar._constant_liar and liar._n_startup_trials == 10
    # A running trial's proposal makes the next proposal move away from it: lying spreads them out.
    space = {"x": optuna.distributions.FloatDistribution(0.0, 1.0)}

    def second_proposal(sampler):
        study = optuna.create_study(sampler=sampler, direction="maximize")
        for value in [0.1 * i for i in range(10)]:
            study.add_trial(optuna.trial.create_trial(params={"x": value}, distributions=space,
                                                      value=-(value - 0.5) ** 2))
        first = study.ask(space)
        second = study.ask(space)
        return abs(first.params["x"] - second.params["x"])

    gaps_liar = [second_proposal(make_sampler(dict(config["sweep"], seed=s))) for s in range(8)]
    gaps_plain = [second_proposal(make_sampler(dict(config["sweep"], seed=s, constant_liar=False))) for s in range(8)]
    assert sum(gaps_liar) > sum(gaps_plain)


def test_the_default_first_rung_is_a_third_of_a_trials_evaluations(tmp_path):
    from medsweep.search.sweep import grace_period

    config = sweep_config(tmp_path, "sweep.num_trials=6")
    assert config["sweep"]["grace_period"] is None
    assert [grace_period(config["sweep"], e) for e in (1, 3, 4, 6, 8, 12)] == [1, 1, 2, 2, 3, 4]
    config["trainer"]["evaluations"] = 8
    scheduler = build_scheduler(config, num_train=800)
    assert min(m for bracket in scheduler._brackets for m, _ in bracket._rungs) == 3
    # Set, it is taken as it is.
    assert grace_period(dict(config["sweep"], grace_period=1), 8) == 1
