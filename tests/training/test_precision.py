"""The per-device training settings (precision.training_kwargs): a GPU is described, not patched in."""

import pytest
import torch

from medsweep.training import precision
from medsweep.training.model import build_model
from medsweep.training.trial import training_arguments
from tests.conftest import TINY, compose_config

H100 = precision.Device(cuda=True, bf16=True, compute_capability=(9, 0), name="NVIDIA H100 80GB HBM3")
T4 = precision.Device(cuda=True, bf16=False, compute_capability=(7, 5), name="Tesla T4")
CPU = precision.Device(cuda=False)
TRAINER = {"torch_compile": False}


def test_a_bf16_gpu_gets_autocast_tf32_fused_adamw_and_loader_workers():
    dtype = precision.resolve_dtype("auto", cuda=H100.cuda, bf16_supported=H100.bf16)
    kwargs = precision.training_kwargs(dtype, TRAINER, cpus_per_trial=4, device=H100)
    assert dtype == torch.bfloat16
    assert kwargs["bf16"] and not kwargs["fp16"] and kwargs["tf32"] is True and kwargs["use_cpu"] is False
    assert kwargs["optim"] == "adamw_torch_fused"
    # One core runs the training loop; the other three collate and pin the next batches.
    assert (kwargs["dataloader_num_workers"], kwargs["dataloader_persistent_workers"], kwargs["dataloader_pin_memory"]) == (3, True, True)


def test_a_pre_ampere_gpu_gets_no_tf32_and_float16_only_when_asked():
    assert precision.resolve_dtype("auto", cuda=T4.cuda, bf16_supported=T4.bf16) == torch.float32
    kwargs = precision.training_kwargs(torch.float16, TRAINER, cpus_per_trial=1, device=T4)
    assert kwargs["fp16"] and not kwargs["bf16"] and kwargs["tf32"] is None
    # A single CPU: no workers, and so no persistent ones (TrainingArguments refuses that pair).
    assert (kwargs["dataloader_num_workers"], kwargs["dataloader_persistent_workers"]) == (0, False)


def test_on_cpu_the_loader_takes_no_cores_and_the_library_optimizer_stands():
    kwargs = precision.training_kwargs(torch.float32, TRAINER, cpus_per_trial=8, device=CPU)
    assert kwargs["use_cpu"] and kwargs["tf32"] is None and not kwargs["bf16"]
    assert kwargs["dataloader_num_workers"] == 0 and not kwargs["dataloader_pin_memory"]
    assert "optim" not in kwargs


def test_torch_compile_is_a_switch_and_off_by_default():
    config = compose_config()
    assert config["trainer"]["torch_compile"] is False and config["model"]["attn_implementation"] is None
    assert precision.training_kwargs(torch.float32, {"torch_compile": True}, 2, device=CPU)["torch_compile"] is True


def test_a_trial_builds_its_arguments_from_these_kwargs_on_this_machine(tmp_path):
    config = compose_config(TINY + ["cluster.cpus_per_trial=2"])
    args = training_arguments(config["trainer"], str(tmp_path), torch.float32, save=False, cpus_per_trial=2)
    expected = precision.training_kwargs(torch.float32, config["trainer"], 2)
    assert args.dataloader_num_workers == expected["dataloader_num_workers"]
    assert args.use_cpu == (not torch.cuda.is_available()) and args.torch_compile is False


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_the_attention_kernel_is_a_model_setting(attention):
    config = compose_config(TINY + [f"model.attn_implementation={attention}"])
    model = build_model(config["model"], ["a", "b"])
    assert model.config._attn_implementation == attention


def test_an_unknown_attention_kernel_is_refused():
    from medsweep.config import ConfigError, validate

    with pytest.raises(ConfigError, match="model.attn_implementation must be null or one of"):
        validate(compose_config(["model.attn_implementation=fast"]))
