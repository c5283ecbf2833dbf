"""Accuracy of medsweep's promoted model next to a TF-IDF + linear SVM baseline, on the same splits.

For each data set: run a sweep through the real CLI (`python -m medsweep.run +sweep=...`), read
the promoted model's test metrics, then fit TF-IDF (1-2 grams, sublinear tf, min_df 2) + LinearSVC
on the very same training split (the rows the sweep trained on, and the whole training split) and
score it on the same test split.

    python experiments/accuracy.py          # shipped +sweep=lr_lora (Medical Abstracts), +sweep=pubmedqa
    python experiments/accuracy.py --datasets medical_abstracts \\
        --overrides "data.max_train_samples=null trainer.epochs=3"    # scaled up

Prints a table of test accuracy and macro-F1.
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


def run_sweep(dataset: str, sweep: str, overrides: list[str], run_dir: Path) -> tuple[dict, float]:
    command = [sys.executable, "-m", "medsweep.run", f"+sweep={sweep}", f"data={dataset}", *overrides,
               f"hydra.run.dir={run_dir}"]
    print("$", " ".join(command[1:]), flush=True)
    started = time.time()
    subprocess.run(command, cwd=ROOT, check=True)
    return json.loads((run_dir / "promoted" / "metrics.json").read_text()), time.time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(SWEEP_FOR))
    parser.add_argument("--sweep", default=None, help="sweep config for every data set (default: lr_lora for medical_abstracts, pubmedqa for pubmedqa)")
    parser.add_argument("--overrides", default="", help="extra Hydra overrides, quoted")
    parser.add_argument("--runs", default=str(ROOT / "runs" / "accuracy"), help="where the run dirs go")
    args = parser.parse_args()

    rows = []
    for dataset in args.datasets:
        run_dir = Path(args.runs) / f"{dataset}_{time.strftime('%Y%m%d-%H%M%S')}"
        metrics, seconds = run_sweep(dataset, args.sweep or SWEEP_FOR[dataset], shlex.split(args.overrides), run_dir)
        config = yaml.safe_load((run_dir / "promoted" / "medsweep_config.yaml").read_text())
        splits = data.load_splits(config["data"])  # the sweep's own splits (same seed, same limits)
        assert splits.fingerprints == metrics["data_fingerprints"], "baseline must see the sweep's splits"
        full = data.load_splits(dict(config["data"], max_train_samples=None))
        test = metrics["test"]
        ci = metrics.get("test_ci", {}).get("intervals", {})

        def with_ci(name):
            low_high = ci.get(name)
            return f"{test[name]:.3f}" + (f" [{low_high[0]:.3f}, {low_high[1]:.3f}]" if low_high else "")

        rows.append((dataset, f"medsweep {config['sweep']['name']} ({len(splits.train)} train, {seconds / 60:.0f} min)",
                     with_ci("test_accuracy"), with_ci("test_f1_macro")))
        baselines = [(f"TF-IDF + LinearSVC ({len(splits.train)} train)", splits.train)]
        if len(full.train) > len(splits.train):  # the sweep trained on a subset: also the whole split
            baselines.append((f"TF-IDF + LinearSVC ({len(full.train)} train)", full.train))
        for label, train in baselines:
            scores = tfidf_svm(train, splits.test)
            rows.append((dataset, label, f"{scores['accuracy']:.3f}", f"{scores['f1_macro']:.3f}"))
        majority = np.bincount(splits.train["label"]).argmax()
        rows.append((dataset, "majority class", f"{np.mean(splits.test['label'] == majority):.3f}",
                     f"{f1_score(splits.test['label'], np.full(len(splits.test), majority), average='macro'):.3f}"))

    print("\n| data set | method | test accuracy | test macro-F1 |\n|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
