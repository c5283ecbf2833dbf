"""Promotion: the best evaluation step (not the last), written atomically, loadable."""

import json
from pathlib import Path

import pytest
import ray

from medsweep.promotion import ranking, release
from medsweep.promotion.release import promote_checkpoint
from medsweep.release import store
from medsweep.search import sweep
from tests.conftest import TINY, compose_config


@pytest.fixture
def ray_local():
    yield
    ray.shutdown()


@pytest.mark.slow  # a real Ray sweep of ~20-40 s; keeps the default suite under 10 min (`make test-slow`)
def test_promotion_takes_the_peak_step_not_the_last(tmp_path, ray_local):
    config = compose_config(TINY + ["trainer.epochs=3", "cluster.num_cpus=1"], run_dir=tmp_path)
    plan = sweep.preflight(config)

    def peaked_trial(sampled, base_config):
        # Real training and real checkpoints; only the score is scripted, so that the best
        # evaluation is the middle one and "last" and "best" disagree.
        from ray import tune

        from medsweep.search.space import apply_overrides
        from medsweep.training.trial import run_trial

        scripted = iter([0.2, 0.6, 0.4])

        def report(metrics, checkpoint_dir):
            tune.report(dict(metrics, val_f1_macro=next(scripted)),
                        checkpoint=tune.Checkpoint.from_directory(str(checkpoint_dir)))

        run_trial(apply_overrides(base_config, sampled), on_evaluation=report)

    results = sweep.run_sweep(plan, trainable_fn=peaked_trial)
    (best,) = results
    assert best.metrics_dataframe["val_f1_macro"].tolist() == [0.2, 0.6, 0.4]
    with ranking.kept_run(best, config, origin="sweep").checkpoint.as_directory() as directory:
        link = promote_checkpoint(directory, tmp_path)
    promoted = json.loads((link / "metrics.json").read_text())
    steps = best.metrics_dataframe["step"].tolist()
    assert promoted["validation"]["step"] == steps[1] != steps[-1]
    assert promoted["validation"]["evaluation"] == 2


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory):
    """Checkpoints of both evaluations of one real tiny trial, and a run dir that promoted the first."""
    import shutil

    from medsweep.training.trial import run_trial

    base = tmp_path_factory.mktemp("crash")
    checkpoints = []

    def keep(report, checkpoint_dir):
        target = base / f"ckpt{len(checkpoints)}"
        shutil.copytree(checkpoint_dir, target)
        checkpoints.append(target)

    run_trial(compose_config(TINY, run_dir=base), on_evaluation=keep)
    promoted_once = base / "promoted_once"
    promote_checkpoint(checkpoints[0], promoted_once)
    return checkpoints, promoted_once


def version_dirs(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "promoted-versions").iterdir() if p.is_dir())


def history_versions(run_dir: Path) -> list[str]:
    return [e["version"] for e in store.read_history(run_dir)]


# Every step of a promotion, from scoring the test split to recording it in the history.
@pytest.mark.parametrize("step", ["evaluate_test_split", "write_model_card", "swap_link", "record_history"])
def test_a_crash_during_promotion_leaves_the_previous_model_loadable(two_checkpoints, tmp_path, monkeypatch, step):
    import shutil

    from transformers import pipeline

    checkpoints, promoted_once = two_checkpoints
    run_dir = tmp_path / "run"
    shutil.copytree(promoted_once, run_dir, symlinks=True)
    first_target = (run_dir / "promoted").resolve()
    first_files = {p.name: p.read_bytes() for p in first_target.iterdir() if p.is_file()}

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    # The test split and the card are the release's steps; the link and the history the store's.
    monkeypatch.setattr(release if step in ("evaluate_test_split", "write_model_card") else store, step, crash)
    with pytest.raises(RuntimeError, match="disk full"):
        promote_checkpoint(checkpoints[1], run_dir)
    if step == "record_history":
        # The crash came after the swap: the new model is complete and promoted, the old one kept.
        assert (run_dir / "promoted").resolve() != first_target
        assert json.loads((run_dir / "promoted" / "metrics.json").read_text())["previous_version"] == "v001"
    else:
        assert (run_dir / "promoted").resolve() == first_target
    assert pipeline("text-classification", model=str(first_target))("a tumour")[0]["label"]
    assert pipeline("text-classification", model=str(run_dir / "promoted"))("a tumour")[0]["label"]
    assert history_versions(run_dir) == ["v001"]

    monkeypatch.undo()
    latest = promote_checkpoint(checkpoints[1], run_dir)
    assert json.loads((latest / "metrics.json").read_text())["validation"]["evaluation"] == 2
    # History is kept: v001 is untouched, and no version number is reused for different contents.
    assert {p.name: p.read_bytes() for p in first_target.iterdir() if p.is_file()} == first_files
    expected = {
        "evaluate_test_split": (["v001", "v002"], ["v001", "v002"]),  # the partial folder was cleared
        "write_model_card": (["v001", "v002"], ["v001", "v002"]),
        "swap_link": (["v001", "v002", "v003"], ["v001", "v003"]),  # v002 was complete but never promoted
        "record_history": (["v001", "v002", "v003"], ["v001", "v002", "v003"]),  # v002's line recovered
    }[step]
    assert (version_dirs(run_dir), history_versions(run_dir)) == expected
    history = store.read_history(run_dir)
    assert history[-1]["previous_version"] == history[-2]["version"]
    assert latest.resolve().name == history[-1]["version"]


@pytest.mark.parametrize("damage", ["truncated", "bit_flipped"])
def test_a_corrupted_checkpoint_is_never_promoted(two_checkpoints, tmp_path, damage):
    """trial.json records the sha256 of the checkpoint's weight files when the trial saves it; a
    checkpoint whose weights no longer match is refused in one line before anything is written."""
    import shutil

    from medsweep.config import ConfigError
    from medsweep.hf import DIGEST_FIELD

    checkpoints, promoted_once = two_checkpoints
    run_dir = tmp_path / "run"
    shutil.copytree(promoted_once, run_dir, symlinks=True)
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(checkpoints[1], checkpoint)
    recorded = json.loads((checkpoint / "trial.json").read_text())[DIGEST_FIELD]
    assert set(recorded) == {"model.safetensors"}  # written by the trial itself
    weights = checkpoint / "model.safetensors"
    content = weights.read_bytes()
    weights.write_bytes(content[: len(content) - 100] if damage == "truncated" else content[:-7] + b"\x00" * 7)
    with pytest.raises(ConfigError, match="does not match the sha256 recorded") as info:
        promote_checkpoint(checkpoint, run_dir)
    assert "\n" not in str(info.value)
    assert version_dirs(run_dir) == ["v001"] and (run_dir / "promoted").resolve().name == "v001"
    assert history_versions(run_dir) == ["v001"]
