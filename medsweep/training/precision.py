"""Precision for every model (the dtype it computes in, what the optimizer updates, 4-bit QLoRA) and
what decoder (causal) LMs need as sequence classifiers (a pad token, right padding).

A causal LM classifies from the hidden state of the last real token; transformers finds it as the
rightmost token that is not `config.pad_token_id`. Instruct decoders often ship without a pad token,
so the eos token pads (it never ends an input here: tokenizers of these models do not append it).
Padding goes on the right: under causal attention the real tokens never see trailing pads, so a
padded example scores exactly like the same example alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from medsweep.config import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(setting: str, cuda: bool | None = None, bf16_supported: bool | None = None) -> torch.dtype:
    """auto: bfloat16 where the GPU does it natively (no loss scaling, unlike float16), else float32.
    `cuda`/`bf16_supported` default to this machine; tests pass them to check the GPU branch on a CPU."""
    if setting != "auto":
        return DTYPES[setting]
    cuda = torch.cuda.is_available() if cuda is None else cuda
    bf16_supported = (cuda and torch.cuda.is_bf16_supported()) if bf16_supported is None else bf16_supported
    return torch.bfloat16 if cuda and bf16_supported else torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def check_precision(model_cfg: dict, cluster_cfg: dict | None = None) -> None:
    """Refuse, with one sentence, a precision this machine (or the trials' resources) cannot run.

    Called by the sweep's preflight (with the cluster, before Ray starts) and by build_model (without,
    inside the trial), so bitsandbytes never gets the chance to fail deep in a worker's traceback.
    """
    quantized = model_cfg.get("quantization", "none") != "none"
    needs_gpu = quantized or model_cfg.get("dtype") == "float16"
    if not needs_gpu:
        return
    what = "model.quantization=4bit (QLoRA, bitsandbytes NF4)" if quantized else "model.dtype=float16"
    local = cluster_cfg is None or cluster_cfg.get("address") is None
    if local and not torch.cuda.is_available():
        fix = "use model.quantization=none" if quantized else "use model.dtype=bfloat16 or float32 on CPU"
        raise ConfigError(f"{what} needs a CUDA GPU and this machine has none; {fix}")
    # "auto" is resolved to a measured share once Ray is up (medsweep.search.resources), which
    # checks again then: a cluster without GPUs resolves it to 0.
    if cluster_cfg is not None and cluster_cfg.get("gpus_per_trial", 0) != "auto" and cluster_cfg.get("gpus_per_trial", 0) <= 0:
        # Ray hides the GPUs from a trial that asked for none.
        raise ConfigError(f"{what} trains on a GPU: set cluster.gpus_per_trial (e.g. 1)")
    if quantized and local:
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise ConfigError(f"{what} needs the bitsandbytes package, which is not installed: "
                              "pip install 'medsweep[qlora]'") from None


def bitsandbytes_settings(dtype: torch.dtype) -> dict:
    """QLoRA's recipe (Dettmers et al. 2023): NF4 weights, double quantization, 16-bit compute."""
    return {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
            "bnb_4bit_compute_dtype": dtype_name(dtype)}


def base_reference(model_cfg: dict, label_names: list[str]) -> dict:
    """How to rebuild a 4-bit base under its adapter: what a promoted folder of the adapter layout
    records in base_model.json (medsweep.release.layout reads it back)."""
    dtype = resolve_dtype(model_cfg.get("dtype", "auto"))
    quantized = model_cfg.get("quantization", "none") != "none"
    return {"name_or_path": model_cfg["name_or_path"], "revision": model_cfg["revision"],
            "quantization": model_cfg.get("quantization", "none"), "dtype": dtype_name(dtype),
            "bitsandbytes": bitsandbytes_settings(dtype) if quantized else None, "label_names": list(label_names)}


def loading_kwargs(model_cfg: dict, dtype: torch.dtype) -> dict:
    """Extra `from_pretrained` arguments: the attention kernel if one is asked for, quantization and
    placement for a 4-bit base."""
    # null leaves the choice to transformers (SDPA for BERT, Llama and Qwen in transformers 5).
    attention = {"attn_implementation": model_cfg["attn_implementation"]} if model_cfg.get("attn_implementation") else {}
    if model_cfg.get("quantization", "none") == "none":
        return attention
    from transformers import BitsAndBytesConfig

    # A 4-bit model cannot be moved after loading: put it on this trial's GPU now.
    return {"quantization_config": BitsAndBytesConfig(**bitsandbytes_settings(dtype)),
            "device_map": {"": torch.cuda.current_device()}, **attention}


@dataclass(frozen=True)
class Device:
    """What the trial's device can do, as far as training settings care. Tests build one for a GPU
    they do not have instead of patching torch."""

    cuda: bool
    bf16: bool = False
    compute_capability: tuple[int, int] = (0, 0)
    name: str = "cpu"


def this_device() -> Device:
    if not torch.cuda.is_available():
        return Device(cuda=False)
    return Device(cuda=True, bf16=torch.cuda.is_bf16_supported(), compute_capability=torch.cuda.get_device_capability(),
                  name=torch.cuda.get_device_name())


def training_kwargs(dtype: torch.dtype, trainer_cfg: dict, cpus_per_trial: float, device: Optional[Device] = None) -> dict:
    """The TrainingArguments that depend on the device: autocast precision, the optimizer, TF32, the
    data loader's workers and torch.compile. One place, so a trial and a benchmark train alike.

    - bf16/fp16: autocast to the resolved model.dtype (float32 master weights, see upcast_trainable).
    - optim: AdamW's fused CUDA kernel on a GPU (one kernel for all parameters instead of several per
      tensor). Set explicitly so an older transformers, whose default is the per-tensor loop, does the
      same; on CPU the library's default stands (not measured here, so not changed).
    - tf32: TF32 matmuls on Ampere and newer (compute capability 8+): several times the fp32 matmul
      rate, and far inside fine-tuning's noise.
    - dataloader workers: on a GPU, the trial's CPUs beyond the one the training loop runs on collate
      and pin the next batches while the GPU computes (persistent: not re-forked for every evaluation).
      On CPU the workers would take cores from the model's own threads (torch.set_num_threads), so none.
    - torch_compile (trainer.torch_compile, default off): compiling costs tens of seconds per trial
      and re-compiles for new sequence lengths under dynamic padding; whether it pays is for the GPU
      measurement to decide (experiments/gpu_all.py), so it is opt-in.
    """
    device = device or this_device()
    workers = max(0, int(cpus_per_trial) - 1) if device.cuda else 0
    kwargs = {
        "bf16": dtype == torch.bfloat16,
        "fp16": dtype == torch.float16,
        "tf32": True if device.cuda and device.compute_capability[0] >= 8 else None,
        "use_cpu": not device.cuda,
        "dataloader_num_workers": workers,
        "dataloader_persistent_workers": workers > 0,
        "dataloader_pin_memory": device.cuda,
        "torch_compile": bool(trainer_cfg.get("torch_compile", False)),
    }
    if device.cuda:
        kwargs["optim"] = "adamw_torch_fused"
    return kwargs


def ensure_pad_token(tokenizer):
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ConfigError("the model's tokenizer has neither a pad nor an eos token: cannot pad batches")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def upcast_trainable(model) -> None:
    """Mixed precision: frozen weights stay 16-bit, weights the optimizer updates are float32
    (bfloat16 cannot represent most small Adam steps)."""
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
