"""Accuracy of medsweep's promoted model next to one untuned fine-tune and TF-IDF + linear SVM, on the same splits.

For each data set: run the shipped sweep through the real CLI (`python -m medsweep.run +sweep=...`)
and, beside it in the same script, one untuned full fine-tune of the same model on all training rows
(`python -m medsweep.run` with lr 1e-4, 3 epochs, 128 tokens: what a person would run without a
sweep), both on the same splits (checked by fingerprint); read each promoted model's test metrics;
then fit TF-IDF (1-2 grams, sublinear tf, min_df 2) + LinearSVC on the same training rows and score
it on the same test split.

    python experiments/accuracy.py                          # +sweep=lr_lora on Medical Abstracts
    python experiments/accuracy.py --datasets pubmedqa      # +sweep=pubmedqa on PubMedQA
    python experiments/accuracy.py --datasets medical_abstracts \\
        --overrides "sweep.num_trials=12"                   # scaled up

Prints a table of test accuracy and macro-F1 (95% bootstrap CIs), both wall times, and last
`ratio=X.XX`: the sweep's promoted test macro-F1 over the untuned run's (first data set). One run of
each side (a shipped sweep takes ~25 minutes on 2 cores); --repeats N runs both sides N times and
prints the median and range.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.metrics import accuracy_score, f1_score
from sklearn.svm import LinearSVC

from medsweep import data

ROOT = Path(__file__).resolve().parents[1]
SWEEP_FOR = {"medical_abstracts": "lr_lora", "pubmedqa": "pubmedqa"}
# One untuned run: a full fine-tune with common settings on all training rows, no search.
UNTUNED = ["model.finetune=full", "trainer.learning_rate=1e-4", "trainer.epochs=3", "trainer.max_length=128",
           "data.max_train_samples=null"]


def texts(frame) -> list[str]:
    # A pair task is one document for TF-IDF: question and context side by side.
    if "text_pair" in frame.columns:
        return (frame["text"] + " \n " + frame["text_pair"]).tolist()
    return frame["text"].tolist()


def tfidf_svm(train, test, seed: int = 0) -> dict:
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2)
    classifier = LinearSVC(random_state=seed)
    classifier.fit(vectorizer.fit_transform(texts(train)), train["label"])
    predicted = classifier.predict(vectorizer.transform(texts(test)))
    return {"accuracy": accuracy_score(test["label"], predicted),
            "f1_macro": f1_score(test["label"], predicted, average="macro")}


def run_cli(arguments: list[str], run_dir: Path) -> tuple[dict, float]:
    command = [sys.executable, "-m", "medsweep.run", *arguments, f"hydra.run.dir={run_dir}"]
    print("$", " ".join(command[1:]), flush=True)
    started = time.time()
    subprocess.run(command, cwd=ROOT, check=True)
    return json.loads((run_dir / "promoted" / "metrics.json").read_text()), time.time() - started


def with_ci(metrics: dict, name: str) -> str:
    value, low_high = metrics["test"][name], metrics.get("test_ci", {}).get("intervals", {}).get(name)
    return f"{value:.3f}" + (f" [{low_high[0]:.3f}, {low_high[1]:.3f}]" if low_high else "")


def spread(values: list[float], unit: str = "", scale: float = 1.0) -> str:
    values = [v / scale for v in values]
    median = float(np.median(values))
    return f"{median:.3f}{unit}" if len(values) == 1 else f"{median:.3f}{unit} (range {min(values):.3f}-{max(values):.3f}, n={len(values)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["medical_abstracts"], choices=list(SWEEP_FOR))
    parser.add_argument("--sweep", default=None, help="sweep config for every data set (default: lr_lora for medical_abstracts, pubmedqa for pubmedqa)")
    parser.add_argument("--overrides", default="", help="extra Hydra overrides for the sweep, quoted")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each side")
    parser.add_argument("--runs", default=str(ROOT / "runs" / "accuracy"), help="where the run dirs go")
    args = parser.parse_args()

    rows, ratios = [], []
    for dataset in args.datasets:
        sweep = args.sweep or SWEEP_FOR[dataset]
        swept, untuned = [], []
        for repeat in range(args.repeats):
            stamp = f"{time.strftime('%Y%m%d-%H%M%S')}_{repeat}"
            run_dir = Path(args.runs) / f"{dataset}_{sweep}_{stamp}"
            swept.append((*run_cli([f"+sweep={sweep}", f"data={dataset}", *shlex.split(args.overrides)], run_dir), run_dir))
            config = yaml.safe_load((run_dir / "promoted" / "medsweep_config.yaml").read_text())
            # The untuned run sees the sweep's validation cap, so the splits are identical (checked below).
            cap = config["data"]["max_eval_samples"]
            untuned.append(run_cli([f"data={dataset}", *UNTUNED, f"data.max_eval_samples={cap if cap else 'null'}"],
                                   Path(args.runs) / f"{dataset}_untuned_{stamp}") + (None,))
        metrics, _, run_dir = swept[-1]
        config = yaml.safe_load((run_dir / "promoted" / "medsweep_config.yaml").read_text())
        splits = data.load_splits(config["data"])  # the promoted model's own splits (all rows after a refit)
        assert splits.fingerprints == metrics["data_fingerprints"], "baselines must see the promoted model's splits"
        for other, _, _ in untuned:
            assert other["data_fingerprints"] == metrics["data_fingerprints"], "the untuned run must see the same splits"
        training = metrics.get("training") or {}
        rows.append((dataset, f"medsweep +sweep={sweep} (searched on {training.get('search_rows', len(splits.train))}, "
                              f"promoted model trained on {training.get('rows', len(splits.train))} rows, "
                              f"{training.get('steps')} steps)",
                     with_ci(metrics, "test_accuracy"), with_ci(metrics, "test_f1_macro"), spread([s for _, s, _ in swept], " min", 60)))
        base, _, _ = untuned[-1]
        rows.append((dataset, f"untuned full fine-tune ({base['training']['rows'] if base.get('training') else len(splits.train)} rows, "
                              "lr 1e-4, 3 epochs, 128 tokens)",
                     with_ci(base, "test_accuracy"), with_ci(base, "test_f1_macro"), spread([s for _, s, _ in untuned], " min", 60)))
        for label, train in [(f"TF-IDF + LinearSVC ({len(splits.train)} train)", splits.train)]:
            scores = tfidf_svm(train, splits.test)
            rows.append((dataset, label, f"{scores['accuracy']:.3f}", f"{scores['f1_macro']:.3f}", ""))
        majority = np.bincount(splits.train["label"]).argmax()
        rows.append((dataset, "majority class", f"{np.mean(splits.test['label'] == majority):.3f}",
                     f"{f1_score(splits.test['label'], np.full(len(splits.test), majority), average='macro'):.3f}", ""))
        pairs = [m["test"]["test_f1_macro"] / b["test"]["test_f1_macro"] for (m, _, _), (b, _, _) in zip(swept, untuned)]
        print(f"[accuracy] {dataset}: promoted/untuned test macro-F1 per repeat {[round(r, 3) for r in pairs]}; "
              f"median {spread(pairs)}", flush=True)
        ratios.append(float(np.median(pairs)))

    print("\n| data set | method | test accuracy | test macro-F1 | wall |\n|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    # Last line, for scripts: the first data set's promoted / untuned test macro-F1.
    print(f"ratio={ratios[0]:.2f}")


if __name__ == "__main__":
    main()
