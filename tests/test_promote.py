"""Promotion: the best evaluation step (not the last), written atomically, loadable."""

import json
from pathlib import Path

import pytest
import ray

from medsweep import promote, sweep
from medsweep.promote import promote_checkpoint
from tests.conftest import TINY, compose_config


@pytest.fixture
def ray_local():
    yield
    ray.shutdown()


def test_promotion_takes_the_peak_step_not_the_last(tmp_path, ray_local):
    config = compose_config(TINY + ["trainer.epochs=3", "cluster.num_cpus=1"], run_dir=tmp_path)
    space, splits = sweep.preflight(config)

    def peaked_trial(sampled, base_config):
        # Real training and real checkpoints; only the score is scripted, so that the best
        # evaluation is the middle one and "last" and "best" disagree.
        from ray import tune

        from medsweep.search_space import apply_overrides
        from medsweep.trial import run_trial

        scripted = iter([0.2, 0.6, 0.4])

        def report(metrics, checkpoint_dir):
            tune.report(dict(metrics, val_f1_macro=next(scripted)),
                        checkpoint=tune.Checkpoint.from_directory(str(checkpoint_dir)))

        run_trial(apply_overrides(base_config, sampled), on_evaluation=report)

    results = sweep.run_sweep(config, space, num_train=len(splits.train), trainable_fn=peaked_trial)
    best, checkpoint = sweep.best_checkpoint(results, config)
    assert best.metrics_dataframe["val_f1_macro"].tolist() == [0.2, 0.6, 0.4]
    with checkpoint.as_directory() as directory:
        link = promote_checkpoint(directory, tmp_path)
    promoted = json.loads((link / "metrics.json").read_text())
    steps = best.metrics_dataframe["step"].tolist()
    assert promoted["validation"]["step"] == steps[1] != steps[-1]
    assert promoted["validation"]["evaluation"] == 2


def test_a_crash_during_promotion_leaves_the_previous_model_loadable(tiny_config, tmp_path, monkeypatch):
    from transformers import pipeline

    from medsweep.trial import run_trial

    checkpoints = []

    def keep(report, checkpoint_dir):
        import shutil

        target = tmp_path / f"ckpt{len(checkpoints)}"
        shutil.copytree(checkpoint_dir, target)
        checkpoints.append(target)

    run_trial(tiny_config, on_evaluation=keep)
    run_dir = tmp_path / "run"
    first = promote_checkpoint(checkpoints[0], run_dir)
    first_target = first.resolve()

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(promote, "evaluate_test_split", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        promote_checkpoint(checkpoints[1], run_dir)
    assert (run_dir / "promoted").resolve() == first_target
    assert pipeline("text-classification", model=str(run_dir / "promoted"))("a tumour")[0]["label"]

    monkeypatch.undo()
    second = promote_checkpoint(checkpoints[1], run_dir)
    assert second.resolve() != first_target and first_target.exists()  # history is kept
    assert json.loads((second / "metrics.json").read_text())["validation"]["evaluation"] == 2
    # The crashed attempt's partial folder is cleared and its version number reused.
    assert sorted(p.name for p in (run_dir / "promoted-versions").iterdir()) == ["v001", "v002"]
