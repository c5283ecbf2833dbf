import re

import pytest
from ray.tune.search.sample import Categorical, Float, Integer

from medsweep.config import ConfigError
from medsweep.search.space import apply_overrides, build_search_space, flatten_values
from tests.conftest import compose_config


@pytest.fixture(scope="module")
def base():
    return compose_config(["model.finetune=lora"])


def test_builds_nested_tune_domains(base):
    space = build_search_space({
        "trainer": {
            "learning_rate": {"type": "loguniform", "lower": 1e-5, "upper": 1e-3},
            "warmup_ratio": {"type": "uniform", "lower": 0.0, "upper": 0.2},
            "batch_size": {"type": "choice", "values": [8, 16]},
        },
        "model": {"lora": {"r": {"type": "int", "lower": 4, "upper": 16, "log": True},
                           "target_modules": {"type": "choice", "values": ["query,value", "all-linear"]}}},
    }, base)
    lr = space["trainer"]["learning_rate"]
    assert isinstance(lr, Float) and (lr.lower, lr.upper) == (1e-5, 1e-3)
    # Log-uniform: the median sits near the geometric mean (1e-4), far below the midpoint (5e-4).
    draws = sorted(lr.sample() for _ in range(2000))
    assert 5e-5 < draws[1000] < 2e-4
    assert isinstance(space["trainer"]["batch_size"], Categorical) and space["trainer"]["batch_size"].categories == [8, 16]
    r = space["model"]["lora"]["r"]
    # YAML bounds are inclusive; Tune's integer upper bound is exclusive.
    assert isinstance(r, Integer) and (r.lower, r.upper) == (4, 17)
    samples = {space["model"]["lora"]["r"].sample() for _ in range(300)}
    assert min(samples) >= 4 and max(samples) == 16


@pytest.mark.parametrize("spec, message", [
    ({"trainer": {"learning_rate": {"type": "loguniform", "lower": 1e-3, "upper": 1e-5}}}, "empty range"),
    ({"trainer": {"learning_rate": {"type": "loguniform", "lower": 0.0, "upper": 1e-3}}}, "lower > 0"),
    ({"trainer": {"learning_rate": {"type": "uniform", "lower": 0.1, "upper": 0.1}}}, "empty range"),
    ({"trainer": {"batch_size": {"type": "int", "lower": 32, "upper": 8}}}, "empty range"),
    ({"trainer": {"batch_size": {"type": "int", "lower": 8.5, "upper": 16}}}, "whole numbers"),
    ({"trainer": {"batch_size": {"type": "choice", "values": []}}}, "non-empty list"),
    ({"trainer": {"batch_size": {"type": "choice", "values": [[8], [16]]}}}, "numbers, strings"),
    ({"trainer": {"learning_rate": {"type": "gaussian", "mu": 1}}}, "unknown type"),
    ({"trainer": {"learning_rate": {"type": "uniform", "lower": 0.1}}}, "needs ['upper']"),
    ({"trainer": {"learning_rate": {"type": "uniform", "lower": 0.1, "upper": 1, "step": 2}}}, "unknown key"),
    ({"trainer": {"learnin_rate": {"type": "uniform", "lower": 0.1, "upper": 1}}}, "no such config key"),
    ({"trainer": {"learning_rate": 0.1}}, "must be a mapping"),
])
def test_rejects_impossible_spaces_with_a_clear_message(base, spec, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_search_space(spec, base)


def test_lora_dimensions_require_lora_finetuning():
    full = compose_config(["model.finetune=full"])
    with pytest.raises(ConfigError, match="only applies when model.finetune=lora"):
        build_search_space({"model": {"lora": {"r": {"type": "choice", "values": [4, 8]}}}}, full)


def test_apply_overrides_writes_sampled_values_without_touching_the_base(base):
    sampled = {"trainer": {"learning_rate": 3e-4}, "model": {"lora": {"r": 4}}}
    config = apply_overrides(base, sampled)
    assert config["trainer"]["learning_rate"] == 3e-4 and config["model"]["lora"]["r"] == 4
    assert base["trainer"]["learning_rate"] != 3e-4  # deep copy
    assert flatten_values(sampled) == {"trainer.learning_rate": 3e-4, "model.lora.r": 4}
    with pytest.raises(ConfigError, match="unknown config key trainer.nope"):
        apply_overrides(base, {"trainer": {"nope": 1}})


def test_every_shipped_sweep_space_builds():
    from tests.conftest import CONF

    for path in sorted((CONF / "sweep").glob("*.yaml")):
        config = compose_config([f"+sweep={path.stem}"])
        space = build_search_space(config["sweep"]["search_space"], config)
        assert space, f"{path.name} has an empty search space"


def _proposed_rates(num_trials: int, startup: int | None) -> list[float]:
    """Learning rates the sweep's Optuna searcher proposes, fed a score that peaks at lr 1e-3, one trial
    at a time as Tune would: the searcher exactly as the sweep builds it."""
    import math
    import tempfile

    from medsweep.search.sweep import build_searcher

    config = compose_config(["+sweep=smoke", f"sweep.num_trials={num_trials}", f"sweep.startup_trials={startup or 'null'}",
                             "sweep.search_space.trainer.learning_rate.lower=1e-6",
                             "sweep.search_space.trainer.learning_rate.upper=1e-1"],
                            run_dir=tempfile.mkdtemp())  # its own Optuna study (journal in the run dir)
    space = build_search_space(config["sweep"]["search_space"], config)
    searcher = build_searcher(config, space)
    searcher.set_search_properties("val_f1_macro", "max", space)
    rates = []
    for i in range(num_trials):
        rates.append(searcher.suggest(str(i))["trainer"]["learning_rate"])
        searcher.on_trial_complete(str(i), {"val_f1_macro": -abs(math.log10(rates[-1] / 1e-3)), "training_iteration": 1})
    return rates


def test_small_sweeps_get_guided_trials_after_a_few_random_ones():
    from medsweep.search.sweep import startup_trials

    assert [startup_trials({"num_trials": n, "startup_trials": None}) for n in (1, 5, 9, 12, 90)] == [2, 2, 3, 4, 10]
    assert startup_trials({"num_trials": 12, "startup_trials": 7}) == 7
    # 9 trials: 3 random (seeded: the same as an all-random sweep's first 3), then TPE's own
    # proposals. With Optuna's default of 10 random trials, all 9 would be random.
    guided, all_random = _proposed_rates(9, None), _proposed_rates(9, 9)
    assert guided[:3] == all_random[:3]
    assert all(a != b for a, b in zip(guided[3:], all_random[3:]))
