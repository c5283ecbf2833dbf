"""Training throughput of one medsweep trial vs the seeds' recipe, side by side in one process.

The seeds' recipe (the tutorials medsweep grew from): tokenize everything with
padding="max_length" to 512 tokens, fp32, batch 8, plain random sampling, HF Trainer.
medsweep's trial: the same model (embedded MiniLM-L6), texts, max_length, batch size, learning
rate and number of optimizer steps, but dynamic padding with length-grouped batches.

Both sides train on the CPU threads medsweep gives a 2-core trial, evaluate once on the same
validation rows, and report training samples/s (evaluation time excluded) and macro-F1.

    python experiments/bench_trial_throughput.py --quick     # ~5 min on 2 cores
    python experiments/bench_trial_throughput.py             # ~25 min

The last line is `ratio=X.XX` (medsweep samples/s over the recipe's).
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import tempfile
import time

import numpy as np
import torch
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments, set_seed

from medsweep import data
from medsweep.config import MedsweepConfig
from medsweep.evaluation.metrics import classification_metrics, softmax
from medsweep.hf import resolve_model as resolve
from medsweep.hf import quiet_libraries
from medsweep.training.trial import run_trial

MAX_LENGTH, BATCH, LR, SEED = 512, 8, 5e-5, 42


def base_config(train_samples: int, eval_samples: int) -> dict:
    config = dataclasses.asdict(MedsweepConfig())
    config["data"].update(text_column="medical_abstract", label_column="condition_label",
                          path="builtin:medical_abstracts", label_names_path="builtin:medical_abstracts_labels",
                          max_train_samples=train_samples, max_eval_samples=eval_samples)
    return config


def seeds_recipe(splits: data.DataSplits, steps: int) -> dict:
    """The tutorial way: pad every text to 512 tokens up front."""
    set_seed(SEED)
    path = resolve("builtin:minilm-l6")
    tokenizer = AutoTokenizer.from_pretrained(path)

    def encode(frame):
        dataset = Dataset.from_dict({"text": frame["text"].tolist(), "labels": frame["label"].tolist()})
        return dataset.map(lambda b: tokenizer(b["text"], padding="max_length", truncation=True, max_length=MAX_LENGTH),
                           batched=True, remove_columns=["text"])

    train, val = encode(splits.train), encode(splits.validation)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(splits.label_names), use_safetensors=True)
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, per_device_train_batch_size=BATCH, per_device_eval_batch_size=BATCH,
                                 learning_rate=LR, max_steps=steps, eval_strategy="no", save_strategy="no",
                                 report_to="none", use_cpu=True, seed=SEED, disable_tqdm=True, logging_strategy="no")
        trainer = Trainer(model=model, args=args, train_dataset=train)
        result = trainer.train()
        predictions = trainer.predict(val)
    probs = softmax(predictions.predictions.astype(np.float64))
    return {"train_seconds": result.metrics["train_runtime"],
            "f1": classification_metrics(np.asarray(val["labels"]), probs)["f1_macro"]}


def medsweep_trial(config: dict, steps: int) -> dict:
    config = dict(config)
    config["trainer"] = dict(config["trainer"], max_length=MAX_LENGTH, batch_size=BATCH, eval_batch_size=BATCH,
                             learning_rate=LR, warmup_ratio=0.0, weight_decay=0.0, max_steps=steps,
                             eval_every_steps=steps, seed=SEED)
    result = run_trial(config)
    return {"train_seconds": result["train_runtime"] - result["eval_seconds"], "f1": result["history"][-1]["val_f1_macro"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="240 training samples instead of 1,000")
    args = parser.parse_args()
    quiet_libraries()
    torch.set_num_threads(2)
    train_samples = 240 if args.quick else 1000
    config = base_config(train_samples, 200)
    splits = data.load_splits(config["data"])
    steps = train_samples // BATCH
    samples = steps * BATCH

    tokenizer = AutoTokenizer.from_pretrained(resolve("builtin:minilm-l6"))
    lengths = [len(ids) for ids in tokenizer(splits.train["text"].tolist(), truncation=True, max_length=MAX_LENGTH)["input_ids"]]
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"data: {samples} training samples ({steps} steps x {BATCH}), {len(splits.validation)} validation; "
          f"tokens per text: mean {np.mean(lengths):.0f}, max {max(lengths)}; max_length {MAX_LENGTH}")

    started = time.time()
    recipe = seeds_recipe(splits, steps)
    ours = medsweep_trial(config, steps)
    for name, r in (("seeds' recipe (pad to 512)", recipe), ("medsweep trial (dynamic, grouped)", ours)):
        print(f"{name:36s} {samples / r['train_seconds']:6.2f} samples/s  ({r['train_seconds']:.0f} s)  "
              f"val macro-F1 {r['f1']:.3f}")
    print(f"wall time {time.time() - started:.0f} s")
    print(f"ratio={(samples / ours['train_seconds']) / (samples / recipe['train_seconds']):.2f}")


if __name__ == "__main__":
    main()
