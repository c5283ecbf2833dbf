"""The simulated clock: slots, budgets and early stopping with the real samplers and schedulers."""

import math

import optuna
import pytest
from optuna.distributions import FloatDistribution
from ray.tune.schedulers import FIFOScheduler

from medsweep.search import sweep
from medsweep.simulation import clock
from tests.conftest import compose_config

SPACE = {"x": FloatDistribution(1e-4, 1e-1, log=True)}
BEST = 1e-2


def curve(params, number, evaluations=4, seconds=10.0):
    """Value peaks at x = 1e-2 and grows with evaluations; every evaluation takes `seconds`."""
    quality = 1.0 - abs(math.log10(params["x"] / BEST)) / 3.0
    return [(quality * (0.5 + 0.5 * k / evaluations), seconds * k) for k in range(1, evaluations + 1)]


def random_fifo(name="random"):
    return clock.Side(name, concurrency=lambda slots: slots, sampler=lambda seed: optuna.samplers.RandomSampler(seed),
                      stopper=lambda e: clock.RayStopper(FIFOScheduler()))


def test_one_slot_runs_trials_back_to_back_on_the_simulated_clock():
    outcome = clock.simulate(random_fifo(), SPACE, curve, slots=1, budget_s=200.0, seed=0, evaluations=4)
    # 40 s per trial: 5 whole trials in 200 s, the 6th started but none of it reported... until 200 s.
    assert [at for at, _ in outcome.events] == [10.0 * k for k in range(1, 21)]
    assert outcome.trials == 6 and outcome.stopped == 0 and outcome.evaluations == 20


def test_slots_run_side_by_side_and_a_side_may_use_fewer():
    wide = clock.simulate(random_fifo(), SPACE, curve, slots=8, budget_s=200.0, seed=0, evaluations=4)
    assert wide.evaluations == 8 * 20 and wide.trials == 8 * 6
    one_at_a_time = clock.Side("hf", concurrency=lambda slots: 1, sampler=lambda seed: optuna.samplers.RandomSampler(seed),
                               stopper=lambda e: clock.RayStopper(FIFOScheduler()))
    narrow = clock.simulate(one_at_a_time, SPACE, curve, slots=8, budget_s=200.0, seed=0, evaluations=4)
    assert narrow.evaluations == 20


def test_medsweeps_asha_stops_weak_trials_and_reaches_the_target_sooner_than_random_fifo():
    config = compose_config(["+sweep=replay_lcbench", "trainer.evaluations=4", "sweep.num_trials=64",
                             "sweep.max_concurrent=8"])
    medsweep = clock.Side("medsweep", concurrency=lambda slots: slots,
                          sampler=lambda seed: sweep.make_sampler(dict(config["sweep"], seed=seed)),
                          stopper=lambda e: clock.RayStopper(sweep.build_scheduler(config, num_train=1)))
    fast, slow = [], []
    for seed in range(3):
        ours = clock.simulate(medsweep, SPACE, curve, slots=8, budget_s=800.0, seed=seed, evaluations=4)
        theirs = clock.simulate(random_fifo(), SPACE, curve, slots=8, budget_s=800.0, seed=seed, evaluations=4)
        assert ours.stopped > 0 and theirs.stopped == 0
        # Stopping frees slots: more trials in the same simulated time.
        assert ours.trials > theirs.trials
        target = 0.97
        fast.append(ours.time_to(target) or 800.0)
        slow.append(theirs.time_to(target) or 800.0)
    assert sorted(fast)[1] < sorted(slow)[1]


def test_an_optuna_pruner_stops_trials_below_the_median():
    side = clock.Side("optuna", concurrency=lambda slots: slots, sampler=lambda seed: optuna.samplers.RandomSampler(seed),
                      stopper=lambda e: clock.PrunerStopper(), pruner=lambda e: optuna.pruners.MedianPruner(n_startup_trials=2))
    outcome = clock.simulate(side, SPACE, curve, slots=2, budget_s=600.0, seed=1, evaluations=4)
    assert 0 < outcome.stopped < outcome.trials


def test_first_points_are_tried_first_and_time_to_reads_the_clock():
    side = clock.Side("based", concurrency=lambda slots: 1, sampler=lambda seed: optuna.samplers.RandomSampler(seed),
                      stopper=lambda e: clock.RayStopper(FIFOScheduler()), first=[{"x": BEST}])
    outcome = clock.simulate(side, SPACE, curve, slots=1, budget_s=40.0, seed=0, evaluations=4)
    assert outcome.best_by(40.0) == pytest.approx(1.0)
    assert outcome.time_to(1.0 - 1e-9) == 40.0 and outcome.time_to(2.0) is None
    assert outcome.best_by(5.0) == float("-inf")

