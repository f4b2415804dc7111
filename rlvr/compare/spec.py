"""What ``rlvr compare`` runs: arms (each a recipe plus overrides), seeds, one budget.

Arms come either as recipe files on the command line (one arm each, named by the file's stem)
or from one comparison file, which names them as overrides of a base recipe, so that a
paper's ablation table is one file::

    # studies/spurious_rewards.yaml
    base: default              # the recipe every arm starts from (a name or a file)
    seeds: 3                   # 0, 1, 2 (or a list)
    budget: steps=60           # steps | samples | tokens | seconds = N, equal for every arm
    ks: [1, 8]                 # the pass@k / maj@k columns (eval.samples must reach them)
    set: {eval.problems: 200}  # overrides for every arm
    arms:
      correct: {}
      random: {reward.shaping: [{name: random_reward}]}
      format_only: {recipe: r1_format, reward.components: {think_answer_format: 1.0}}

The command line's ``--seeds``, ``--budget``, ``--ks`` replace the file's; its ``--set`` come
after the file's. Every mistake is a one-line ``ConfigError`` naming the file and the key,
found before any run starts.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rlvr.typed_yaml import ConfigError

BUDGET_UNITS = ("steps", "samples", "tokens", "seconds")
STEP_CAP = 1_000_000  # rl.steps under a samples, tokens or seconds budget: the budget ends the run
FILE_KEYS = ("base", "seeds", "budget", "ks", "set", "arms")


@dataclass
class Arm:
    name: str
    recipe: str | None  # a recipe name or file; None: the comparison's base (or the defaults)
    overrides: list[str] = field(default_factory=list)  # dotted key=value, applied after the recipe


@dataclass
class Comparison:
    arms: list[Arm]
    seeds: list[int]
    budget: tuple[str, float]
    base: str | None = None
    overrides: list[str] = field(default_factory=list)  # every arm's, before its own
    ks: list[int] = field(default_factory=list)
    source: str = "command line"

    def describe(self) -> dict[str, Any]:
        """The comparison as JSON (``comparison.json`` in the output directory)."""
        return {"arms": [asdict(a) for a in self.arms], "seeds": self.seeds, "budget": list(self.budget),
                "base": self.base, "overrides": self.overrides, "ks": self.ks}

    def run_name(self, arm: Arm, seed: int) -> str:
        return f"{arm.name}-seed{seed}"

    def train_args(self, arm: Arm, seed: int) -> list[str]:
        """``rlvr train`` arguments of one arm and seed (without the output directory)."""
        recipe = arm.recipe or self.base
        return [*(["--config", recipe] if recipe else []), *self.overrides, *arm.overrides, f"seed={seed}",
                *budget_overrides(self.budget)]


def budget_overrides(budget: tuple[str, float]) -> list[str]:
    """The config that spends ``budget`` (unit, amount) and no more: rl.steps, or a cap on
    generated samples / tokens / seconds with rl.steps out of the way."""
    unit, amount = budget
    if unit == "steps":
        return [f"rl.steps={int(amount)}"]
    key = {"samples": "rl.max_samples", "tokens": "rl.max_tokens", "seconds": "rl.max_seconds"}[unit]
    value = amount if unit == "seconds" else int(amount)
    return [f"rl.steps={STEP_CAP}", f"{key}={value}"]


def parse_budget(text: str, where: str = "--budget") -> tuple[str, float]:
    """``steps=60`` -> ("steps", 60.0); a one-line ConfigError for anything else."""
    unit, sep, amount = str(text).partition("=")
    unit = unit.strip()
    if not sep or unit not in BUDGET_UNITS:
        raise ConfigError(f"{where}: {text!r} is not UNIT=N with UNIT one of {', '.join(BUDGET_UNITS)} "
                          "(e.g. steps=60, samples=20000)")
    try:
        value = float(amount)
    except ValueError:
        raise ConfigError(f"{where}: {amount!r} is not a number") from None
    if not (value > 0 and value < float("inf")) or (unit != "seconds" and value != int(value)):
        raise ConfigError(f"{where}: {unit} must be a positive {'number' if unit == 'seconds' else 'whole number'}, "
                          f"got {amount}")
    return unit, value


def _flat(mapping: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested or dotted keys, flattened to (dotted key, value); lists and the values of
    ``*.params``/``components`` mappings stay whole (they are one field's value)."""
    out = []
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        whole = dotted.endswith(("params", "components")) or "." in str(key)
        if isinstance(value, dict) and value and not whole:
            out += _flat(value, dotted + ".")
        else:
            out.append((dotted, value))
    return out


def override(key: str, value: Any) -> str:
    """A ``key=value`` override whose value YAML reads back as ``value`` (JSON is YAML flow)."""
    return f"{key}={json.dumps(value)}"


