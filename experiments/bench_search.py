"""Time to a good model: medsweep's sweep as shipped (Optuna TPE + the shipped scheduler, rungs from
trainer.evaluations, two 1-thread trials side by side) vs `Trainer.hyperparameter_search(backend="optuna")`
with its defaults (TPE, Optuna's default MedianPruner at each per-epoch evaluation, one trial at a
time on both threads) and vs Ray Tune's own defaults (random search + FIFO, one evaluation per epoch),
on the same search space, trial budget, model and data, repeated over seeds in one process run.

    python experiments/bench_search.py                      # 3 seeds x 3 sides, ~12 min on 2 cores
    python experiments/bench_search.py --schedulers asha hyperband median   # which scheduler to ship

The model is the embedded MiniLM (full fine-tune), sized down to fit 3 seeds x 3 sides x 6 trials in
one ~12-minute run: 120 training abstracts x 2 epochs at 64 tokens, 100 validation abstracts. The tiny
random BERT would be faster but does not learn Medical Abstracts in a trial this short (it stays at the
majority class, macro-F1 0.099, at learning rates 3e-4..3e-3 over 800 abstracts x 2 epochs), so a
search over it has nothing to find.

For each seed and each pair (medsweep vs another side): the target is the best validation macro-F1
either side found, minus 0.01; each side's time is from its own start (medsweep's includes starting
Ray) to its first evaluation at or above the target (a side that never gets there is charged its whole
search, marked *). Prints per-seed times, the median and spread of each ratio, and, last,
`ratio=X.XX`: the median over seeds of medsweep's time over hyperparameter_search's (goal <= 0.35).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import ray
import torch
from transformers import DataCollatorWithPadding, Trainer

from medsweep import data
from medsweep.hf import quiet_libraries
from medsweep.run import compose
from medsweep.training.model import build_model, load_tokenizer
from medsweep.training.trial import compute_metrics, tokenize, training_arguments

SPACE = {"trainer": {"learning_rate": {"type": "loguniform", "lower": 1e-5, "upper": 5e-4},
                     "warmup_ratio": {"type": "uniform", "lower": 0.0, "upper": 0.2}}}
MARGIN = 0.01


def make_config(run_dir: str, args, seed: int) -> dict:
    config = compose([f"model={args.model}", f"data.max_train_samples={args.samples}",
                      f"data.max_eval_samples={args.eval_samples}", f"trainer.epochs={args.epochs}",
                      f"trainer.max_length={args.max_length}", "trainer.batch_size=16",
                      f"sweep.num_trials={args.trials}", "sweep.max_concurrent=2", f"sweep.seed={seed}",
                      "cluster.cpus_per_trial=1", "cluster.num_cpus=2", "promote.enabled=false"], run_dir)
    config["sweep"].update(name="bench", search_space=copy.deepcopy(SPACE))
    return config


def medsweep_search(config: dict) -> tuple[list[tuple[float, float]], float, int]:
    """[(seconds since the start, validation macro-F1) per evaluation], whole run time, trials stopped early."""
    import pandas as pd

    from medsweep.reporting.run_data import load_trials
    from medsweep.run import execute

    started = time.time()
    execute(config)
    total = time.time() - started
    ray.shutdown()
    run_dir = Path(config["run_dir"])
    stopped = int((pd.read_csv(run_dir / "leaderboard.csv")["status"] == "early_stopped").sum())
    # Ray's timestamps are whole seconds since the epoch; `started` is the same clock.
    return [(row.timestamp - started, row.val_f1_macro) for trial in load_trials(run_dir / "ray" / "sweep")
            for row in trial.history.itertuples()], total, stopped


def hf_search(config: dict, seed: int) -> tuple[list[tuple[float, float]], float, int]:
    import optuna

    evaluations = []
    started = time.time()
    torch.set_num_threads(2)
    splits = data.load_splits(config["data"])
    tokenizer = load_tokenizer(config["model"])
    train = tokenize(splits.train, tokenizer, config["trainer"]["max_length"])
    val = tokenize(splits.validation, tokenizer, config["trainer"]["max_length"])

    def metrics_with_clock(prediction):
        scores_now = compute_metrics(prediction)
        evaluations.append((time.time() - started, scores_now["f1_macro"]))
        return scores_now

    def space(trial):
        lr, warm = SPACE["trainer"]["learning_rate"], SPACE["trainer"]["warmup_ratio"]
        return {"learning_rate": trial.suggest_float("learning_rate", lr["lower"], lr["upper"], log=True),
                "warmup_steps": trial.suggest_float("warmup_steps", warm["lower"], warm["upper"])}

    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(model_init=lambda trial=None: build_model(config["model"], splits.label_names),
                          args=training_arguments(config["trainer"], out, torch.float32, save=False),
                          train_dataset=train, eval_dataset=val, data_collator=DataCollatorWithPadding(tokenizer),
                          processing_class=tokenizer, compute_metrics=metrics_with_clock)
        studies = []
        original = optuna.create_study

        def keep(*a, **k):
            studies.append(original(*a, **k))
            return studies[-1]

        optuna.create_study = keep  # to count the trials its default pruner stopped
        try:
            # Its defaults: Optuna's TPESampler (seeded here, as medsweep's is) and create_study's
            # default MedianPruner, which the Trainer consults at every evaluation.
            trainer.hyperparameter_search(hp_space=space, backend="optuna", n_trials=config["sweep"]["num_trials"],
                                          direction="maximize", compute_objective=lambda m: m["eval_f1_macro"],
                                          sampler=optuna.samplers.TPESampler(seed=seed))
        finally:
            optuna.create_study = original
    pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in studies[0].trials) if studies else 0
    return evaluations, time.time() - started, pruned


def time_to(evaluations: list[tuple[float, float]], target: float, total: float) -> tuple[float, bool]:
    hits = [t for t, f1 in evaluations if f1 >= target]
    return (min(hits), True) if hits else (total, False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--model", default="minilm", help="conf/model option (minilm, tiny_random)")
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--samples", type=int, default=120, help="training abstracts")
    parser.add_argument("--eval-samples", type=int, default=100, help="validation abstracts")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--evaluations", type=int, default=None,
                        help="trainer.evaluations on medsweep's side (default: what the shipped sweeps use)")
    parser.add_argument("--schedulers", nargs="+", default=None,
                        help="medsweep sides to run (default: the shipped scheduler only)")
    args = parser.parse_args()
    quiet_libraries()
    shipped = compose(["+sweep=lr_lora"])
    schedulers = args.schedulers or [shipped["sweep"]["scheduler"]]
    evaluations = args.evaluations or shipped["trainer"]["evaluations"]
    grace_period = shipped["sweep"]["grace_period"]  # the shipped first rung (after the longest warm-up)
    sides = [f"medsweep/{name}" for name in schedulers] + ["hyperparameter_search", "ray defaults"]
    runs: dict[str, list] = {side: [] for side in sides}
    for index, seed in enumerate(args.seeds):
        order = sides[index % len(sides):] + sides[:index % len(sides)]  # rotated: drift hits every side
        for side in order:
            with tempfile.TemporaryDirectory() as run_dir:
                config = make_config(run_dir, args, seed)
                if side.startswith("medsweep/"):
                    config["sweep"]["scheduler"] = side.split("/", 1)[1]
                    config["trainer"]["evaluations"] = evaluations
                    config["sweep"]["grace_period"] = grace_period
                    run = medsweep_search(config)
                elif side == "ray defaults":
                    config["sweep"].update(searcher="random", scheduler="fifo")
                    run = medsweep_search(config)
                else:
                    run = hf_search(config, seed)
            runs[side].append(run)
            evals, total, stopped = run
            print(f"seed {seed}  {side:24s} best {max(f for _, f in evals):.3f}  whole search {total:6.1f} s  "
                  f"{stopped} of {args.trials} stopped early", flush=True)

    print(f"\n{args.model} full fine-tune, {args.samples} abstracts x {args.epochs} epochs, max_length {args.max_length}, "
          f"{args.eval_samples} validation, {args.trials} trials, "
          f"2 CPU cores; medsweep: trainer.evaluations={evaluations}, sweep.grace_period={grace_period}, 2 trials side by side")
    ratios: dict[tuple[str, str], list[float]] = {}
    for ours in sides[:len(schedulers)]:
        for other in sides[len(schedulers):]:
            print(f"{ours} vs {other}: time to within {MARGIN} of the best either found")
            for seed, (a, b) in zip(args.seeds, zip(runs[ours], runs[other])):
                target = max(f for run in (a, b) for _, f in run[0]) - MARGIN
                (ta, ha), (tb, hb) = time_to(a[0], target, a[1]), time_to(b[0], target, b[1])
                ratios.setdefault((ours, other), []).append(ta / tb)
                print(f"  seed {seed}: target {target:.3f}  {ta:6.1f}{'' if ha else '*'} s vs {tb:6.1f}{'' if hb else '*'} s"
                      f"  ratio {ta / tb:.2f}")
    print("* never reached: whole search time")
    for (ours, other), values in ratios.items():
        print(f"{ours} / {other}: median {statistics.median(values):.2f}  spread {min(values):.2f}-{max(values):.2f}"
              f"  over seeds {args.seeds}")
    for side in sides:
        totals = [run[1] for run in runs[side]]
        print(f"{side:24s} whole search median {statistics.median(totals):6.1f} s, best F1 median "
              f"{statistics.median(max(f for _, f in run[0]) for run in runs[side]):.3f}")
    print(f"ratio={statistics.median(ratios[(sides[0], 'hyperparameter_search')]):.2f}")


if __name__ == "__main__":
    main()
