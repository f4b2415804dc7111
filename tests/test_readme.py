"""Every code block of the README runs as written, in a fresh shell.

Each block runs as a new ``bash`` process in an empty temporary directory, with a clean
environment (the virtual environment's ``bin`` on ``PATH``, as a user who activated it, and a
fresh ``HOME``), never in the repository. A Python block whose first line is
``# FILE  -> COMMAND`` is written to ``FILE`` in that directory and ``COMMAND`` is run there.
A block the CPU machine cannot run says why in a ``<!-- readme-test: KIND (reason) -->``
comment on the line before its fence: ``vllm`` blocks run in CI's vLLM environment (this file
is in its test list), ``gpu`` blocks only where CUDA is present. ``pip install`` lines are
the one exception to running as written: they would re-point this environment's editable
install, and ``.ci/run`` runs exactly those lines on a fresh checkout (checked below). Blocks
without a language, or ``text``, are output shown to the reader.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
RUNNABLE = {"bash", "sh", "python"}
KINDS = {"vllm", "gpu"}
FILE_HEADER = re.compile(r"#\s*(\S+\.py)\s+->\s+(.+)$")


@dataclass
class Block:
    line: int  # of the opening fence, 1-based
    language: str
    text: str
    kind: str | None  # from a readme-test comment

    @property
    def name(self) -> str:
        return f"README.md:{self.line}"


def readme_blocks() -> list[Block]:
    lines = README.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        fence = re.match(r"^```(\S*)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        directive = re.match(r"<!-- readme-test: (\w+)", lines[i - 1]) if i else None
        blocks.append(Block(i + 1, fence.group(1), "\n".join(lines[i + 1:end]) + "\n",
                            directive.group(1) if directive else None))
        i = end + 1
    return blocks


def _runnable(kind: str | None) -> list[Block]:
    return [b for b in readme_blocks() if b.language in RUNNABLE and b.kind == kind]


# One warm-start cache for the session's blocks, as one user's machine has one ~/.cache/rlvr:
# the blocks that run the default recipe train its SFT warm start once (rlvr's own cache,
# keyed on everything the warm start depends on), not once per block.
CACHE_DIR = Path(tempfile.mkdtemp(prefix="rlvr-readme-cache-"))
atexit.register(shutil.rmtree, CACHE_DIR, True)


def _fresh_env(home: Path) -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    return {"PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8",
            "VIRTUAL_ENV": str(Path(bin_dir).parent), "TMPDIR": str(home), "RLVR_CACHE_DIR": str(CACHE_DIR)}


def run_block(block: Block, workdir: Path, timeout_s: float = 600) -> subprocess.CompletedProcess:
    if block.language == "python":
        header = FILE_HEADER.match(block.text.splitlines()[0])
        assert header, f"{block.name}: a Python block starts with '# FILE  -> COMMAND' saying how it runs"
        (workdir / header.group(1)).write_text(block.text)
        script = header.group(2)
    else:
        script = "\n".join(line for line in block.text.splitlines() if not line.startswith("pip install "))
    try:
        return subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=workdir, env=_fresh_env(workdir),
                              capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{block.name} did not finish in {timeout_s:.0f} s: {exc.stdout!r} {exc.stderr!r}")


def _check(block: Block, result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, (f"{block.name} failed with exit {result.returncode}:\n"
                                    f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


def test_every_block_is_run_or_says_why_not():
    blocks = [b for b in readme_blocks() if b.language]
    assert {b.language for b in blocks} <= RUNNABLE | {"text"}, [b.name for b in blocks if b.language not in RUNNABLE]
    assert {b.kind for b in blocks} <= KINDS | {None}
    assert len(_runnable(None)) >= 4  # the main CI runs most of them


def test_pip_install_lines_are_the_ones_ci_runs():
    ci = (REPO / ".ci" / "run").read_text()
    lines = [line.split("#")[0].strip() for b in readme_blocks() if b.language in RUNNABLE
             for line in b.text.splitlines() if line.startswith("pip install ")]
    assert lines, "the README says how to install"
    for line in lines:
        assert line in ci or line.replace("pip install", "pip install --quiet") in ci, line


@pytest.mark.parametrize("block", _runnable(None), ids=lambda b: b.name)
def test_block_runs_as_written(block, tmp_path):
    result = run_block(block, tmp_path)
    _check(block, result)
    for line in result.stdout.splitlines():  # a run's closing line states a real gain, not just exit 0
        got = re.match(r"held-out accuracy: ([\d.]+)% \(after SFT\) -> ([\d.]+)% \(after RL\)", line)
        if got and "task.name" not in block.text:  # the default recipe: the headline the README promises
            # (tests/test_learning.py measures the same run in-process; it is marked slow, this is CI's)
            assert float(got.group(1)) < 60 and float(got.group(2)) >= float(got.group(1)) + 30, line


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM blocks run in CI's vLLM environment")
@pytest.mark.parametrize("block", _runnable("vllm"), ids=lambda b: b.name)
def test_vllm_block_runs_as_written(block, tmp_path):
    _check(block, run_block(block, tmp_path))


@pytest.mark.gpu
@pytest.mark.parametrize("block", _runnable("gpu"), ids=lambda b: b.name)
def test_gpu_block_runs_as_written(block, tmp_path):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a GPU")
    _check(block, run_block(block, tmp_path))


def test_runner_catches_a_failing_block(tmp_path):
    """The runner itself: a block that fails, one that writes a file and one whose command
    needs that file, all in a fresh directory with a clean environment."""
    bad = Block(1, "bash", "true\nfalse\necho never\n", None)
    result = run_block(bad, tmp_path)
    assert result.returncode == 1 and "never" not in result.stdout
    leaked = Block(1, "bash", 'test -z "${PYTEST_CURRENT_TEST:-}" && pwd\n', None)
    out = run_block(leaked, tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == str(tmp_path)
    module = Block(1, "python", "# hello_mod.py  -> python -c 'import hello_mod; print(hello_mod.X)'\nX = 41 + 1\n", None)
    assert run_block(module, tmp_path).stdout.strip() == "42"
    assert run_block(Block(1, "bash", "command -v rlvr\n", None), tmp_path).stdout.startswith(
        str(Path(sys.executable).parent))
    assert os.environ.get("PYTEST_CURRENT_TEST")  # set here, and not seen by the block above
