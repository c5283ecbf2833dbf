"""The override parser, fuzzed with Hypothesis through the CLI's own path (`medsweep.run.cli()`,
in-process): random key=value overrides, group choices and values Hydra's grammar may or may not
accept, including model names that are neither a folder nor a Hub id. Each command line either
composes and passes every check before Ray (`sweep.preflight`) or ends in one line on stderr and
exit 2; never a traceback. Bounded in examples; the data are read once (the readers have their own
fuzz test)."""

import contextlib
import io
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from medsweep import data, run
from medsweep.config import MedsweepConfig
from medsweep.search import sweep
from tests.conftest import compose_config

# cluster.address would wait 5 s for a random host; the trackers are checked after preflight.
KEYS = [k for k in run.schema_keys(OmegaConf.structured(MedsweepConfig))
        if not k.startswith(("cluster.address", "tracker.", "hydra."))]
VALUES = st.one_of(
    st.integers(-3, 10**6).map(str), st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["null", "true", "false", "[]", "[1,2]", "{a: 1}", "${oops}", "${now:%Y}", "''", "'a b'", "1e999",
                     "-0", "0", "1", "all-linear", "lora", "full", "4bit", "max", "min", "asha", "optuna", "random",
                     "val_f1_macro", "val_nope", "float16", "é", "a=b", "[", "}", "\\", "--", "~"]),
    st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), max_size=8),
)
NAMES = st.sampled_from(["no/such/folder", "../nowhere", "has space/model", "a//b", "-bad-", "x" * 120,
                         "builtin:nope", "org/model-that-is-not-cached", "/tmp/definitely/not/here", "builtin:tiny-random-bert"])
OVERRIDES = st.lists(st.one_of(
    st.tuples(st.sampled_from(KEYS), VALUES).map(lambda kv: f"{kv[0]}={kv[1]}"),
    st.tuples(st.sampled_from(["model", "data", "+sweep", "trainer", "sweep"]),
              st.sampled_from(["tiny_random", "smoke", "lr_lora", "nope", "csv", "default", ""])).map("=".join),
    NAMES.map(lambda name: f"model.name_or_path={name}"),
    st.text(max_size=10),  # not an override at all
), max_size=4)


OUTCOMES = {"checked": 0, "refused": 0}


class Checked(Exception):
    """Raised where the real CLI would start Ray: every check passed."""


@pytest.fixture(scope="module")
def default_splits():
    return data.load_splits(compose_config()["data"])


@settings(max_examples=20, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(overrides=OVERRIDES)
def test_random_overrides_are_checked_or_one_line(overrides, default_splits, tmp_path, monkeypatch):
    def checks_only(config, on_checked=None):
        sweep.preflight(config)
        raise Checked()

    monkeypatch.setattr(run, "execute", checks_only)
    monkeypatch.setattr(sweep.data, "load_splits", lambda cfg: default_splits)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    monkeypatch.setattr(sys, "argv", ["medsweep.run", "model=tiny_random", *overrides, f"hydra.run.dir={tmp_path}"])
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            run.cli()
        except Checked:
            OUTCOMES["checked"] += 1
            return
        except SystemExit as exit_:
            assert exit_.code == 2, (overrides, stderr.getvalue())
            lines = stderr.getvalue().strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("medsweep: error: "), (overrides, stderr.getvalue())
            OUTCOMES["refused"] += 1
            return
    pytest.fail(f"cli() returned without a sweep or an error for {overrides}")


def test_both_outcomes_were_exercised():
    if not sum(OUTCOMES.values()):
        pytest.skip("counts the fuzz test of this file: run it whole")
    print(f"override fuzz: {OUTCOMES}")
    assert OUTCOMES["checked"] > 0 and OUTCOMES["refused"] > 0, OUTCOMES


@pytest.mark.parametrize("name", ["no/such/folder/model", "../nowhere", "has space/model", "a//b"])
def test_a_model_that_is_neither_a_folder_nor_a_hub_id_is_one_line(name, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(run, "execute", lambda config, on_checked=None: sweep.preflight(config))
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    monkeypatch.setattr(sys, "argv", ["medsweep.run", f"model.name_or_path={name}", f"hydra.run.dir={tmp_path}"])
    with pytest.raises(SystemExit) as exit_:
        run.cli()
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "neither an existing folder nor a valid Hugging Face Hub id" in err, err
