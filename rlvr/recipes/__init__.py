"""The built-in recipes: YAML configs that reproduce papers in miniature on the default task
(``default.yaml`` is the dump of the ``RunConfig`` defaults). They ship inside the package, so
``rlvr train --config dapo`` works from an installed wheel; the repository's ``recipes/`` is a
link to this directory."""

from __future__ import annotations

from pathlib import Path

RECIPES_DIR = Path(__file__).resolve().parent


def recipe_names() -> list[str]:
    """Every built-in recipe's name (its file name without ``.yaml``), sorted."""
    return sorted(path.stem for path in RECIPES_DIR.glob("*.yaml"))


def recipe_path(name: str) -> Path | None:
    """The built-in recipe called ``name`` (``dapo`` or ``dapo.yaml``), or None."""
    stem = name[: -len(".yaml")] if name.endswith(".yaml") else name
    if "/" in stem or "\\" in stem or stem.startswith("."):
        return None
    path = RECIPES_DIR / f"{stem}.yaml"
    return path if path.is_file() else None


def recipe_summary(path: Path) -> str:
    """The recipe's leading comment (what it reproduces and what to expect), as one line."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return " ".join(" ".join(lines).split())


def recipe_config(spec: str | None) -> tuple[str | None, str]:
    """``resolve_config`` for a run: None is the default recipe (no file); a spec that names
    nothing is a ``ConfigError``, the one-line mistake of a user."""
    if spec is None:
        return None, "default"
    from rlvr.typed_yaml import ConfigError

    try:
        return resolve_config(spec)
    except FileNotFoundError as err:
        raise ConfigError(str(err)) from None


def resolve_config(spec: str) -> tuple[str, str]:
    """``--config``'s value as (path to read, name for the run dir): an existing file as it
    is, else a built-in recipe's name; a ``FileNotFoundError`` listing the recipes otherwise."""
    given = Path(spec)
    if given.is_file():
        return str(given), given.stem
    builtin = recipe_path(spec)
    if builtin is not None:
        return str(builtin), builtin.stem
    raise FileNotFoundError(f"config {spec!r}: no such file and no built-in recipe of that name; built-in "
                            f"recipes: {', '.join(recipe_names())}")
