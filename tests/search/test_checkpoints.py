"""Checkpoint keeping with cluster.periodic_saves (medsweep/search/checkpoints.py): a finished trial
keeps its best and its latest checkpoint, and Ray no longer rewrites its whole experiment state after
every trial checkpoint."""

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import ray
from ray.tune.execution.tune_controller import TuneController

from medsweep.plan import primary
from medsweep.promotion.ranking import kept_run
from medsweep.search import checkpoints, sweep
from tests.conftest import compose_config

pytest.importorskip("yahpo_gym", reason="needs the simulate extra: pip install -e '.[simulate]'")
BENCHMARKS = Path(__file__).resolve().parents[2].parent / "shared" / "benchmarks"
pytestmark = pytest.mark.skipif(not (BENCHMARKS / "lcbench" / "model.onnx").is_file(),
                                reason=f"needs YAHPO Gym's lcbench/ in {BENCHMARKS}")


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    """8 replayed trials of 4 evaluations, each checkpointed, 4 at a time, all run to the end (FIFO)."""
    run_dir = tmp_path_factory.mktemp("keep")
    config = compose_config(["+sweep=replay_lcbench", f"replay.data_path={BENCHMARKS}", "sweep.num_trials=8",
                             "sweep.max_concurrent=4", "sweep.scheduler=fifo", "replay.evaluation_s=1",
                             "cluster.periodic_saves=true"], run_dir=run_dir)
    saves = []
    original = TuneController.save_to_dir
    patch = pytest.MonkeyPatch()
    patch.setattr(TuneController, "save_to_dir", lambda self, *a, **k: (saves.append(1), original(self, *a, **k))[1])
    try:
        results = sweep.run_sweep(sweep.preflight(config))
    finally:
        patch.undo()
        ray.shutdown()  # a local Ray left running would be joined by the next test's simulated cluster
    return config, results, len(saves)


def on_disk(result) -> set[str]:
    return {p.name for p in Path(result.path).glob("checkpoint_*")}


def test_a_finished_trial_keeps_its_best_and_its_latest_checkpoint_only(replayed):
    config, results, _ = replayed
    metric = primary(config).metric
    assert len(results) == 8 and all(r.error is None for r in results)
    for result in results:
        history = result.metrics_dataframe.sort_values("training_iteration")
        assert len(history) == 4
        scores = list(history[metric])
        # Best by the one rule (ties to the later evaluation); checkpoint_00000k is evaluation k + 1.
        best = max(range(4), key=lambda i: (scores[i], i))
        assert on_disk(result) == {f"checkpoint_{best:06d}", "checkpoint_000003"}
        # What promotion picks is one of those kept, and its scores are that evaluation's.
        run = kept_run(result, config, origin="sweep")
        assert Path(run.checkpoint.path).name == f"checkpoint_{best:06d}" and Path(run.checkpoint.path).is_dir()
        assert run.scores[metric] == scores[best]


def test_ray_saves_its_experiment_state_on_its_own_clock_not_after_every_checkpoint(replayed):
    _, _, saves = replayed
    # 32 trial checkpoints: Ray with num_to_keep=1 saved its state after (nearly) each of them.
    assert saves < 32 / 2


def fake_trial(tmp_path: Path, trial_id: str, state: Path):
    """A finished trial as KeepBest sees it: its storage and its registered checkpoints (real folders)."""
    results = []
    for i, score in enumerate([0.5, 0.9, 0.7]):
        folder = tmp_path / trial_id / f"checkpoint_{i:06d}"
        folder.mkdir(parents=True)
        results.append(SimpleNamespace(checkpoint=SimpleNamespace(path=str(folder), filesystem=local_fs()),
                                       metrics={"score": score}))
    ranked = sorted(results, key=lambda r: r.metrics["score"])
    manager = SimpleNamespace(best_checkpoint_results=ranked, best_checkpoint_result=ranked[-1],
                              latest_checkpoint_result=results[-1])
    storage = SimpleNamespace(storage_filesystem=local_fs(), experiment_fs_path=str(state.parent))
    return SimpleNamespace(trial_id=trial_id, status="TERMINATED", storage=storage,
                           run_metadata=SimpleNamespace(checkpoint_manager=manager))


def local_fs():
    from pyarrow.fs import LocalFileSystem

    return LocalFileSystem()


def saved(state: Path, at: float) -> None:
    state.write_text("{}")
    os.utime(state, (at, at))


def test_checkpoints_go_only_after_two_saves_newer_than_the_trials_end(tmp_path):
    state = tmp_path / "experiment_state-2026-12-08_00-00-00.json"
    saved(state, 1000.0)
    trial = fake_trial(tmp_path, "a", state)
    keeper = checkpoints.KeepBest()
    keeper.CHECK_S = 0.0
    keeper.on_trial_complete(0, [trial], trial)

    def kept():
        keeper.on_step_end(0, [trial])
        return sorted(p.name for p in (tmp_path / "a").iterdir())

    everything = ["checkpoint_000000", "checkpoint_000001", "checkpoint_000002"]
    assert kept() == everything  # no newer save yet
    saved(state, 1001.0)
    # The first newer file may be an upload Ray started before the trial ended: still kept.
    assert kept() == everything
    saved(state, 1002.0)
    assert kept() == ["checkpoint_000001", "checkpoint_000002"]  # the best (0.9) and the latest


def test_at_the_end_a_trial_goes_only_if_a_save_followed_it(tmp_path):
    state = tmp_path / "experiment_state-2026-12-08_00-00-00.json"
    saved(state, 1000.0)
    ended, unsaved = fake_trial(tmp_path, "a", state), fake_trial(tmp_path, "b", state)
    earlier = fake_trial(tmp_path, "c", state)  # finished under an earlier (killed) driver
    keeper = checkpoints.KeepBest()
    keeper.on_trial_complete(0, [ended], ended)
    saved(state, 1001.0)  # Ray's final save
    keeper.on_trial_complete(0, [unsaved], unsaved)
    keeper.on_experiment_end([ended, unsaved, earlier])
    assert len(list((tmp_path / "a").iterdir())) == 2 and len(list((tmp_path / "c").iterdir())) == 2
    # No save after it ended (the loop raised before Ray's final one): a resume may restore it from any.
    assert len(list((tmp_path / "b").iterdir())) == 3
