"""Does a small sweep gain from TPE? medsweep's start-up rule (sweep.startup_trials=null: a third of the
trials random, 2 to 10) vs Optuna's default (10 random trials first, so any sweep of up to 10 trials is
random search), on a synthetic score with a known optimum, averaged over seeds. No training: this isolates
the sampler, the part the rule changes; the sweeps' real scores are in bench_search.py and accuracy.py.

The score peaks at lr 1e-3 on a log-uniform 1e-6..1e-1 axis (minus the distance in decades) and ignores a
second, uniform dimension (like warmup_ratio), as a learning-rate sweep mostly does.

    python experiments/bench_tpe_startup.py      # ~1 min

Prints the mean distance (decades) of each sweep's best trial from the optimum; last line `ratio=X.XX` is
medsweep's rule over Optuna's default at 6 trials (the size of the shipped sweeps).
"""

from __future__ import annotations

import argparse
import math
import statistics

import optuna

from medsweep.search.sweep import startup_trials


def best_distance(trials: int, startup: int, seed: int) -> float:
    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup))

    def score(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("learning_rate", 1e-6, 1e-1, log=True)
        trial.suggest_float("warmup_ratio", 0.0, 0.2)
        return -abs(math.log10(lr / 1e-3))

    study.optimize(score, n_trials=trials)
    return -study.best_value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=50)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ratios = {}
    print("trials   random first (medsweep)   medsweep best   random first (Optuna default)   default best")
    for trials in (6, 12, 20):
        ours_startup = startup_trials({"num_trials": trials, "startup_trials": None})
        ours = statistics.mean(best_distance(trials, ours_startup, seed) for seed in range(args.seeds))
        default = statistics.mean(best_distance(trials, 10, seed) for seed in range(args.seeds))
        ratios[trials] = ours / default
        print(f"{trials:6d}   {ours_startup:23d}   {ours:13.3f}   {min(10, trials):29d}   {default:12.3f}")
    print(f"mean over {args.seeds} seeds of the best trial's distance from the optimum (decades of lr; lower is better)")
    print(f"ratio={ratios[6]:.2f}")


if __name__ == "__main__":
    main()
