"""model.path and `rlvr eval` take Hugging Face hub ids, resolved through the local cache
(nothing is downloaded in tests: HF_HUB_OFFLINE=1 and a cache laid out in tmp_path)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlvr.cli import main
from rlvr.models import build_char_tokenizer, build_tiny_model
from rlvr.models.hub import is_hub_id, resolve_model_path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _cache_with(cache: Path, repo_id: str) -> Path:
    """A hub cache holding ``repo_id`` as transformers leaves it after a download:
    refs/main naming a commit, the files under snapshots/<commit>."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    tokenizer = build_char_tokenizer()
    build_tiny_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                     max_position_embeddings=128, seed=3).save_pretrained(snapshot)
    tokenizer.save_pretrained(snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return snapshot


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_hub_id_shape():
    assert is_hub_id("Qwen/Qwen2.5-1.5B-Instruct") and is_hub_id("org/name_v1.2")
    assert not is_hub_id("/abs/path") and not is_hub_id("./rel/dir") and not is_hub_id("a/b/c")
    assert not is_hub_id("plainname") and not is_hub_id("~/models/x")


def test_a_cached_hub_id_resolves_to_its_snapshot(offline_cache):
    snapshot = _cache_with(offline_cache, "tiny-org/tiny-llama")
    assert resolve_model_path("tiny-org/tiny-llama") == snapshot
    assert resolve_model_path(str(snapshot)) == snapshot  # a local directory is itself


def test_a_hub_id_missing_offline_is_one_line_before_any_work(offline_cache, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--output-dir", str(run), "model.path=nobody/not-cached", "stages=[rl]"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("config error: ") and "model.path: 'nobody/not-cached' is neither " \
        "a local directory nor in the Hugging Face cache" in err[0] and "HF_HUB_OFFLINE is set" in err[0], err
    assert not run.exists()


def test_rl_and_eval_from_a_cached_hub_id(offline_cache, tmp_path, tiny_overrides, capsys):
    _cache_with(offline_cache, "tiny-org/tiny-llama")
    run = tmp_path / "run"
    capsys.readouterr()
    assert main(["train", "--output-dir", str(run), *tiny_overrides, "model.path=tiny-org/tiny-llama",
                 "stages=[rl]", "rl.steps=2"]) == 0
    assert (run / "checkpoints" / "final" / "model.safetensors").is_file()
    assert main(["eval", "tiny-org/tiny-llama", "--output-dir", str(tmp_path / "ev"), "--n", "2",
                 "eval.problems=4", "rollout.max_new_tokens=8", "--json"]) == 0
    assert '"label": "tiny-llama"' in capsys.readouterr().out
