"""One trial: fine-tune one configuration with the HF Trainer and report every evaluation.

`run_trial(config)` is a plain function of the resolved config dict. It runs without Ray (tests,
debugging); the sweep passes `on_evaluation` to forward each evaluation and its checkpoint to Tune.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from datasets import Dataset
from transformers import DataCollatorWithPadding, PrinterCallback, Trainer, TrainerCallback, TrainingArguments, set_seed

from medsweep import data, metrics
from medsweep.metrics import is_metric_name
from medsweep.model import build_model, count_parameters, load_tokenizer, save_checkpoint

# Called with (metrics of one evaluation, folder holding that step's checkpoint). The folder is
# deleted when the call returns: copy what you keep.
EvaluationHook = Callable[[dict, Path], None]


def tokenize(frame, tokenizer, max_length: int) -> Dataset:
    """Truncate to max_length but do not pad: the collator pads each batch to its longest member."""
    columns = {"text": frame["text"].tolist(), "label": frame["label"].tolist()}
    if "text_pair" in frame.columns:
        columns["text_pair"] = frame["text_pair"].tolist()
    dataset = Dataset.from_dict(columns)

    def encode(batch):
        pair = batch.get("text_pair")
        encoded = tokenizer(batch["text"], pair, truncation=True, max_length=max_length)
        # Precomputed lengths let the length-grouped sampler skip a pass over the data.
        encoded["length"] = [len(ids) for ids in encoded["input_ids"]]
        return encoded

    return dataset.map(encode, batched=True, remove_columns=[c for c in columns if c != "label"]).rename_column("label", "labels")


def compute_metrics(prediction) -> dict:
    logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    return metrics.classification_metrics(prediction.label_ids, metrics.softmax(np.asarray(logits, dtype=np.float64)))


class EvaluationReporter(TrainerCallback):
    """After each evaluation: checkpoint the model and hand both to the hook."""

    def __init__(self, config: dict, label_names: list[str], tokenizer, fingerprints: dict, hook: Optional[EvaluationHook]):
        self.config, self.label_names, self.tokenizer = config, label_names, tokenizer
        self.fingerprints, self.hook = fingerprints, hook
        self.history: list[dict] = []
        self.started = time.time()

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        # eval_runtime and friends are timings, not metrics.
        report = {f"val_{k[len('eval_'):]}": float(v) for k, v in (metrics or {}).items()
                  if k.startswith("eval_") and is_metric_name(k[len("eval_"):])}
        report.update(step=int(state.global_step), epoch=float(state.epoch or 0.0),
                      evaluation=len(self.history) + 1, train_seconds=round(time.time() - self.started, 2),
                      # Lets the leaderboard tell a finished trial from one that ASHA stopped.
                      final=bool(state.max_steps and state.global_step >= state.max_steps))
        if math.isnan(report.get("val_loss", 0.0)):
            raise FloatingPointError(f"validation loss is NaN at step {state.global_step}")
        self.history.append(report)
        if self.hook is None:
            return
        with tempfile.TemporaryDirectory(prefix="medsweep-ckpt-") as directory:
            info = {"metrics": report, "config": self.config, "label_names": self.label_names,
                    "data_fingerprints": self.fingerprints}
            save_checkpoint(model, self.tokenizer, Path(directory), info)
            self.hook(report, Path(directory))


def training_arguments(trainer_cfg: dict, output_dir: str) -> TrainingArguments:
    eval_every = trainer_cfg["eval_every_steps"]
    return TrainingArguments(
        output_dir=output_dir,
        learning_rate=trainer_cfg["learning_rate"],
        num_train_epochs=trainer_cfg["epochs"],
        max_steps=trainer_cfg["max_steps"] or -1,
        per_device_train_batch_size=trainer_cfg["batch_size"],
        per_device_eval_batch_size=trainer_cfg["eval_batch_size"],
        gradient_accumulation_steps=trainer_cfg["gradient_accumulation_steps"],
        weight_decay=trainer_cfg["weight_decay"],
        warmup_steps=trainer_cfg["warmup_ratio"],
        eval_strategy="steps" if eval_every else "epoch",
        eval_steps=eval_every or None,
        # Checkpoints are written by EvaluationReporter and managed by Ray, not by the Trainer.
        save_strategy="no",
        logging_strategy="steps" if eval_every else "epoch",
        logging_steps=eval_every or 500,
        report_to="none",
        seed=trainer_cfg["seed"],
        train_sampling_strategy="group_by_length" if trainer_cfg["group_by_length"] else "random",
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        disable_tqdm=True,
    )


def quiet_libraries() -> None:
    """Progress bars and per-step log dicts from many trials drown the sweep's own table."""
    import warnings

    import datasets
    import transformers

    # Deprecation notices from inside transformers/peft are for their maintainers, not sweep users.
    warnings.filterwarnings("ignore", category=FutureWarning)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()


def run_trial(config: dict, on_evaluation: Optional[EvaluationHook] = None) -> dict:
    """Train the configuration in `config`; return its evaluation history and best evaluation."""
    quiet_libraries()
    trainer_cfg, sweep_cfg = config["trainer"], config["sweep"]
    # Two trials on two cores must not each start a thread per core.
    torch.set_num_threads(max(1, int(config["cluster"]["cpus_per_trial"])))
    set_seed(trainer_cfg["seed"])

    splits = data.load_splits(config["data"])
    tokenizer = load_tokenizer(config["model"])
    net = build_model(config["model"], splits.label_names)
    train_set = tokenize(splits.train, tokenizer, trainer_cfg["max_length"])
    val_set = tokenize(splits.validation, tokenizer, trainer_cfg["max_length"])

    reporter = EvaluationReporter(config, splits.label_names, tokenizer, splits.fingerprints, on_evaluation)
    with tempfile.TemporaryDirectory(prefix="medsweep-trainer-") as output_dir:
        trainer = Trainer(
            model=net,
            args=training_arguments(trainer_cfg, output_dir),
            train_dataset=train_set,
            eval_dataset=val_set,
            data_collator=DataCollatorWithPadding(tokenizer),
            processing_class=tokenizer,
            compute_metrics=compute_metrics,
            callbacks=[reporter],
        )
        trainer.remove_callback(PrinterCallback)
        train_output = trainer.train()
        # Epoch-based evaluation misses the tail of a fractional last epoch; score the final weights too.
        if not reporter.history or reporter.history[-1]["step"] != trainer.state.global_step:
            trainer.evaluate()

    metric, mode = sweep_cfg["metric"], sweep_cfg["mode"]
    best = None
    for report in reporter.history:
        if metric not in report:
            raise KeyError(f"sweep.metric {metric!r} was never reported; reported: {sorted(report)}")
        if best is None or metrics.is_better(report[metric], best[metric], mode):
            best = report
    return {
        "best": best,
        "history": reporter.history,
        "train_loss": float(train_output.training_loss),
        "parameters": count_parameters(net),
        "label_names": splits.label_names,
        "data_fingerprints": splits.fingerprints,
    }
