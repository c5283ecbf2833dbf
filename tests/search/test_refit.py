"""Search cheap, promote on everything; never worse than not sweeping; say when the range is wrong.

Real Ray Tune sweeps of the tiny random BERT on real Medical Abstracts rows; where a test needs a
known optimum, the trials still train for real and only the score they report is scripted.
"""

import csv
import math

import pandas as pd
import pytest
import ray

from medsweep import data
from medsweep.promotion import ranking, reruns, selection, stage
from medsweep.search import edges, sweep
from tests.conftest import SHARED_DATA, TINY, compose_config

ROWS = 200  # 140 train / 30 validation / 30 test after the stratified split


@pytest.fixture(scope="module")
def ray_local():
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def abstracts(tmp_path_factory):
    path = tmp_path_factory.mktemp("abstracts") / "abstracts.csv"
    pd.read_csv(SHARED_DATA / "medical_abstracts" / "medical_tc_test.csv").head(ROWS).to_csv(path, index=False)
    return path


def small_config(abstracts, run_dir, *overrides, space=None):
    config = compose_config(TINY + ["data=csv", f"data.path={abstracts}", "data.text_column=medical_abstract",
                                    "data.label_column=condition_label", "data.max_train_samples=40",
                                    "data.max_eval_samples=null", "trainer.epochs=1", "cluster.num_cpus=2",
                                    "promote.bootstrap_resamples=100", *overrides], run_dir=run_dir)
    config["sweep"]["search_space"] = space or {}
    return config


def texts(frame) -> set:
    return set(frame["text"])


def scripted(score_of_lr):
    """A trainable that really trains, but reports score_of_lr(learning rate) as val_f1_macro."""

    def trainable(sampled, base_config):
        from ray import tune

        from medsweep.search.space import apply_overrides
        from medsweep.training.trial import run_trial

        config = apply_overrides(base_config, sampled)
        score = score_of_lr(config["trainer"]["learning_rate"])

        def report(metrics, checkpoint_dir):
            tune.report(dict(metrics, val_f1_macro=score), checkpoint=tune.Checkpoint.from_directory(str(checkpoint_dir)))

        run_trial(config, on_evaluation=report)

    return trainable


def test_refit_trains_the_promoted_model_on_all_training_rows_and_only_those(tmp_path, abstracts, ray_local):
    from ray import tune

    config = small_config(abstracts, tmp_path, "sweep.searcher=random", "promote.top_k=1", "promote.refit=true")
    plan = sweep.preflight(config)
    splits = plan.splits
    full = data.load_splits(dict(config["data"], max_train_samples=None))
    # The search trains on a strict subset of the training split, never on a validation or test row.
    assert texts(splits.train) < texts(full.train) and len(splits.train) == 40
    assert not texts(full.train) & (texts(full.validation) | texts(full.test))

    space = {"trainer": {"learning_rate": tune.grid_search([2e-3, 5e-3])}}
    results = sweep.run_sweep(plan, param_space=space)
    chosen = selection.choose(plan, results)
    assert chosen.run.origin == "refit" and chosen.training["refit"]
    report = stage.release_chosen(plan, chosen)

    # The promoted weights: trained on exactly the full training split (its row fingerprint), which
    # holds no validation or test row, for one epoch of it (more steps than a search trial ran).
    training = report["training"]
    rows = len(full.train)
    assert training["rows"] == rows > 100 and training["search_rows"] == 40
    assert training["train_fingerprint"] == full.fingerprints["train"] == report["data_fingerprints"]["train"]
    assert training["search_train_fingerprint"] == splits.fingerprints["train"]
    assert report["data_fingerprints"]["validation"] == splits.fingerprints["validation"]
    assert report["data_fingerprints"]["test"] == splits.fingerprints["test"]
    assert training["steps"] == math.ceil(rows / 16)  # the refit's one epoch; a search trial ran ceil(40 / 16) = 3
    assert {r.metrics["step"] for r in results} == {math.ceil(40 / 16)}
    refits = list((tmp_path / "ray" / "seeds").glob("seed_trial_*"))
    assert len(refits) == 1  # top_k=1 x [trainer.seed]; promote.seeds=[] adds none
    assert report["seed_robustness"]["seeds"] == [config["trainer"]["seed"]]
    card = (tmp_path / "promoted" / "README.md").read_text()
    assert (f"Trained on {rows} training rows (train fingerprint `{full.fingerprints['train']}`) for "
            f"{math.ceil(rows / 16)} optimizer steps") in card
    assert "after a search on 40 of them" in card


