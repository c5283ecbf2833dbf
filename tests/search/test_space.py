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


CONDITIONAL = {"trainer": {"learning_rate": {"type": "loguniform", "lower": 1e-5, "upper": 1e-2}},
               "model": {"finetune": {"type": "choice", "values": ["full", "lora"]},
                         "lora": {"r": {"type": "choice", "values": [4, 8, 16]},
                                  "dropout": {"type": "uniform", "lower": 0.0, "upper": 0.2}}}}


def test_a_searched_finetune_draws_lora_dimensions_only_for_lora_trials():
    from medsweep.search.space import is_conditional
    from medsweep.search.sweep import build_searcher

    config = compose_config(["model.finetune=full", "sweep.num_trials=12"])
    config["sweep"]["search_space"] = CONDITIONAL
    space = build_search_space(CONDITIONAL, config)  # LoRA dimensions accepted although the base is full
    assert is_conditional(CONDITIONAL)
    searcher = build_searcher(config, space)
    drawn = []
    for i in range(12):
        sampled = searcher.suggest(str(i))
        drawn.append(sampled)
        searcher.on_trial_complete(str(i), {"val_f1_macro": 0.5, "training_iteration": 1})
    # The first trial is the base configuration (full fine-tune): no LoRA value at all.
    assert drawn[0] == {"trainer": {"learning_rate": config["trainer"]["learning_rate"]}, "model": {"finetune": "full"}}
    kinds = {d["model"]["finetune"] for d in drawn}
    assert kinds == {"full", "lora"}
    for d in drawn:
        lora = d["model"].get("lora")
        if d["model"]["finetune"] == "full":
            assert lora is None and flatten_values(d).keys() == {"trainer.learning_rate", "model.finetune"}
        else:
            assert lora["r"] in (4, 8, 16) and 0.0 <= lora["dropout"] <= 0.2
        assert apply_overrides(config, d)["model"]["finetune"] == d["model"]["finetune"]


def test_conditional_space_mistakes_are_one_line_errors():
    from medsweep.search.space import check_points

    config = compose_config(["model.finetune=full"])
    never_lora = {"model": {"finetune": {"type": "choice", "values": ["full"]}, "lora": {"r": {"type": "choice", "values": [4]}}}}
    with pytest.raises(ConfigError, match="never draws lora"):
        build_search_space(never_lora, config)
    with pytest.raises(ConfigError, match="values must be among"):
        build_search_space({"model": {"finetune": {"type": "choice", "values": ["full", "qlora"]}}}, config)
    random = compose_config(["model.finetune=full", "sweep.searcher=random"])
    with pytest.raises(ConfigError, match="needs sweep.searcher=optuna"):
        build_search_space(CONDITIONAL, random)
    # Points: a full fine-tune sets no LoRA value, a LoRA one sets them all.
    assert check_points([{"trainer": {"learning_rate": 1e-4}, "model": {"finetune": "full"}}], CONDITIONAL)
    with pytest.raises(ConfigError, match="never draw"):
        check_points([{"trainer": {"learning_rate": 1e-4}, "model": {"finetune": "full", "lora": {"r": 4, "dropout": 0.1}}}],
                     CONDITIONAL)
    with pytest.raises(ConfigError, match=r"missing \['model.lora.dropout'\]"):
        check_points([{"trainer": {"learning_rate": 1e-4}, "model": {"finetune": "lora", "lora": {"r": 4}}}], CONDITIONAL)


def test_every_shipped_sweep_tries_its_base_configuration_first():
    from medsweep.search.space import base_point, sweep_points
    from tests.conftest import CONF

    for path in sorted((CONF / "sweep").glob("*.yaml")):
        config = compose_config([f"+sweep={path.stem}"])
        base, why = base_point(config["sweep"]["search_space"], config)
        assert base is not None, f"{path.name}: {why}"
        points, note = sweep_points(config)
        assert note == "" and points[0] == {k.replace(".", "/"): v for k, v in flatten_values(base).items()}
    # A base value outside its dimension: said, not tried (the searcher's own trials start the sweep).
    config = compose_config(["+sweep=smoke", "trainer.learning_rate=1e-2"])
    points, note = sweep_points(config)
    assert points == [] and note == "the base configuration is not tried first: trainer.learning_rate=0.01 outside the search space"
    assert sweep_points(compose_config(["+sweep=smoke", "sweep.try_base=false"]))[0] == []
