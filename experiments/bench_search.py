"""Wall time to reach a target validation macro-F1: medsweep's sweep (Optuna TPE + ASHA on Ray,
parallel trials) vs `transformers.Trainer.hyperparameter_search(backend="optuna")` (sequential
trials, no early stopping), with the same search space, trial budget, model and data subset.

    python experiments/bench_search.py --quick     # ~15 min on 2 cores
    python experiments/bench_search.py             # ~40 min

Prints the best F1 each reached, a table of times to several target F1s from the same two runs,
and, last, `ratio=X.XX` for --target (medsweep's time over Trainer.hyperparameter_search's; goal
<= 0.35). A side that never reaches a target is charged its whole run time (marked *).
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import ray
import torch
from transformers import DataCollatorWithPadding, Trainer

from medsweep import data
from medsweep.config import MedsweepConfig
from medsweep.training.model import build_model, load_tokenizer
from medsweep.hf import quiet_libraries
from medsweep.training.trial import compute_metrics, tokenize, training_arguments

TARGETS = (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6)
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


def medsweep_search(config: dict) -> tuple[list[tuple[float, float]], float]:
    """[(seconds since the start, validation macro-F1) per evaluation], whole run time."""
    from medsweep.reporting.report import load_trials
    from medsweep.run import execute

    started = time.time()
    execute(config)
    total = time.time() - started
    ray.shutdown()
    # Ray's timestamps are whole seconds since the epoch; `started` is the same clock.
    return [(row.timestamp - started, row.val_f1_macro) for trial in load_trials(Path(config["run_dir"]) / "ray" / "sweep")
            for row in trial.history.itertuples()], total


def hf_search(config: dict, trials: int) -> tuple[list[tuple[float, float]], float]:
    torch.set_num_threads(2)
    splits = data.load_splits(config["data"])
    tokenizer = load_tokenizer(config["model"])
    train = tokenize(splits.train, tokenizer, config["trainer"]["max_length"])
    val = tokenize(splits.validation, tokenizer, config["trainer"]["max_length"])
    evaluations = []
    started = time.time()

    def metrics_with_clock(prediction):
        scores_now = compute_metrics(prediction)
        evaluations.append((time.time() - started, scores_now["f1_macro"]))
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
    return evaluations, time.time() - started


def time_to(evaluations: list[tuple[float, float]], target: float) -> float:
    hits = [t for t, f1 in evaluations if f1 >= target]
    return min(hits) if hits else float("inf")


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
        ours, ours_total = medsweep_search(config)
        theirs, theirs_total = hf_search(config, trials)
    print(f"MiniLM full fine-tune, {samples} samples x {epochs} epochs, {trials} trials, 2 CPU cores")
    print(f"{'':34s} best val macro-F1   whole search")
    print(f"{'medsweep (TPE+ASHA, 2 parallel)':34s} {max(f for _, f in ours):17.3f}   {ours_total:9.0f} s")
    print(f"{'Trainer.hyperparameter_search':34s} {max(f for _, f in theirs):17.3f}   {theirs_total:9.0f} s")
    # Time to reach each target from the same two runs; a side that never reaches it is charged its
    # whole search time (a lower bound on what it would need).
    print("target F1   medsweep s   hyperparameter_search s   ratio")
    for level in sorted({*TARGETS, target}):
        a, b = time_to(ours, level), time_to(theirs, level)
        a_t, b_t = (a if a != float("inf") else ours_total), (b if b != float("inf") else theirs_total)
        print(f"{level:9.2f}   {a_t:8.0f}{'' if a != float('inf') else '*'}   {b_t:21.0f}{'' if b != float('inf') else '*'}"
              f"   {a_t / b_t:5.2f}")
    print("* never reached: whole search time")
    a, b = time_to(ours, target), time_to(theirs, target)
    a_t, b_t = (a if a != float("inf") else ours_total), (b if b != float("inf") else theirs_total)
    print(f"target={target}")
    print(f"ratio={a_t / b_t:.2f}")

if __name__ == "__main__":
    main()
