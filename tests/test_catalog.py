"""`rlvr list [category]` and `rlvr describe NAME`; built-in recipes by name (`--config dapo`),
from the package, so an installed wheel has them."""

from __future__ import annotations

import pytest

from rlvr.catalog import CATEGORIES, describe_lines, list_lines
from rlvr.cli import main
from rlvr.config import load_config
from rlvr.recipes import RECIPES_DIR, recipe_names, recipe_path, resolve_config


def test_every_registered_name_is_listed_with_its_own_description():
    lines = list_lines()
    for cat in CATEGORIES:
        for name in cat.registry().names():
            row = next(line for line in lines if line.split()[:1] == [name])
            description = row.split(None, 1)[1]
            assert len(description) > 10 and not description.startswith("Base class"), row
    assert any(line.startswith("  countdown") and "combine the given numbers" in line for line in lines)
    assert "  dapo" in "\n".join(lines)


def test_a_category_lists_only_its_members(capsys):
    assert main(["list", "losses"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("policy losses (algorithm.loss)")
    assert sorted(line.split()[0] for line in out[1:]) == ["cispo", "gspo", "ppo", "reinforce"]
    assert main(["list", "nosuch"]) == 2
    assert "unknown category 'nosuch'" in capsys.readouterr().err


def test_describe_a_task_shows_its_params_with_help():
    text = "\n".join(describe_lines("countdown"))
    assert "countdown: task (task.name" in text
    assert "num_numbers  int = 4  numbers given per problem (>= 3 and <= 6)" in text


def test_describe_a_shaper_and_a_reward_show_their_keywords():
    shaper = "\n".join(describe_lines("overlong"))
    assert "buffer          int = <required>" in shaper and "penalty_factor  float = 1.0" in shaper
    assert "Eq. 13" in shaper  # the formula's docstring, whole
    reward = "\n".join(describe_lines("regex_format"))
    assert "pattern  str = <required>" in reward and "completion" not in reward.split("parameters:")[1]


def test_describe_a_name_that_is_both_an_estimator_and_a_recipe_shows_both(capsys):
    assert main(["describe", "grpo"]) == 0
    out = capsys.readouterr().out
    assert "grpo: advantage estimator (algorithm.advantage)" in out and "grpo: recipe (" in out
    assert main(["describe", "grop"]) == 2
    assert "nothing is called 'grop'; did you mean grpo?" in capsys.readouterr().err


def test_recipes_ship_in_the_package_and_resolve_by_name(tmp_path, monkeypatch):
    assert RECIPES_DIR.parent.name == "rlvr" and "dapo" in recipe_names() and "default" in recipe_names()
    assert recipe_path("dapo.yaml") == recipe_path("dapo") == RECIPES_DIR / "dapo.yaml"
    assert recipe_path("../pyproject") is None
    monkeypatch.chdir(tmp_path)  # far from the repository
    assert resolve_config("dapo") == (str(RECIPES_DIR / "dapo.yaml"), "dapo")
    (tmp_path / "dapo").write_text("rl:\n  steps: 7\n")  # a file of that name wins
    assert resolve_config("dapo") == ("dapo", "dapo")
    with pytest.raises(FileNotFoundError, match="built-in recipes: .*dapo"):
        resolve_config("nosuch")


def test_the_dapo_recipe_is_the_whole_of_dapo():
    config = load_config(recipe_path("dapo"))
    alg = config.algorithm
    assert (alg.loss, alg.clip_low, alg.clip_high, alg.loss_agg, alg.kl.coef) == ("ppo", 0.2, 0.28, "token_mean", 0.0)
    assert (config.data.filter, config.data.filter_metric) == ("dynamic", "correct")
    assert [s.name for s in config.reward.shaping] == ["overlong"] and config.rl.mask_truncated


def test_train_with_a_recipe_name_from_another_directory(tmp_path, monkeypatch, tiny_overrides, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--config", "dapo", "--output-dir", "run", *tiny_overrides, "rl.steps=2"]) == 0
    assert load_config(tmp_path / "run" / "config.yaml").data.filter_metric == "correct"
    assert main(["train", "--config", "nosuch", "--output-dir", "run2"]) == 2
    assert "config 'nosuch': no such file and no built-in recipe" in capsys.readouterr().err
    assert not (tmp_path / "run2").exists()


def test_every_recipe_works_by_name_from_an_installed_wheel(tmp_path):
    """The wheel carries the recipes: installed apart from the repository, `--config NAME`
    finds each one and it passes the start-up checks."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "dist"), str(repo)], check=True, timeout=300, capture_output=True)
    wheel = next((tmp_path / "dist").glob("rlvr-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(tmp_path / "site"),
                    str(wheel)], check=True, timeout=300, capture_output=True)
    code = ("import rlvr, sys; from rlvr.recipes import recipe_config, recipe_names; "
            "from rlvr.config import load_config; from rlvr.training.pipeline import check_names; "
            "assert rlvr.__file__.startswith(sys.argv[1]), rlvr.__file__; names = recipe_names(); "
            "[check_names(load_config(recipe_config(n)[0]), n) for n in names]; print(' '.join(names))")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "site")], capture_output=True, text=True,
                          cwd=tmp_path, timeout=600, env={**__import__("os").environ,
                                                          "PYTHONPATH": str(tmp_path / "site")})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == recipe_names() and "dapo" in done.stdout
