"""Wall time to reach a target validation macro-F1: medsweep's sweep (Optuna TPE + ASHA on Ray,
parallel trials) vs `transformers.Trainer.hyperparameter_search(backend="optuna")` (sequential
trials, no early stopping), with the same search space, trial budget, model and data subset.

    python experiments/bench_search.py --quick     # ~15 min on 2 cores
    python experiments/bench_search.py             # ~40 min

Prints both times to target (and the best F1 each reached) and, last, `ratio=X.XX`
(medsweep's time over Trainer.hyperparameter_search's; goal <= 0.35). If a side never reaches the
target its whole run time is used and the line says so.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import ray
import torch
from transformers import DataCollatorWithPadding, Trainer

from medsweep import data
from medsweep.config import MedsweepConfig
from medsweep.model import build_model, load_tokenizer
from medsweep.trial import compute_metrics, quiet_libraries, tokenize, training_arguments

SPACE = {"trainer": {"learning_rate": {"type": "loguniform", "lower": 1e-5, "upper": 5e-4},
                     "warmup_ratio": {"type": "uniform", "lower": 0.0, "upper": 0.2}}}


def make_config(run_dir: str, train_samples: int, epochs: int, trials: int) -> dict:
    config = dataclasses.asdict(MedsweepConfig())
    config["data"].update(text_column="medical_abstract", label_column="condition_label",
                          path="builtin:medical_abstracts", label_names_path="builtin:medical_abstracts_labels",
                          max_train_samples=train_samples, max_eval_samples=200)
    config["trainer"].update(epochs=epochs)
    config["sweep"].update(name="bench", num_trials=trials, max_concurrent=2, search_space=SPACE, seed=0)
    # Two 1-thread trials side by side on a 2-core machine (the HF side gets both threads).
    config["cluster"].update(cpus_per_trial=1, num_cpus=2)
    config["promote"]["enabled"] = False
    config["run_dir"] = run_dir
    return config


def medsweep_time_to_target(config: dict, target: float) -> tuple[float, float, float]:
    from medsweep.run import execute

    started = time.time()
    execute(config)
    total = time.time() - started
    ray.shutdown()
    reports = []
    for path in (Path(config["run_dir"]) / "ray" / "sweep").glob("*/result.json"):
        reports += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    best = max(r["val_f1_macro"] for r in reports)
    hits = [r["timestamp"] for r in reports if r["val_f1_macro"] >= target]
    # Ray's timestamps are whole seconds since the epoch; `started` is the same clock.
    return (min(hits) - started if hits else float("inf")), best, total


def hf_time_to_target(config: dict, target: float, trials: int) -> tuple[float, float, float]:
    torch.set_num_threads(2)
    splits = data.load_splits(config["data"])
    tokenizer = load_tokenizer(config["model"])
    train = tokenize(splits.train, tokenizer, config["trainer"]["max_length"])
    val = tokenize(splits.validation, tokenizer, config["trainer"]["max_length"])
    hits, scores = [], []
    started = time.time()

    def metrics_with_clock(prediction):
        scores_now = compute_metrics(prediction)
        scores.append(scores_now["f1_macro"])
        if scores_now["f1_macro"] >= target:
            hits.append(time.time() - started)
        return scores_now

    def space(trial):
        lr = SPACE["trainer"]["learning_rate"]
        warm = SPACE["trainer"]["warmup_ratio"]
        return {"learning_rate": trial.suggest_float("learning_rate", lr["lower"], lr["upper"], log=True),
                "warmup_steps": trial.suggest_float("warmup_steps", warm["lower"], warm["upper"])}

    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(model_init=lambda trial=None: build_model(config["model"], splits.label_names),
                          args=training_arguments(config["trainer"], out, torch.float32, save=False),
                          train_dataset=train, eval_dataset=val, data_collator=DataCollatorWithPadding(tokenizer),
                          processing_class=tokenizer, compute_metrics=metrics_with_clock)
        import optuna

        trainer.hyperparameter_search(hp_space=space, backend="optuna", n_trials=trials, direction="maximize",
                                      compute_objective=lambda metrics: metrics["eval_f1_macro"],
                                      sampler=optuna.samplers.TPESampler(seed=0))
    total = time.time() - started
    return (min(hits) if hits else float("inf")), max(scores), total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 samples x 2 epochs x 6 trials")
    parser.add_argument("--target", type=float, default=None, help="validation macro-F1 to reach")
    args = parser.parse_args()
    quiet_libraries()
    samples, epochs, trials = (200, 2, 6) if args.quick else (400, 3, 10)
    target = args.target or (0.35 if args.quick else 0.5)
    with tempfile.TemporaryDirectory() as run_dir:
        config = make_config(run_dir, samples, epochs, trials)
        ours, ours_best, ours_total = medsweep_time_to_target(config, target)
        theirs, theirs_best, theirs_total = hf_time_to_target(config, target, trials)
    print(f"MiniLM full fine-tune, {samples} samples x {epochs} epochs, {trials} trials, target val macro-F1 {target}")
    for name, t, best, total in (("medsweep (TPE+ASHA, 2 parallel)", ours, ours_best, ours_total),
                                 ("Trainer.hyperparameter_search", theirs, theirs_best, theirs_total)):
        reached = f"{t:7.0f} s to target" if t != float("inf") else "never reached the target"
        print(f"{name:34s} {reached}; best F1 {best:.3f}; whole search {total:.0f} s")
    ours_t = ours if ours != float("inf") else ours_total
    theirs_t = theirs if theirs != float("inf") else theirs_total
    print(f"ratio={ours_t / theirs_t:.2f}")


if __name__ == "__main__":
    main()
