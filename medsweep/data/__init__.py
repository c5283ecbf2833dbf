"""Reading data: files and datasets in (formats), identifiers masked (deid), rows cleaned and split
without leakage (splits). Imports: medsweep.config, medsweep.hf and medsweep.resources only.

The stage's interface is re-exported here, so that callers write `data.load_splits(cfg)`."""

from medsweep.data.formats import read_table, resolve_path
from medsweep.data.splits import GROUP_PREFIX, MISSING_GROUP, SPLITS, DataSplits, describe, fingerprint, load_splits

__all__ = ["GROUP_PREFIX", "MISSING_GROUP", "SPLITS", "DataSplits", "describe", "fingerprint", "load_splits",
           "read_table", "resolve_path"]
