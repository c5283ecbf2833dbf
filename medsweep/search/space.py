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

from medsweep.config import FINETUNE_METHODS, ConfigError

# type -> (required keys, optional keys)
SPEC_KEYS = {
    "loguniform": ({"lower", "upper"}, set()),
    "uniform": ({"lower", "upper"}, set()),
    "int": ({"lower", "upper"}, {"log"}),
    "choice": ({"values"}, set()),
}
# Dimensions that only make sense under one setting of another key: the LoRA settings only for a LoRA
# fine-tune. When that key is itself a search dimension (model.finetune: {type: choice, values: [full,
# lora]}), the space is conditional: the dependent dimensions are drawn only for the trials that get
# the setting (Optuna define-by-run, see define_by_run), and are absent (empty in the leaderboard and
# report) for the others.
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


def get_path(config: dict, path: str) -> Any:
    """The value at a dotted config key ("trainer.learning_rate"); KeyError(path) if absent."""
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


def _condition(path: str) -> tuple[str, Any] | None:
    """(key, value) a dimension depends on, or None."""
    for prefix, condition in REQUIRES.items():
        if path.startswith(prefix + "."):
            return condition
    return None


def is_conditional(space: dict) -> bool:
    """Whether some dimension is drawn only for some trials (a searched key that others depend on)."""
    leaves = flatten(space)
    return any(key in leaves for key, _ in REQUIRES.values())


def build_search_space(space: dict, base_config: dict) -> dict:
    """Validate `space` against the config it will override and return nested Tune domains."""
    domains: dict = {}
    leaves = flatten(space)
    for path, spec in leaves.items():
        try:
            get_path(base_config, path)
        except KeyError:
            raise ConfigError(f"search space {path}: no such config key to search over") from None
        condition = _condition(path)
        if condition is not None:
            key, value = condition
            searched = leaves.get(key)
            if searched is not None:
                if searched.get("type") != "choice" or value not in (searched.get("values") or []):
                    raise ConfigError(f"search space {path} only applies when {key}={value}, "
                                      f"and the {key} dimension never draws {value}")
            elif get_path(base_config, key) != value:
                raise ConfigError(f"search space {path} only applies when {key}={value}")
    finetune = leaves.get("model.finetune")
    if finetune is not None and finetune.get("type") == "choice" and not set(finetune.get("values") or []) <= set(FINETUNE_METHODS):
        raise ConfigError(f"search space model.finetune: values must be among {FINETUNE_METHODS}, got {finetune['values']}")
    if is_conditional(space) and base_config["sweep"]["searcher"] != "optuna":
        raise ConfigError("a search space that searches model.finetune draws the LoRA dimensions only for LoRA "
                          "trials, which needs sweep.searcher=optuna (define-by-run)")
    for path, spec in leaves.items():
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


def active_dimensions(space: dict, values: dict[str, Any]) -> dict[str, dict]:
    """The dimensions a configuration draws: all, less those whose condition it does not meet
    (a full fine-tune draws no LoRA dimension). `values`: flat, "trainer.learning_rate" -> value."""
    leaves = flatten(space)
    active = {}
    for path, spec in leaves.items():
        condition = _condition(path)
        if condition is not None and condition[0] in leaves and values.get(condition[0]) != condition[1]:
            continue
        active[path] = spec
    return active


class DefineByRun:
    """A conditional space as an Optuna define-by-run function (Ray's OptunaSearch(space=callable)).
    Each trial suggests the unconditional dimensions, then the conditional ones whose condition its own
    draw meets, so TPE models the LoRA settings on LoRA trials only. Names are the flattened paths with
    "/" (what OptunaSearch unflattens and points_to_evaluate use). A class, not a closure: Ray pickles
    the searcher with the experiment state, to resume it."""

    def __init__(self, space: dict):
        self.leaves = flatten(space)
        for path, spec in self.leaves.items():
            _domain(path, spec)  # the same checks as the unconditional space
        # Condition keys first, so that a trial knows its setting before it reaches the dependent dimensions.
        keys = {key for key, _ in REQUIRES.values()}
        self.order = sorted(self.leaves, key=lambda path: (_condition(path) is not None, path not in keys))

    def __call__(self, trial) -> None:
        drawn: dict[str, Any] = {}
        for path in self.order:
            condition = _condition(path)
            if condition is not None and condition[0] in self.leaves and drawn.get(condition[0]) != condition[1]:
                continue
            spec, name = self.leaves[path], path.replace(".", "/")
            kind = spec["type"]
            if kind == "choice":
                drawn[path] = trial.suggest_categorical(name, list(spec["values"]))
            elif kind == "int":
                drawn[path] = trial.suggest_int(name, int(spec["lower"]), int(spec["upper"]), log=bool(spec.get("log")))
            else:
                drawn[path] = trial.suggest_float(name, spec["lower"], spec["upper"], log=kind == "loguniform")


