"""The key=value command lines of predict, serve and explain: typed dataclasses, refused keys with a
guess, usage generated from the fields."""

import dataclasses

import pytest

from medsweep.config import ConfigError
from medsweep.serving import args, explain, predict, serve


def test_values_are_converted_to_the_field_types():
    parsed = args.parse(serve.ServeArgs, ["model=m", "port=0", "max_batch=8", "allow_no_auth=TRUE"])
    assert (parsed.port, parsed.max_batch, parsed.allow_no_auth, parsed.host) == (0, 8, True, "127.0.0.1")
    parsed = args.parse(predict.PredictArgs, ["model=m", "input=i.csv", "output=o.csv", "text_pair_column=", "batch_size=3"])
    assert parsed.text_pair_column == "" and parsed.text_column is None and parsed.batch_size == 3
    assert args.parse(explain.ExplainArgs, ["model=m", "input=i", "output=o", "method=integrated_gradients"]).method \
        == "integrated_gradients"


@pytest.mark.parametrize("cls, argv, message", [
    (predict.PredictArgs, ["model=m", "input=i", "output=o", "modle=x"], "unknown argument 'modle'; did you mean model?"),
    (predict.PredictArgs, ["model=m", "input=i", "output=o", "zzz=1"], "unknown argument 'zzz'; known: model, input"),
    (predict.PredictArgs, ["model=m", "input=i"], "missing output=..."),
    (predict.PredictArgs, ["model=m", "input=i", "output=o", "batch_size=0"], "batch_size must be a positive integer"),
    (serve.ServeArgs, ["model=m", "port=-1"], "port must be an integer >= 0"),
    (serve.ServeArgs, ["model=m", "allow_no_auth=yes"], "allow_no_auth must be true or false"),
    (explain.ExplainArgs, ["model=m", "input=i", "output=o", "method=shap"], "method must be one of occlusion, integrated_gradients"),
    (explain.ExplainArgs, ["model=m", "input=i", "output=o", "steps"], "arguments are key=value"),
])
def test_bad_arguments_are_one_config_error_naming_them(cls, argv, message):
    with pytest.raises(ConfigError) as error:
        args.parse(cls, argv)
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("cls, prog", [(predict.PredictArgs, "medsweep.predict"), (serve.ServeArgs, "medsweep.serve"),
                                       (explain.ExplainArgs, "medsweep.explain")])
def test_usage_lists_every_field_with_its_help(cls, prog):
    text = args.usage(cls, prog)
    first, *helps = text.splitlines()
    assert first.startswith(f"usage: python -m {prog} ")
    for field in dataclasses.fields(cls):
        required = field.default is dataclasses.MISSING
        assert (f" {field.name}=" if required else f"[{field.name}=") in first
        assert any(line.split()[0] == field.name and field.metadata["help"] in line for line in helps)


def test_help_prints_the_usage_and_no_arguments_is_an_error(capsys):
    assert predict.main(["--help"]) == 0
    assert "usage: python -m medsweep.predict model=<promoted dir>" in capsys.readouterr().out
    assert serve.main([]) == 2
    assert capsys.readouterr().err.startswith("usage: MEDSWEEP_API_TOKEN=... python -m medsweep.serve")
