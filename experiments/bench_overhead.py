"""What medsweep's orchestration costs: one trial through the full medsweep path (preflight, embedded
Ray, the trial in a Ray actor with a checkpoint per evaluation, the leaderboard; promotion off,
tracking off) vs a bare HF Trainer run of the same config in this process (same data, model,
training arguments, evaluations; no checkpoints).

    python experiments/bench_overhead.py --quick    # ~5 min on 2 cores
    python experiments/bench_overhead.py            # ~10 min

The last line is `ratio=X.XX` (medsweep wall time over bare Trainer wall time; goal <= 1.08).
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time

import ray
import torch
from transformers import DataCollatorWithPadding, Trainer

from medsweep import data
from medsweep.config import MedsweepConfig
from medsweep.model import build_model, load_tokenizer
from medsweep.trial import compute_metrics, quiet_libraries, tokenize, training_arguments


def make_config(run_dir: str, train_samples: int, epochs: int) -> dict:
    config = dataclasses.asdict(MedsweepConfig())
    config["data"].update(text_column="medical_abstract", label_column="condition_label",
                          path="builtin:medical_abstracts", label_names_path="builtin:medical_abstracts_labels",
                          max_train_samples=train_samples, max_eval_samples=200)
    config["trainer"].update(epochs=epochs, learning_rate=1e-4)
    config["promote"]["enabled"] = False
    config["run_dir"] = run_dir
    return config


def bare_trainer(config: dict) -> float:
    """What a user would write by hand with transformers alone."""
    started = time.time()
    torch.set_num_threads(int(config["cluster"]["cpus_per_trial"]))
    splits = data.load_splits(config["data"])
    tokenizer = load_tokenizer(config["model"])
    model = build_model(config["model"], splits.label_names)
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(model=model, args=training_arguments(config["trainer"], out, torch.float32, save=False),
                          train_dataset=tokenize(splits.train, tokenizer, config["trainer"]["max_length"]),
                          eval_dataset=tokenize(splits.validation, tokenizer, config["trainer"]["max_length"]),
                          data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer,
                          compute_metrics=compute_metrics)
        trainer.train()
    return time.time() - started


def through_medsweep(config: dict) -> float:
    from medsweep.run import execute

    started = time.time()
    execute(config)
    elapsed = time.time() - started
    ray.shutdown()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="300 samples x 1 epoch instead of 600 x 2")
    args = parser.parse_args()
    quiet_libraries()
    samples, epochs = (300, 1) if args.quick else (600, 2)
    with tempfile.TemporaryDirectory() as run_dir:
        config = make_config(run_dir, samples, epochs)
        bare = bare_trainer(config)
        ours = through_medsweep(config)
    print(f"one MiniLM trial, {samples} samples x {epochs} epoch(s), full fine-tune, 2 CPU threads")
    print(f"bare Trainer      {bare:7.1f} s")
    print(f"medsweep (Ray)    {ours:7.1f} s   overhead {ours - bare:+.1f} s")
    print(f"ratio={ours / bare:.2f}")


if __name__ == "__main__":
    main()
