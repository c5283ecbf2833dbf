"""experiments/gpu_all.py on the CPU (--tiny): a GPU session runs it once, with minutes to spare at most,
so its code paths, its JSON and its guarding of each section are checked here."""

import json
import sys

import pytest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "experiments"))
import gpu_all  # noqa: E402


def test_tiny_sections_write_their_json_and_a_failing_section_loses_nothing(tmp_path, monkeypatch):
    def broken(run):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    # A section that fails between two that work: the later one still runs and everything is saved.
    sections = [s for s in gpu_all.SECTIONS if s[0] == "mfu"] + [("broken", broken, 1)] + \
               [s for s in gpu_all.SECTIONS if s[0] == "probe"]
    monkeypatch.setattr(gpu_all, "SECTIONS", sections)
    summary = gpu_all.main(["--tiny", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "gpu_all.json").read_text())
    assert saved["sections"].keys() == {"mfu", "broken", "probe"} == summary["sections"].keys()
    assert saved["sections"]["broken"]["status"] == "error" and "illegal memory access" in saved["sections"]["broken"]["error"]
    mfu = json.loads((tmp_path / "mfu.json").read_text())["result"]
    assert mfu["bf16_fused"]["fused_adamw"] is True and mfu["bf16_foreach"]["fused_adamw"] is False
    assert mfu["fused_vs_foreach"] == pytest.approx(mfu["bf16_fused"]["samples_per_second"] / mfu["bf16_foreach"]["samples_per_second"])
    # The probe ran the sweep's auto path: the largest batch of the space ([4, 8]), a share for 4 concurrent trials.
    probe = saved["sections"]["probe"]["result"]["minilm_lr_full"]
    assert probe["shape"]["trainer.batch_size"] == 8 and probe["probe"]["shapes"] == [[8, 32]] * 3 + [[16, 32]]
    assert probe["gpus_per_trial"] == pytest.approx(1 / probe["trials_per_gpu"], abs=1e-4) and probe["max_concurrent"] == 4
    assert saved["sections"]["probe"]["result"]["qwen_4bit"] == {"skipped": "4-bit needs a CUDA GPU"}


def test_the_time_budget_skips_what_no_longer_fits(tmp_path):
    summary = gpu_all.main(["--only", "llama8b", "--budget-s", "5", "--out", str(tmp_path)])
    record = summary["sections"]["llama8b"]
    assert record["status"] == "skipped" and "--budget-s" in record["reason"]


def test_an_unknown_section_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        gpu_all.main(["--only", "mfu,speed", "--out", str(tmp_path)])
    assert info.value.code == 2 and "unknown section(s) ['speed']" in capsys.readouterr().err


@pytest.mark.slow  # every section on tiny models, three Ray sweeps and a server: ~5-10 min on 2 shared cores
def test_every_section_runs_on_tiny_models(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    summary = gpu_all.main(["--tiny", "--out", str(tmp_path)])
    statuses = {name: record["status"] for name, record in summary["sections"].items()}
    assert statuses == {name: "ok" for name, _, _ in gpu_all.SECTIONS}, summary
    e2e = summary["sections"]["qlora_e2e"]["result"]
    # The promoted folder predicts, through all three doors, what promotion saved for the test split.
    assert e2e["same_probabilities"] and max(e2e["max_abs_diff"].values()) < 1e-5 and e2e["test_rows"] > 100
    packing = summary["sections"]["packing"]["result"]
    assert packing["trials"] == [2, 2] and packing["gpu_probe"]["gpus_per_trial"] == 0  # auto on a CPU: 0