def _seeds(value: Any, where: str) -> list[int]:
    if isinstance(value, bool):
        raise ConfigError(f"{where}: seeds must be a count or a list of integers, got {value!r}")
    if isinstance(value, int):
        if value < 1:
            raise ConfigError(f"{where}: seeds must be >= 1, got {value}")
        return list(range(value))
    if isinstance(value, list) and value and all(isinstance(s, int) and not isinstance(s, bool) for s in value):
        if len(set(value)) != len(value):
            raise ConfigError(f"{where}: seeds repeat: {value}")
        return list(value)
    raise ConfigError(f"{where}: seeds must be a count or a list of integers, got {value!r}")


def _ks(value: Any, where: str) -> list[int]:
    if not (isinstance(value, list) and all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in value)):
        raise ConfigError(f"{where}: ks must be a list of positive integers, got {value!r}")
    return sorted(set(value))


def load_comparison(paths: list[str], *, seeds: Any = None, budget: str | None = None, sets: list[str] = (),
                    ks: list[int] | None = None) -> Comparison:
    """The comparison that the command line names: one comparison file (it has ``arms``), or
    recipe files, one arm each; the flags replace or extend the file's values."""
    if not paths:
        raise ConfigError("rlvr compare needs a comparison file or at least two arm recipes")
    documents = []
    for path in paths:
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"{path}: no such file")
        try:
            documents.append(yaml.safe_load(file.read_text()) or {})
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            line = f" line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{path}{line}: not valid YAML ({getattr(err, 'problem', err)})") from None
    is_comparison = [isinstance(d, dict) and "arms" in d for d in documents]
    if any(is_comparison):
        if len(paths) != 1:
            raise ConfigError(f"{paths[is_comparison.index(True)]}: a comparison file (it has arms:) comes alone")
        comparison = _from_file(paths[0], documents[0])
    else:
        if len(paths) < 2:
            raise ConfigError(f"{paths[0]}: one recipe is one arm; give two or more, or a comparison file with arms:")
        names = [Path(p).stem for p in paths]
        if len(set(names)) != len(names):
            raise ConfigError(f"arm names (the files' stems) repeat: {', '.join(names)}")
        comparison = Comparison([Arm(name, path) for name, path in zip(names, paths)], [0, 1, 2], ("steps", 60.0))
    if seeds is not None:
        comparison.seeds = _seeds(seeds, "--seeds")
    if budget is not None:
        comparison.budget = parse_budget(budget)
    if ks is not None:
        comparison.ks = _ks(list(ks), "--ks")
    comparison.overrides += list(sets)
    return comparison


def _from_file(path: str, document: Any) -> Comparison:
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: a comparison file is a mapping with arms:")
    unknown = [key for key in document if key not in FILE_KEYS]
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r} (a comparison file has {', '.join(FILE_KEYS)})")
    arms_doc = document["arms"]
    if not isinstance(arms_doc, dict) or len(arms_doc) < 2:
        raise ConfigError(f"{path}: arms must map two or more arm names to their overrides")
    arms = []
    for name, spec in arms_doc.items():
        where = f"{path}: arms.{name}"
        if not isinstance(name, str) or not name.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"{path}: arm name {name!r} must be letters, digits, _ or - (it names run directories)")
        spec = {} if spec is None else spec
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: an arm is a mapping of overrides (and optionally recipe:), got {spec!r}")
        spec = dict(spec)
        recipe = spec.pop("recipe", None)
        if recipe is not None and not isinstance(recipe, str):
            raise ConfigError(f"{where}.recipe must be a recipe name or file, got {recipe!r}")
        arms.append(Arm(name, recipe, [override(k, v) for k, v in _flat(spec)]))
    sets = document.get("set") or {}
    if not isinstance(sets, dict):
        raise ConfigError(f"{path}: set must map dotted keys to values, got {sets!r}")
    base = document.get("base")
    if base is not None and not isinstance(base, str):
        raise ConfigError(f"{path}: base must be a recipe name or file, got {base!r}")
    if base is not None and not Path(base).is_file():  # a file next to the comparison file
        sibling = Path(path).parent / base
        base = str(sibling) if sibling.is_file() else base
    arms = [Arm(a.name, str(Path(path).parent / a.recipe) if a.recipe and (Path(path).parent / a.recipe).is_file()
                else a.recipe, a.overrides) for a in arms]
    return Comparison(arms, _seeds(document.get("seeds", 3), f"{path}: seeds"),
                      parse_budget(document.get("budget", "steps=60"), f"{path}: budget"), base,
                      [override(k, v) for k, v in _flat(sets)], _ks(document.get("ks", []), f"{path}: ks"), path)
