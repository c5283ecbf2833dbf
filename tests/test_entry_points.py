"""The public commands: `python -m medsweep.X` and the console scripts point at the same code."""

import importlib
import subprocess
import sys
import tomllib

import pytest

from tests.conftest import ROOT

SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def test_every_console_script_names_a_callable():
    assert set(SCRIPTS) == {"medsweep", "medsweep-predict", "medsweep-serve", "medsweep-report", "medsweep-explain",
                            "medsweep-compare", "medsweep-feedback"}
    for target in SCRIPTS.values():
        module, _, function = target.partition(":")
        assert callable(getattr(importlib.import_module(module), function)), target


@pytest.mark.parametrize("command, script", [("predict", "medsweep-predict"), ("serve", "medsweep-serve"),
                                             ("explain", "medsweep-explain"), ("report", "medsweep-report"),
                                             ("compare", "medsweep-compare")])
def test_python_dash_m_and_the_script_run_the_same_main(command, script):
    proc = subprocess.run([sys.executable, "-m", f"medsweep.{command}", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "usage:" in proc.stdout, proc.stderr[-2000:]
    module, _, function = SCRIPTS[script].partition(":")
    assert getattr(importlib.import_module(f"medsweep.{command}"), "main") is getattr(importlib.import_module(module), function)
