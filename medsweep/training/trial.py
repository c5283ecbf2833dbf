"""One trial: fine-tune one configuration with the HF Trainer and report every evaluation.

`run_trial(config)` is a plain function of the resolved config dict. It runs without Ray (tests,
debugging); the sweep passes `on_evaluation` to forward each evaluation and its checkpoint to Tune.
"""

from __future__ import annotations

import functools
import json
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from datasets import Dataset
from torch.utils.data import SequentialSampler
from transformers import DataCollatorWithPadding, PrinterCallback, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint

from medsweep import data
from medsweep.data import cache
from medsweep.evaluation import metrics, subgroups
from medsweep.evaluation.metrics import is_metric_name
from medsweep.hf import DIGEST_FIELD, quiet_libraries, weight_digests
from medsweep.plan import primary
from medsweep.rundir import RunDir
from medsweep.training import augment, imbalance, precision, progress
from medsweep.training.model import TRIAL_FILE, build_model, count_parameters, load_tokenizer, read_checkpoint_info

# Called with (metrics of one evaluation, folder holding that step's checkpoint). The folder may be
# deleted once the call returns (the Trainer rotates checkpoints): copy what you keep.
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


def compute_metrics(prediction, groups: Optional[dict[str, np.ndarray]] = None) -> dict:
    """The metrics of one evaluation; with `groups` (the evaluated rows' group values, in order),
    also the worst group's accuracy and macro-F1."""
    logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    if not np.isfinite(logits).all():
        # Say what happened; sklearn would only say "Input contains NaN".
        raise FloatingPointError("the model's outputs are NaN/inf: training diverged (learning rate too high?)")
    probs = metrics.softmax(np.asarray(logits, dtype=np.float64))
    scores = metrics.classification_metrics(prediction.label_ids, probs)
    if groups:
        scores.update(subgroups.worst_group(prediction.label_ids, probs, groups))
    return scores


class EvaluationReporter(TrainerCallback):
    """Collects each evaluation; once the Trainer has written that step's checkpoint (model or
    adapter, tokenizer, optimizer, scheduler, RNG state: everything a resume needs), adds
    trial.json to it and hands both to the hook."""

    def __init__(self, config: dict, label_names: list[str], fingerprints: dict, hook: Optional[EvaluationHook],
                 dtype: str, first_evaluation: int = 1):
        self.config, self.label_names, self.fingerprints, self.hook = config, label_names, fingerprints, hook
        self.dtype = dtype
        self.next_evaluation = first_evaluation
        self.history: list[dict] = []
        self.pending: Optional[dict] = None
        self.eval_seconds = 0.0  # lets benchmarks separate training throughput from evaluation
        self.started = time.time()

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        # eval_runtime and friends are timings, not metrics.
        report = {f"val_{k[len('eval_'):]}": float(v) for k, v in (metrics or {}).items()
                  if k.startswith("eval_") and is_metric_name(k[len("eval_"):])}
        report.update(step=int(state.global_step), epoch=float(state.epoch or 0.0),
                      evaluation=self.next_evaluation, train_seconds=round(time.time() - self.started, 2),
                      batch_size=int(args.per_device_train_batch_size),
                      gradient_accumulation_steps=int(args.gradient_accumulation_steps),
                      # Lets the leaderboard tell a finished trial from one that ASHA stopped.
                      final=bool(state.max_steps and state.global_step >= state.max_steps),
                      dtype=self.dtype)  # what model.dtype=auto resolved to on the trial's machine
        self.eval_seconds += float((metrics or {}).get("eval_runtime", 0.0))
        if math.isnan(report.get("val_loss", 0.0)):
            raise FloatingPointError(f"validation loss is NaN at step {state.global_step}")
        self.next_evaluation += 1
        self.history.append(report)
        self.pending = report

    def on_save(self, args, state, control, **kwargs):
        if self.hook is None or self.pending is None:
            return
        directory = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        info = {"metrics": self.pending, "config": self.config, "label_names": self.label_names,
                "data_fingerprints": self.fingerprints,
                # Checked on resume and at promotion: a truncated or corrupted checkpoint is never used.
                DIGEST_FIELD: weight_digests(directory)}
        (directory / TRIAL_FILE).write_text(json.dumps(info, indent=2, default=str))
        report, self.pending = self.pending, None
        self.hook(report, directory)


class SortedEvalTrainer(imbalance.WeightedLossTrainer):
    """Evaluates in the evaluation set's own order. With length grouping on, the Trainer would also
    shuffle evaluation batches by length (a seeded LengthGroupedSampler); metrics that need per-row
    context, like the worst group's score, need to know which prediction is which row."""

    def _get_eval_sampler(self, eval_dataset):
        if eval_dataset is None or self.args.world_size > 1:
            return super()._get_eval_sampler(eval_dataset)
        return SequentialSampler(eval_dataset)


