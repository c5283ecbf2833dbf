"""The model an HTTP service answers with, and the reload that swaps in its successor (POST /reload
and SIGHUP both go through ServedModel.reload). Needs no FastAPI.
"""

from __future__ import annotations

import threading
from typing import Optional

from medsweep.config import ConfigError


class ReloadError(Exception):
    """A reload that did not happen, in one line; the model that was serving still is."""


class ServedModel:
    """The model being served and how to load its successor. A request reads `current` once, when it
    arrives, and uses only that object: a reload that swaps it meanwhile cannot mix two versions
    into one answer, and the request finishes on the model it started on."""

    def __init__(self, promoted, source=None):
        self.current = promoted
        # What a reload reads again: the path the service was started with (the run's `promoted`
        # link, resolved anew at each load), never the version folder it resolved to.
        self.source = source if source is not None else (promoted.source or promoted.folder)
        self.lock = threading.Lock()  # one reload at a time

    def reload(self) -> tuple[Optional[str], Optional[str]]:
        """Load `source` again and swap it in: (previous version, new version). Raises ReloadError
        (one line) and keeps serving the current model when the new one cannot be loaded."""
        from medsweep.serving.inference import load_promoted

        with self.lock:
            previous = self.current
            try:
                loaded = load_promoted(self.source)
                # One real forward pass before the swap: weights that load but cannot predict
                # (a tokenizer from another model, a head of the wrong shape) are caught here.
                loaded.predict(["reload check"], ["reload check"] if loaded.text_pair_column else None)
            except Exception as exc:  # noqa: BLE001 - any failure leaves the old model serving
                reason = str(exc).strip().splitlines()[0] if isinstance(exc, ConfigError) and str(exc).strip() \
                    else f"could not load the model in {self.source}: {type(exc).__name__}"
                raise ReloadError(f"reload failed, still serving {previous.version}: {reason[:300]}") from None
            self.current = loaded  # one reference assignment: atomic for every request that follows
            return previous.version, loaded.version
