"""Explanations: on a trivially separable task the top-attributed word is the decisive one (removing
it changes the prediction, removing the least-attributed word does not); on real text it runs."""

import json
import random
import shutil

import numpy as np
import pandas as pd
import pytest

from medsweep.serving import explain
from medsweep.serving.inference import load_promoted
from medsweep.promotion.release import promote_checkpoint
from medsweep.training.trial import run_trial
from tests.conftest import SHARED_DATA, compose_config

FILLER = ["patients", "study", "results", "were", "with", "the", "and", "of", "in", "was", "treatment", "group"]
KEYWORDS = {"cardiac": "a", "renal": "b", None: "c"}  # class c: no keyword at all


def sentence(keyword, rng):
    # Every text has 9 words, so that length cannot stand in for the keyword.
    words = [rng.choice(FILLER) for _ in range(8)]
    words.insert(rng.randrange(len(words) + 1), keyword or rng.choice(FILLER))
    return " ".join(words)


@pytest.fixture(scope="module")
def promoted(tmp_path_factory):
    base = tmp_path_factory.mktemp("explain")
    rng = random.Random(0)
    rows = [{"text": sentence(k, rng), "label": label} for _ in range(100) for k, label in KEYWORDS.items()]
    pd.DataFrame(rows).to_csv(base / "keywords.csv", index=False)
    config = compose_config(["model=tiny_random", "data=csv", f"data.path={base / 'keywords.csv'}", "trainer.epochs=4",
                             "trainer.max_length=32", "trainer.learning_rate=5e-3", "trainer.batch_size=16",
                             "cluster.cpus_per_trial=1", "promote.bootstrap_resamples=100"], run_dir=base)
    kept = base / "checkpoint"

    def keep(metrics, checkpoint_dir):
        shutil.rmtree(kept, ignore_errors=True)
        shutil.copytree(checkpoint_dir, kept)

    result = run_trial(config, on_evaluation=keep)
    assert result["history"][-1]["val_accuracy"] > 0.9, "the tiny model did not learn the keyword task"
    return promote_checkpoint(kept, base / "run"), base


@pytest.mark.parametrize("method", ["occlusion", "integrated_gradients"])
def test_removing_the_top_word_changes_the_prediction(promoted, method):
    if method == "integrated_gradients":
        pytest.importorskip("captum")
    model_dir, base = promoted
    rng = random.Random(1)
    texts = [sentence(k, rng) for k in ("cardiac", "renal") for _ in range(3)]
    pd.DataFrame({"text": texts}).to_csv(base / "probe.csv", index=False)
    output = base / f"{method}.json"
    assert explain.main([f"model={model_dir}", f"input={base / 'probe.csv'}", f"output={output}", f"method={method}"]) == 0
    records = json.loads(output.read_text())["explanations"]
    model = load_promoted(model_dir)
    checked = 0
    for record in records:
        words = record["words"]
        assert [w["word"] for w in words] == record["text"].split()
        keyword = "cardiac" if "cardiac" in record["text"] else "renal"
        assert record["predicted_label"] == KEYWORDS[keyword]
        if method == "integrated_gradients":
            # Completeness: the scores add up to p(predicted) - p(predicted | baseline), up to the delta.
            gain = record["probabilities"][record["predicted_label"]] - record["baseline_probabilities"][record["predicted_label"]]
            assert sum(w["score"] for w in words) == pytest.approx(gain, abs=record["convergence_delta"] + 1e-3)
            assert record["convergence_delta"] < 0.05
            # On this tiny random network IG's per-word scores are noisy (a filler word at a fixed
            # position can score high too: see the note), so only the keyword's sign is asserted.
            assert next(w for w in words if w["word"] == keyword)["score"] > 0
            continue
        top = max(words, key=lambda w: w["score"])
        least = min(words, key=lambda w: abs(w["score"]))
        assert top["word"] == keyword

        def without(word):
            return record["text"][:word["start"]] + record["text"][word["end"]:]

        predicted = model.predict([without(top), without(least)]).argmax(axis=1)
        assert model.label_names[predicted[0]] != record["predicted_label"]  # the decisive word removed
        assert model.label_names[predicted[1]] == record["predicted_label"]  # the least useful word removed
        checked += 1
    assert checked == (len(records) if method == "occlusion" else 0)
    page = output.with_suffix(".html").read_text()
    assert page.count("<span") == sum(len(r["words"]) for r in records)


def test_it_runs_on_real_text(promoted, tmp_path):
    model_dir, _ = promoted
    abstracts = pd.read_csv(SHARED_DATA / "medical_abstracts" / "medical_tc_test.csv").head(2)
    abstracts.to_csv(tmp_path / "real.csv", index=False)
    assert explain.main([f"model={model_dir}", f"input={tmp_path / 'real.csv'}", "text_column=medical_abstract",
                         f"output={tmp_path / 'real.json'}"]) == 0
    records = json.loads((tmp_path / "real.json").read_text())["explanations"]
    assert len(records) == 2
    for record, text in zip(records, abstracts["medical_abstract"]):
        assert record["truncated"]  # 32 tokens: only the start of the abstract is seen, and it says so
        assert all(text[w["start"]:w["end"]] == w["word"] and np.isfinite(w["score"]) for w in record["words"])
        assert record["words"][0]["start"] == 0 and len(record["words"]) > 5
    assert (tmp_path / "real.html").read_text().count("<h3>") == 2


def test_bad_arguments_are_one_line_errors(capsys):
    assert explain.main(["model=/nonexistent", "input=x.csv", "output=y.json"]) == 2
    assert "model folder not found" in capsys.readouterr().err
    assert explain.main(["model=a", "input=b", "output=c", "steps=0"]) == 2