def training_arguments(trainer_cfg: dict, output_dir: str, dtype: torch.dtype, save: bool,
                       cpus_per_trial: float = 1, device: Optional[precision.Device] = None) -> TrainingArguments:
    eval_every = trainer_cfg["eval_every_steps"]
    strategy = "steps" if eval_every else "epoch"
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
        eval_strategy=strategy,
        eval_steps=eval_every or None,
        # A checkpoint at every evaluation, so Ray can keep the best one and resume from the last.
        # Older ones are rotated out locally once Ray has persisted them.
        save_strategy=strategy if save else "no",
        save_steps=eval_every or None,
        save_total_limit=1,
        logging_strategy=strategy,
        logging_steps=eval_every or None,
        report_to="none",
        seed=trainer_cfg["seed"],
        train_sampling_strategy="group_by_length" if trainer_cfg["group_by_length"] else "random",
        # Autocast, TF32, fused AdamW, data loader workers: per device, in precision.training_kwargs.
        **precision.training_kwargs(dtype, trainer_cfg, cpus_per_trial, device),
        disable_tqdm=True,
    )


@dataclass
class TrialData:
    """What a trial trains and evaluates on, tokenized."""

    splits: data.DataSplits
    tokenizer: object
    train_rows: object  # the training rows after oversampling and augmentation (a DataFrame)
    train_set: Dataset
    val_set: Dataset  # sorted by length, evaluated in that order
    val_groups: dict  # group column -> values, in val_set's order
    cache_hits: dict  # split -> whether its tokens came from the run's token cache


def token_cache_dir(config: dict) -> Path | None:
    return RunDir.of(config).token_cache if config["data"].get("cache", True) else None


def prepare_data(config: dict, trainer_cfg: dict) -> TrialData:
    splits = data.load_splits(config["data"])
    tokenizer = load_tokenizer(config["model"])
    # Oversampled if asked; class weights are then computed on the rows actually trained on. Augmented
    # after oversampling, so repeated rows get different perturbations; validation/test never are.
    train_rows = augment.augment_training(imbalance.training_split(splits.train, trainer_cfg), trainer_cfg)
    directory, max_length = token_cache_dir(config), trainer_cfg["max_length"]
    tokenizer_id = cache.tokenizer_digest(tokenizer, config["model"]) if directory else ""
    (train_set, train_hit), (val_set, val_hit) = (
        cache.cached(directory, cache.cache_key(rows, tokenizer_id, max_length), lambda rows=rows: tokenize(rows, tokenizer, max_length))
        for rows in (train_rows, splits.validation))
    # Evaluation runs over the validation rows sorted by length (least padding) in that fixed order
    # (SortedEvalTrainer), so each prediction lines up with its row's group values.
    order = np.argsort(val_set["length"], kind="stable")
    val_groups = {column: values[order] for column, values in subgroups.group_columns(splits.validation).items()}
    return TrialData(splits, tokenizer, train_rows, train_set, val_set.select(order), val_groups,
                     {"train": train_hit, "validation": val_hit})


def optimizer_steps(trainer_cfg: dict, num_train: int) -> int:
    """The optimizer steps a trial takes (as the HF Trainer counts them: batches per epoch, rounded
    up per accumulation, times epochs, rounded up; or trainer.max_steps)."""
    if trainer_cfg["max_steps"]:
        return int(trainer_cfg["max_steps"])
    batches = math.ceil(num_train / trainer_cfg["batch_size"])
    per_epoch = max(1, math.ceil(batches / trainer_cfg["gradient_accumulation_steps"]))
    return math.ceil(trainer_cfg["epochs"] * per_epoch)


def evaluation_interval(trainer_cfg: dict, num_train: int) -> int:
    """trainer.eval_every_steps, or with trainer.evaluations=N the interval that spreads N
    evaluations over this trial's own steps (the last one falls on the final step)."""
    if not trainer_cfg.get("evaluations"):
        return trainer_cfg["eval_every_steps"]
    return max(1, math.ceil(optimizer_steps(trainer_cfg, num_train) / trainer_cfg["evaluations"]))