def test_refit_config_keeps_epochs_and_scales_step_budgets(tmp_path, abstracts):
    config = small_config(abstracts, tmp_path)
    searched, every = sweep.preflight(config).training_rows()
    assert searched["rows"] == 40 and every["rows"] > 100
    # The refit config: all rows, same epochs; explicit step budgets scaled by the row ratio.
    refit = reruns.refit_config(dict(config, trainer=dict(config["trainer"], max_steps=10, eval_every_steps=3)), 40, 140)
    assert refit["data"]["max_train_samples"] is None and refit["trainer"]["epochs"] == config["trainer"]["epochs"]
    assert (refit["trainer"]["max_steps"], refit["trainer"]["eval_every_steps"]) == (35, 11)
    assert config["data"]["max_train_samples"] == 40  # the search's config is left alone


def test_a_space_that_can_only_do_worse_promotes_the_base_configuration(tmp_path, abstracts, ray_local):
    # Full vs LoRA in one conditional space; the base (full fine-tune, lr 1e-3) is the only optimum.
    space = {"trainer": {"learning_rate": {"type": "loguniform", "lower": 1e-4, "upper": 1e-2}},
             "model": {"finetune": {"type": "choice", "values": ["full", "lora"]},
                       "lora": {"r": {"type": "choice", "values": [4, 8]}}}}
    config = small_config(abstracts, tmp_path, "trainer.learning_rate=1e-3", "sweep.num_trials=3", "sweep.scheduler=none",
                          "promote.refit=false", space=space)
    plan = sweep.preflight(config)

    def score(lr):
        return 0.9 - abs(math.log10(lr / 1e-3))

    results = sweep.run_sweep(plan, trainable_fn=scripted(score))
    chosen = selection.choose(plan, results)
    assert chosen.winner.params == {"trainer": {"learning_rate": 1e-3}, "model": {"finetune": "full"}}
    assert chosen.run.scores["val_f1_macro"] == pytest.approx(0.9)
    assert all(r.metrics["val_f1_macro"] < 0.9 for r in results if r.config != chosen.winner.params)
    # The leaderboard: LoRA rank empty for full fine-tunes, set for LoRA ones.
    with open(tmp_path / "leaderboard.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and rows[0]["trainer.learning_rate"] == "0.001" and rows[0]["model.finetune"] == "full"
    for row in rows:
        assert (row["model.lora.r"] == "") == (row["model.finetune"] == "full")


@pytest.mark.slow  # two rounds of real trials and a promotion: `make test-slow`
def test_a_best_trial_at_the_range_edge_is_reported_and_the_follow_up_round_moves_the_range(tmp_path, abstracts, ray_local):
    # The optimum lies above the range: the score keeps growing with the learning rate.
    config = small_config(abstracts, tmp_path, "trainer.learning_rate=9e-4", "sweep.num_trials=2", "sweep.scheduler=none",
                          "sweep.extend_edges=true", "promote.refit=false",
                          space={"trainer": {"learning_rate": {"type": "loguniform", "lower": 1e-4, "upper": 1e-3}}})
    plan = sweep.preflight(config)
    trainable = scripted(lambda lr: 0.5 + 0.1 * math.log10(lr / 1e-4))
    results = sweep.run_sweep(plan, trainable_fn=trainable)
    hints = edges.range_hints(ranking.best_candidate(results, config), results, config)
    assert [h["path"] for h in hints if h["kind"] == "range"] == ["trainer.learning_rate"]
    best = hints[0]["value"]
    assert best >= 9e-4 and hints[0]["message"].startswith(f"widen trainer.learning_rate above 0.001: the best trial drew {best:.3g}")
    # The end of the sweep: in metrics.json (range_hints) and the model card.
    chosen = selection.choose(plan, results)
    assert chosen.range_hints == hints
    assert stage.release_chosen(plan, chosen)["range_hints"] == hints
    card = (tmp_path / "promoted" / "README.md").read_text()
    assert "## Search range" in card and hints[0]["message"] in card

    combined, extended_plan = edges.follow_up_round(plan, results, hints, trainable_fn=trainable)
    extended = extended_plan.config
    moved = extended["sweep"]["search_space"]["trainer"]["learning_rate"]
    assert moved["lower"] == pytest.approx(best) and moved["upper"] == pytest.approx(best * 10)
    second = [r.config["trainer"]["learning_rate"] for r in combined[2:]]
    assert len(combined) == 4 and all(best <= lr <= best * 10 for lr in second)
    assert (tmp_path / "ray" / "sweep_extended").is_dir()
    with open(tmp_path / "leaderboard.csv") as f:
        assert len(list(csv.DictReader(f))) == 4  # both rounds on one leaderboard
    rates = [r.config["trainer"]["learning_rate"] for r in combined]
    winner = selection.choose(extended_plan, combined).winner
    assert winner.params["trainer"]["learning_rate"] == max(rates) > 1e-3  # found beyond the old edge
