"""Turn a search space written as YAML data into Ray Tune domains (which OptunaSearch samples).

A space mirrors the config's nesting; a leaf is a dict with a `type`:

    trainer:
      learning_rate: {type: loguniform, lower: 1.0e-5, upper: 5.0e-4}
      batch_size: {type: choice, values: [8, 16]}
    model:
      lora:
        r: {type: int, lower: 4, upper: 32, log: true}
"""

from __future__ import annotations

import copy
import math
from typing import Any

from medsweep.config import ConfigError

# type -> (required keys, optional keys)
SPEC_KEYS = {
    "loguniform": ({"lower", "upper"}, set()),
    "uniform": ({"lower", "upper"}, set()),
    "int": ({"lower", "upper"}, {"log"}),
    "choice": ({"values"}, set()),
}
# Dimensions that only make sense under a fixed setting of the base config.
REQUIRES = {"model.lora": ("model.finetune", "lora")}


def flatten(space: dict, prefix: str = "") -> dict[str, dict]:
    """{"trainer": {"learning_rate": {...}}} -> {"trainer.learning_rate": {...}}."""
    leaves = {}
    for key, value in space.items():
        path = f"{prefix}{key}"
        if not isinstance(value, dict):
            raise ConfigError(f"search space entry {path!r} must be a mapping with a 'type', got {value!r}")
        if "type" in value:
            leaves[path] = value
        else:
            leaves.update(flatten(value, path + "."))
    return leaves


def _get(config: dict, path: str) -> Any:
    node = config
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(path)
        node = node[part]
    return node


def _domain(path: str, spec: dict):
    from ray import tune  # here, not at the top: the report reads search spaces without Ray

    kind = spec["type"]
    if kind not in SPEC_KEYS:
        raise ConfigError(f"search space {path}: unknown type {kind!r}; use one of {sorted(SPEC_KEYS)}")
    required, optional = SPEC_KEYS[kind]
    given = set(spec) - {"type"}
    if missing := required - given:
        raise ConfigError(f"search space {path}: type {kind} needs {sorted(missing)}")
    if unknown := given - required - optional:
        raise ConfigError(f"search space {path}: unknown key(s) {sorted(unknown)} for type {kind}")

    if kind == "choice":
        values = spec["values"]
        if not isinstance(values, list) or not values:
            raise ConfigError(f"search space {path}: choice needs a non-empty list of values")
        if not all(v is None or isinstance(v, (bool, int, float, str)) for v in values):
            raise ConfigError(f"search space {path}: choice values must be numbers, strings, booleans or null")
        return tune.choice(list(values))

    lower, upper = spec["lower"], spec["upper"]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (lower, upper)):
        raise ConfigError(f"search space {path}: lower and upper must be finite numbers, got {lower!r}, {upper!r}")
    if kind == "int":
        if int(lower) != lower or int(upper) != upper:
            raise ConfigError(f"search space {path}: int bounds must be whole numbers, got {lower}, {upper}")
        if lower > upper:
            raise ConfigError(f"search space {path}: empty range, lower {lower} > upper {upper}")
        if spec.get("log") and lower < 1:
            raise ConfigError(f"search space {path}: a log-scaled int range needs lower >= 1, got {lower}")
        # Tune's integer upper bounds are exclusive; YAML bounds are inclusive, as people read them.
        return (tune.lograndint if spec.get("log") else tune.randint)(int(lower), int(upper) + 1)
    if lower >= upper:
        raise ConfigError(f"search space {path}: empty range, lower {lower} >= upper {upper}")
    if kind == "loguniform":
        if lower <= 0:
            raise ConfigError(f"search space {path}: loguniform needs lower > 0, got {lower}")
        return tune.loguniform(lower, upper)
    return tune.uniform(lower, upper)


def build_search_space(space: dict, base_config: dict) -> dict:
    """Validate `space` against the config it will override and return nested Tune domains."""
    domains: dict = {}
    for path, spec in flatten(space).items():
        try:
            _get(base_config, path)
        except KeyError:
            raise ConfigError(f"search space {path}: no such config key to search over") from None
        for prefix, (key, value) in REQUIRES.items():
            if path.startswith(prefix + ".") and _get(base_config, key) != value:
                raise ConfigError(f"search space {path} only applies when {key}={value}")
        node = domains
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = _domain(path, spec)
    return domains


def apply_overrides(base_config: dict, sampled: dict) -> dict:
    """The base config with the sampled values (nested like the config) written in."""
    config = copy.deepcopy(base_config)

    def merge(target: dict, updates: dict, prefix: str):
        for key, value in updates.items():
            if isinstance(value, dict) and isinstance(target.get(key), dict):
                merge(target[key], value, f"{prefix}{key}.")
            elif key in target:
                target[key] = value
            else:
                raise ConfigError(f"sampled value for unknown config key {prefix}{key}")

    merge(config, sampled, "")
    return config


def flatten_values(nested: dict, prefix: str = "") -> dict[str, Any]:
    """{"trainer": {"learning_rate": 1e-4}} -> {"trainer.learning_rate": 1e-4}, for tables."""
    flat = {}
    for key, value in nested.items():
        if isinstance(value, dict):
            flat.update(flatten_values(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_points(points: list, space: dict) -> list[dict]:
    """Configurations to try first (known-good settings, or a baseline): nested like the space,
    each setting every dimension. Returned flattened with "/" (the names OptunaSearch uses)."""
    dims = flatten(space)
    flat_points = []
    for i, point in enumerate(points):
        values = flatten_values(point) if isinstance(point, dict) else None
        if values is None:
            raise ConfigError(f"sweep.points_to_evaluate[{i}] must be a mapping like the search space")
        if unknown := set(values) - set(dims):
            raise ConfigError(f"sweep.points_to_evaluate[{i}] sets {sorted(unknown)}, which are not search dimensions")
        if missing := set(dims) - set(values):
            raise ConfigError(f"sweep.points_to_evaluate[{i}] must set every search dimension; missing {sorted(missing)}")
        flat_points.append({path.replace(".", "/"): value for path, value in values.items()})
    return flat_points
