"""Decoder (causal) LMs as sequence classifiers: pad token, precision, 4-bit QLoRA, a tiny test model.

A causal LM classifies from the hidden state of the last real token; transformers finds it as the
rightmost token that is not `config.pad_token_id`. Instruct decoders often ship without a pad token,
so the eos token pads (it never ends an input here: tokenizers of these models do not append it).
Padding goes on the right: under causal attention the real tokens never see trailing pads, so a
padded example scores exactly like the same example alone.
"""

from __future__ import annotations

import torch

from medsweep.config import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# The file in a promoted folder that names the base an adapter must be loaded onto.
BASE_MODEL_FILE = "base_model.json"


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
    if cluster_cfg is not None and cluster_cfg.get("gpus_per_trial", 0) <= 0:
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


def loading_kwargs(model_cfg: dict, dtype: torch.dtype) -> dict:
    """Extra `from_pretrained` arguments: quantization and placement for a 4-bit base."""
    if model_cfg.get("quantization", "none") == "none":
        return {}
    from transformers import BitsAndBytesConfig

    # A 4-bit model cannot be moved after loading: put it on this trial's GPU now.
    return {"quantization_config": BitsAndBytesConfig(**bitsandbytes_settings(dtype)),
            "device_map": {"": torch.cuda.current_device()}}


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


def make_tiny_random_llama():
    """A 2-layer, 64-wide Llama with random weights and a byte-level BPE learned from the embedded
    abstracts, as a causal LM (like a Hub checkpoint: the classifier head is new) and, like
    Llama 3's tokenizer, with bos and eos but no pad token. Built offline; deterministic.
    Returns (model, tokenizer); model.resolve saves it once into the cache."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from medsweep import data

    texts = data.read_table(data.resolve_path("builtin:medical_abstracts"), "csv")["medical_abstract"].tolist()
    bos, eos = "<|begin_of_text|>", "<|end_of_text|>"
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=2000, special_tokens=[bos, eos], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    bos_id, eos_id = bpe.token_to_id(bos), bpe.token_to_id(eos)
    bpe.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {eos} $B:1", special_tokens=[(bos, bos_id), (eos, eos_id)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=bos, eos_token=eos, model_max_length=512)

    config = LlamaConfig(
        vocab_size=bpe.get_vocab_size(), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=bos_id, eos_token_id=eos_id, tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    return model, tokenizer
