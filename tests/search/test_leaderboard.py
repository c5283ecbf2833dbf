"""The local leaderboard (tracker=none and every other tracker): rewritten as each trial finishes,
best first by the sweep metric in its direction."""

import csv
from types import SimpleNamespace

from medsweep.search import leaderboard
from medsweep.search.leaderboard import Leaderboard


def trial(trial_id: str, lr: float):
    # The two attributes of a Ray Trial that the callback reads.
    return SimpleNamespace(trial_id=trial_id, config={"trainer": {"learning_rate": lr}})


def read(run_dir):
    with open(run_dir / "leaderboard.csv") as f:
        return list(csv.DictReader(f))


def test_leaderboard_is_rewritten_as_trials_finish_and_sorted_by_the_metric(tmp_path, monkeypatch):
    monkeypatch.setattr(leaderboard, "WRITE_INTERVAL_S", 0.0)  # every end rewrites (the interval: below)
    board = Leaderboard(tmp_path, "val_loss", "min", ["trainer.learning_rate"])
    a, b, c = trial("a", 1e-3), trial("b", 2e-3), trial("c", 3e-3)
    board.on_trial_result(1, [], a, {"val_loss": 0.9, "val_f1_macro": 0.2, "step": 10, "final": False})
    board.on_trial_result(2, [], b, {"val_loss": 0.8, "val_f1_macro": 0.3, "step": 10, "final": False})
    board.on_trial_result(3, [], a, {"val_loss": 0.5, "val_f1_macro": 0.4, "step": 20, "final": True})
    assert not (tmp_path / "leaderboard.csv").exists()  # nothing finished yet

    board.on_trial_complete(4, [], a)
    rows = read(tmp_path)
    assert [(r["trial_id"], r["status"], float(r["best_value"]), r["best_step"]) for r in rows] == [("a", "completed", 0.5, "20")]

    board.on_trial_result(5, [], b, {"val_loss": 0.3, "val_f1_macro": 0.35, "step": 20, "final": False})
    board.on_trial_complete(6, [], b)  # ASHA stopped it before its last step
    board.on_trial_error(7, [], c)
    rows = read(tmp_path)
    # Lower val_loss is better: b (0.3) above a (0.5); the failed trial without a result last.
    assert [(r["trial_id"], r["status"]) for r in rows] == [("b", "early_stopped"), ("a", "completed"), ("c", "error")]
    assert rows[0]["evaluations"] == "2" and float(rows[0]["val_f1_macro"]) == 0.35
    markdown = (tmp_path / "leaderboard.md").read_text().splitlines()
    assert "lower is better" in markdown[0]
    assert [line.split("|")[2].strip() for line in markdown[4:]] == ["b", "a", "c"]


def test_a_trial_resumed_after_its_last_evaluation_keeps_its_numbers(tmp_path):
    """The driver stopped right after a trial reported its final evaluation; the next driver resumes the
    trial, which ends at once without a new result. Its row is built from its result.json (seen in a
    SIGINT fault test: the row said 0 evaluations, early_stopped)."""
    import json

    folder = tmp_path / "ray" / "sweep" / "tune_trial_a"
    folder.mkdir(parents=True)
    history = [{"val_loss": 0.9, "val_f1_macro": 0.2, "step": 10, "final": False},
               {"val_loss": 0.4, "val_f1_macro": 0.5, "step": 20, "final": False},
               {"val_loss": 0.6, "val_f1_macro": 0.45, "step": 30, "final": True}]
    (folder / "result.json").write_text("".join(json.dumps(r) + "\n" for r in history) + '{"val_loss": 0.')
    board = Leaderboard(tmp_path, "val_loss", "min", ["trainer.learning_rate"])
    resumed = SimpleNamespace(trial_id="a", config={"trainer": {"learning_rate": 1e-3}}, local_path=str(folder))
    board.on_trial_complete(1, [], resumed)
    (row,) = read(tmp_path)
    assert (row["status"], row["evaluations"], float(row["best_value"]), row["best_step"]) == ("completed", "3", 0.4, "20")


def test_rewrites_are_at_most_one_per_interval_and_no_row_is_held_back(tmp_path, monkeypatch):
    """Rewriting on every end grows with the square of the trials (bench_cluster): ends within the
    interval share one rewrite, Tune's next loop step after the interval writes what was held back,
    and the experiment's end writes everything."""
    clock = [100.0]
    monkeypatch.setattr(leaderboard.time, "monotonic", lambda: clock[0])
    writes = []
    board = Leaderboard(tmp_path, "val_loss", "min", ["trainer.learning_rate"])
    original = board.write
    monkeypatch.setattr(board, "write", lambda: (writes.append(len(board.rows)), original()))
    trials = [trial(f"t{i}", 1e-3) for i in range(50)]
    for i, t in enumerate(trials[:40]):
        board.on_trial_result(i, [], t, {"val_loss": 1.0 / (i + 1), "step": 10, "final": True})
        board.on_trial_complete(i, [], t)
        clock[0] += 0.01  # 40 ends in 0.4 s
    assert writes == [1] and len(read(tmp_path)) == 1  # the first end wrote; the next 39 are held
    board.on_step_end(41, trials)
    assert writes == [1]  # still within the interval
    clock[0] += leaderboard.WRITE_INTERVAL_S
    board.on_step_end(42, trials)
    assert writes == [1, 40] and len(read(tmp_path)) == 40
    board.on_step_end(43, trials)
    assert writes == [1, 40]  # nothing new: no rewrite
    for i, t in enumerate(trials[40:], 40):
        board.on_trial_result(i, [], t, {"val_loss": 1.0 / (i + 1), "step": 10, "final": True})
        board.on_trial_complete(i, [], t)
    board.on_experiment_end(trials=[])
    rows = read(tmp_path)
    assert len(rows) == 50 and rows[0]["trial_id"] == "t49"


def test_trials_that_ended_before_a_killed_driver_wrote_them_get_their_rows_at_the_end(tmp_path):
    """A driver killed between two rewrites: the next driver's Tune lists those trials as TERMINATED
    and never calls on_trial_complete for them; their rows come from their result.json."""
    import json

    folders = []
    for name, value in (("x", 0.7), ("y", 0.2)):
        folder = tmp_path / "ray" / "sweep" / f"replay_trial_{name}"
        folder.mkdir(parents=True)
        (folder / "result.json").write_text(json.dumps({"val_loss": value, "step": 4, "final": True}) + "\n")
        folders.append(SimpleNamespace(trial_id=name, status="TERMINATED", local_path=str(folder),
                                       config={"trainer": {"learning_rate": 1e-3}}))
    unfinished = SimpleNamespace(trial_id="z", status="PENDING", local_path=None, config={"trainer": {"learning_rate": 1e-3}})
    board = Leaderboard(tmp_path, "val_loss", "min", ["trainer.learning_rate"])
    board.on_experiment_end(trials=[*folders, unfinished])
    rows = read(tmp_path)
    assert [(r["trial_id"], r["status"], float(r["best_value"])) for r in rows] == [("y", "completed", 0.2), ("x", "completed", 0.7)]