def build_trainer(config: dict, trainer_cfg: dict, prepared: TrialData, dtype: torch.dtype, output_dir: str,
                  callbacks: list, save: bool, device: Optional[precision.Device] = None) -> SortedEvalTrainer:
    """The Trainer of one trial: a freshly seeded model, the trial's TrainingArguments, collator,
    metrics and class weights over `prepared`. run_trial trains with it, and so does the GPU memory
    probe (search/resources.py), so the probe measures the steps a trial takes. `device` (default:
    this machine's) lets the probe run on a CPU where a GPU is present."""
    label_names = prepared.splits.label_names
    set_seed(trainer_cfg["seed"])
    trainer = SortedEvalTrainer(
        model=build_model(config["model"], label_names),
        args=training_arguments(trainer_cfg, output_dir, dtype, save=save,
                                cpus_per_trial=config["cluster"]["cpus_per_trial"], device=device),
        train_dataset=prepared.train_set,
        eval_dataset=prepared.val_set,
        data_collator=DataCollatorWithPadding(prepared.tokenizer),
        processing_class=prepared.tokenizer,
        compute_metrics=functools.partial(compute_metrics, groups=prepared.val_groups),
        callbacks=callbacks,
        class_weights=imbalance.class_weights(prepared.train_rows["label"], len(label_names),
                                              trainer_cfg["class_weighting"]),
    )
    trainer.remove_callback(PrinterCallback)
    return trainer


def fit(config: dict, trainer_cfg: dict, prepared: TrialData, reporter: EvaluationReporter, dtype: torch.dtype,
        save: bool, resume_from: Optional[str | Path]):
    """Train with the HF Trainer; on CUDA out-of-memory, retry from the last checkpoint with half the
    batch. Returns (TrainOutput, the trained model); `trainer_cfg` holds the batch size that fitted."""
    with tempfile.TemporaryDirectory(prefix="medsweep-trainer-") as output_dir:
        while True:
            # progress: the sweep console's steps/ETA.
            trainer = build_trainer(config, trainer_cfg, prepared, dtype, output_dir, save=save,
                                    callbacks=[reporter, *progress.callbacks()])
            net = trainer.model
            try:
                return trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None), net
            except torch.OutOfMemoryError:
                if trainer_cfg["batch_size"] == 1:
                    raise
                # Halve the batch, double accumulation: the same effective batch, so the same
                # optimizer steps and learning-rate schedule; continue from the last checkpoint.
                del trainer, net
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                trainer_cfg["batch_size"] //= 2
                trainer_cfg["gradient_accumulation_steps"] *= 2
                resume_from = get_last_checkpoint(output_dir) or resume_from
                print(f"[medsweep] out of memory: retrying with batch_size={trainer_cfg['batch_size']}, "
                      f"gradient_accumulation_steps={trainer_cfg['gradient_accumulation_steps']}", flush=True)


def best_evaluation(history: list[dict], metric: str, mode: str) -> dict:
    """The evaluation a trial is represented by (the same step Ray's checkpoint manager keeps)."""
    for report in history:
        if metric not in report:
            raise KeyError(f"sweep.metric {metric!r} was never reported; reported: {sorted(report)}")
    return metrics.best_of(history, lambda report: report[metric], mode)


def run_trial(config: dict, on_evaluation: Optional[EvaluationHook] = None,
              resume_from: Optional[str | Path] = None) -> dict:
    """Train the configuration in `config`; return its evaluation history and best evaluation.

    `resume_from`: a checkpoint this trial wrote earlier (Ray hands it back after a failure or a
    driver restart); training continues from its step with its optimizer and RNG state.
    """
    quiet_libraries()
    trainer_cfg = dict(config["trainer"])
    # Two trials on two cores must not each start a thread per core.
    torch.set_num_threads(max(1, int(config["cluster"]["cpus_per_trial"])))
    set_seed(trainer_cfg["seed"])
    prepared = prepare_data(config, trainer_cfg)
    trainer_cfg["eval_every_steps"] = evaluation_interval(trainer_cfg, len(prepared.train_set))
    dtype = precision.resolve_dtype(config["model"]["dtype"])
    first_evaluation = 1 if resume_from is None else read_checkpoint_info(resume_from)["metrics"]["evaluation"] + 1
    reporter = EvaluationReporter(config, prepared.splits.label_names, prepared.splits.fingerprints, on_evaluation,
                                  precision.dtype_name(dtype), first_evaluation)
    train_output, net = fit(config, trainer_cfg, prepared, reporter, dtype, save=on_evaluation is not None,
                            resume_from=resume_from)
    return {
        "best": best_evaluation(reporter.history, *primary(config)),
        "history": reporter.history,
        "train_loss": float(train_output.training_loss),
        "train_runtime": float(train_output.metrics["train_runtime"]),
        "train_samples_per_second": float(train_output.metrics["train_samples_per_second"]),
        "eval_seconds": reporter.eval_seconds,
        "dtype": precision.dtype_name(dtype),
        "parameters": count_parameters(net),
        "label_names": prepared.splits.label_names,
        "data_fingerprints": prepared.splits.fingerprints,
        "batch_size": trainer_cfg["batch_size"],
        "gradient_accumulation_steps": trainer_cfg["gradient_accumulation_steps"],
        "eval_every_steps": trainer_cfg["eval_every_steps"],
        "token_cache_hits": prepared.cache_hits,
    }