def define_by_run(space: dict) -> DefineByRun | None:
    """The space as a define-by-run function when it is conditional, else None (plain Tune domains)."""
    return DefineByRun(space) if is_conditional(space) else None


def contains(spec: dict, value: Any) -> bool:
    """Whether a dimension can draw `value` (bounds inclusive)."""
    if spec["type"] == "choice":
        return value in spec["values"]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if spec["type"] == "int" and int(value) != value:
        return False
    return spec["lower"] <= value <= spec["upper"]


def base_point(space: dict, config: dict) -> tuple[dict | None, str]:
    """The configuration a sweep would train without searching: each dimension's value in the base
    config (the sweep file and the trainer defaults). Returns (point nested like the space, "") or
    (None, why not) when a base value lies outside its dimension, so the sweep cannot try it."""
    values = {path: get_path(config, path) for path in flatten(space)}
    active = active_dimensions(space, values)
    outside = [f"{path}={values[path]!r}" for path, spec in active.items() if not contains(spec, values[path])]
    if outside:
        return None, f"{', '.join(outside)} outside the search space"
    point: dict = {}
    for path in active:
        node = point
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = values[path]
    return point, ""


def check_points(points: list, space: dict) -> list[dict]:
    """Configurations to try first (known-good settings, or a baseline): nested like the space,
    each setting every dimension it draws (a full fine-tune sets no LoRA dimension). Returned
    flattened with "/" (the names OptunaSearch uses)."""
    dims = flatten(space)
    flat_points = []
    for i, point in enumerate(points):
        values = flatten_values(point) if isinstance(point, dict) else None
        if values is None:
            raise ConfigError(f"sweep.points_to_evaluate[{i}] must be a mapping like the search space")
        if unknown := set(values) - set(dims):
            raise ConfigError(f"sweep.points_to_evaluate[{i}] sets {sorted(unknown)}, which are not search dimensions")
        active = active_dimensions(space, values)
        if missing := set(active) - set(values):
            raise ConfigError(f"sweep.points_to_evaluate[{i}] must set every search dimension; missing {sorted(missing)}")
        if extra := set(values) - set(active):
            raise ConfigError(f"sweep.points_to_evaluate[{i}] sets {sorted(extra)}, which its own settings never draw")
        flat_points.append({path.replace(".", "/"): value for path, value in values.items()})
    return flat_points


def sweep_points(config: dict) -> tuple[list[dict], str]:
    """What a sweep tries first, flattened with "/": sweep.points_to_evaluate (what the user asked for
    explicitly), then its base configuration (sweep.try_base, unless a base value lies outside the
    space), without repeats. Also returns a note for the console when the base cannot be tried."""
    sweep = config["sweep"]
    space = sweep["search_space"]
    given = check_points(sweep["points_to_evaluate"], space)
    first, note = [], ""
    if space and sweep["try_base"]:
        base, why = base_point(space, config)
        if base is None:
            note = f"the base configuration is not tried first: {why}"
        else:
            first = check_points([base], space)
    flat = []
    for point in given + first:
        if point not in flat:
            flat.append(point)
    return flat, note


class SearchSpace:
    """sweep.search_space as one object: its dimensions, the Ray, Optuna and define-by-run forms,
    and "what range does key X have" for everyone who asks (the budget, ASHA's max_t, the resource
    probe, the leaderboard's columns, edge hints)."""

    def __init__(self, spec: dict | None):
        self.spec = spec or {}
        self.leaves = flatten(self.spec)

    def __bool__(self) -> bool:
        return bool(self.leaves)

    @property
    def names(self) -> list[str]:
        """The dimensions, flattened ("trainer.learning_rate"), sorted: the tables' column order."""
        return sorted(self.leaves)

    @property
    def conditional(self) -> bool:
        return is_conditional(self.spec)

    def range(self, key: str) -> dict | None:
        """The dimension of config key `key` ("trainer.epochs"), or None when it is not searched."""
        return self.leaves.get(key)

    def values(self, key: str) -> list:
        """The values a choice dimension draws ([] for a numeric or unsearched key)."""
        return list((self.range(key) or {}).get("values") or [])

    def extreme(self, key: str, base_config: dict, largest: bool):
        """The largest (or smallest) value config key `key` can take in this sweep: its dimension's
        bound, or the base config's value when it is not searched."""
        spec = self.range(key)
        if spec is None:
            return get_path(base_config, key)
        if spec["type"] == "choice":
            return (max if largest else min)(spec["values"])
        return spec["upper"] if largest else spec["lower"]

    def ray(self, base_config: dict) -> dict:
        """Nested Tune domains, checked against the config they override (build_search_space)."""
        return build_search_space(self.spec, base_config)

    def define_by_run(self) -> "DefineByRun | None":
        return define_by_run(self.spec)

    def optuna(self, base_config: dict) -> dict:
        """Optuna distributions by "a/b" name (what Ray's OptunaSearch and a warm start use)."""
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch.convert_search_space(self.ray(base_config))
