"""Record medsweep's own learning curves: real trials (MiniLM on Medical Abstracts, full fine-tune and
LoRA) over a grid of learning rate, warm-up, LoRA rank and targets, and epochs, two seeds each, every
evaluation's validation metrics and seconds into a small table that simulated sweeps replay
(`replay.source=table`, medsweep/simulation/table.py; experiments/bench_search_scale.py).

    python experiments/record_curves.py                      # ~1 hour on 2 cores (two 1-thread workers)
    python experiments/record_curves.py --quick              # 4 grid points, ~3 min: checks the recorder
    python experiments/record_curves.py --rows null --eval-rows null --max-length 128   # on a GPU: the real sizes

Sized for about an hour on 2 cores: 160 training abstracts (stratified), 120 validation abstracts, 64
tokens, batch 16, 4 evaluations per trial; every trial trains on the same rows (data.seed fixed), only
trainer.seed changes between the two seeds. Each finished trial is appended to the table at once, so a
stopped recording goes on where it stopped when run again with the same arguments.

Seconds: `seconds` is the trial's wall time from its start (data preparation and model loading
included) to the end of each evaluation; `cpu_seconds` the process CPU time over the same span. With
one torch thread per trial that is what the trial takes alone on one core, and other load on the
recording machine does not inflate it: the replay uses `cpu_seconds` where the table has it.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import itertools
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_TABLE = HERE.parent / "medsweep" / "resources" / "curves" / "minilm_medical_abstracts.csv"
PARAMETERS = ["finetune", "learning_rate", "warmup_ratio", "r", "target_modules", "epochs", "seed"]
METRICS = ["val_f1_macro", "val_accuracy", "val_recall_macro", "val_auroc", "val_loss"]
COLUMNS = PARAMETERS + ["evaluation", "step", "epoch"] + METRICS + ["seconds", "cpu_seconds"]

# The grid: each learning-rate range brackets where the shipped sweeps search (lr_full, lr_lora).
FULL_LR = [2e-5, 5e-5, 1e-4, 2e-4]
LORA_LR = [3e-4, 1e-3, 3e-3]
WARMUP = [0.0, 0.2]
ADAPTERS = [(8, "query,value"), (16, "query,value"), (16, "all-linear")]
EPOCHS = [2, 4]
SEEDS = [42, 43]


def grid(quick: bool) -> list[dict]:
    points = []
    for lr, warmup, epochs in itertools.product(FULL_LR, WARMUP, EPOCHS):
        points.append({"finetune": "full", "learning_rate": lr, "warmup_ratio": warmup, "r": 0, "target_modules": "",
                       "epochs": epochs})
    for lr, warmup, (r, targets), epochs in itertools.product(LORA_LR, WARMUP, ADAPTERS, EPOCHS):
        points.append({"finetune": "lora", "learning_rate": lr, "warmup_ratio": warmup, "r": r,
                       "target_modules": targets, "epochs": epochs})
    if quick:
        points = [points[0], points[-1]]
    # Both seeds of a point, the long trials first: two workers then end close together.
    runs = [dict(point, seed=seed) for point in points for seed in SEEDS]
    return sorted(runs, key=lambda run: -run["epochs"])


def key(run: dict) -> tuple:
    return tuple(str(run[name]) for name in PARAMETERS)


def recorded(table: Path) -> set:
    if not table.is_file():
        return set()
    with table.open() as handle:
        return {key(row) for row in csv.DictReader(handle)}


def overrides(run: dict, args) -> list[str]:
    rows = "null" if args.rows is None else args.rows
    eval_rows = "null" if args.eval_rows is None else args.eval_rows
    items = [f"data.max_train_samples={rows}", f"data.max_eval_samples={eval_rows}", "data.seed=0",
             f"trainer.max_length={args.max_length}", "trainer.batch_size=16", "trainer.evaluations=4",
             f"trainer.learning_rate={run['learning_rate']}", f"trainer.warmup_ratio={run['warmup_ratio']}",
             f"trainer.epochs={run['epochs']}", f"trainer.seed={run['seed']}", f"model.finetune={run['finetune']}",
             f"cluster.cpus_per_trial={args.threads}", "promote.enabled=false"]
    if run["finetune"] == "lora":
        items += [f"model.lora.r={run['r']}", f"model.lora.alpha={2 * run['r']}",
                  f"model.lora.target_modules='{run['target_modules']}'"]
    return items


def record_one(job: tuple) -> list[dict]:
    """One real trial (run_trial, no checkpoints) in a worker process; its evaluations as table rows."""
    run, args, run_dir = job
    from medsweep.run import compose  # imported before the clocks start: a worker's first trial pays no imports
    from medsweep.training import trial

    started_wall, started_cpu = time.time(), time.process_time()
    stamps: list[tuple[float, float]] = []
    original = trial.EvaluationReporter.on_evaluate

    def on_evaluate(self, *a, **k):
        original(self, *a, **k)
        stamps.append((time.time() - started_wall, time.process_time() - started_cpu))

    # Stamps each evaluation with the time since the trial's start (setup included) and its CPU time.
    trial.EvaluationReporter.on_evaluate = on_evaluate
    try:
        result = trial.run_trial(compose(overrides(run, args), run_dir))
    finally:
        trial.EvaluationReporter.on_evaluate = original
    rows = []
    for report, (wall, cpu) in zip(result["history"], stamps):
        row = dict(run, evaluation=report["evaluation"], step=report["step"], epoch=round(report["epoch"], 3),
                   seconds=round(wall, 2), cpu_seconds=round(cpu, 2))
        row.update({name: round(float(report[name]), 5) for name in METRICS if name in report})
        rows.append(row)
    return rows


def write_meta(table: Path, args, trials: int, wall: float) -> None:
    import torch

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=HERE).stdout.strip()
    except OSError:
        commit = ""
    meta = {"command": " ".join([Path(sys.executable).name, *sys.argv]),
            "date": datetime.date.today().isoformat(), "commit": commit,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, "
                       f"{'CUDA ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}",
            "workers": args.workers, "threads_per_trial": args.threads,
            "model": "minilm (all-MiniLM-L6-v2)", "data": "medical_abstracts",
            "train_rows": args.rows, "validation_rows": args.eval_rows, "max_length": args.max_length,
            "batch_size": 16, "evaluations": 4, "trials": trials, "recording_wall_s": round(wall, 1),
            "parameters": PARAMETERS, "metrics": METRICS,
            "seconds": "wall seconds since the trial started (setup included) at the end of each evaluation",
            "cpu_seconds": "process CPU seconds over the same span (what the replay uses)"}
    table.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", type=Path, default=DEFAULT_TABLE)
    parser.add_argument("--rows", type=lambda v: None if v == "null" else int(v), default=160)
    parser.add_argument("--eval-rows", type=lambda v: None if v == "null" else int(v), default=120)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per trial")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()

    import tempfile

    args.table.parent.mkdir(parents=True, exist_ok=True)
    done = recorded(args.table)
    runs = [run for run in grid(args.quick) if key(run) not in done]
    print(f"{len(runs)} trials to record ({len(done)} already in {args.table})", flush=True)
    started = time.time()
    new_file = not args.table.is_file()
    with tempfile.TemporaryDirectory() as run_dir, args.table.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        if new_file:
            writer.writeheader()
        # spawn: each worker imports torch itself and keeps its own thread setting.
        with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
            for count, rows in enumerate(pool.imap_unordered(record_one, [(run, args, run_dir) for run in runs]), 1):
                writer.writerows(rows)
                handle.flush()
                last = rows[-1]
                print(f"[{count}/{len(runs)}] {last['finetune']} lr={last['learning_rate']:g} warmup={last['warmup_ratio']} "
                      f"r={last['r']} {last['target_modules'] or '-'} epochs={last['epochs']} seed={last['seed']}: "
                      f"val_f1_macro {max(r['val_f1_macro'] for r in rows):.3f} in {last['seconds']:.0f} s "
                      f"({time.time() - started:.0f} s so far)", flush=True)
    write_meta(args.table, args, len(recorded(args.table)), time.time() - started)


if __name__ == "__main__":
    main()
