"""Golden trajectories: a few RL steps of the tiny model, with their numbers pinned.

Each configuration below is a short ``rlvr train`` run (a tiny Llama, a brief SFT warm start
so that rewards vary within groups, then 4 RL steps), driven through the CLI entry point
with a run directory in a temporary folder. ``tests/golden/<cpu vendor>/<name>.json`` records, for every
RL step, the metrics the loop writes to ``metrics.jsonl`` (loss, grad norm, reward, KL,
clip fraction, ...), plus a sha256 of the SFT and of the final weights.
``tests/test_golden.py`` reruns the same configurations and compares.

When to regenerate
------------------
Only when a change is *meant* to change the numbers: a new default, a fixed bug in a loss
or an estimator, a different seed stream, a new sampling kernel whose results differ in the
last bits. Then run ::

    python tests/golden/regenerate.py            # every configuration
    python tests/golden/regenerate.py grpo_kl    # or some of them

and say in the commit message why the numbers moved (the diff of the JSON files shows which
metrics moved, from which step on).

Never regenerate to make a refactor pass. Moving code into roles (Sampler / Learner /
Reference), renaming modules or splitting functions must leave every number here as it
is, bit for bit on the machine that recorded them: that is what these files are for. If
``test_golden`` fails after such a change, the change altered the math, the order of
random draws or the order of floating-point operations; find out which before touching
these files.

What the test compares: the recording of this machine's CPU vendor (``GenuineIntel``,
``AuthenticAMD``: MKL and oneDNN take other kernels on each, whose last-bit differences the
150-step SFT warm start amplifies to ~1e-4 in its loss and up to a few percent in an RL
step's gradient norm, measured), each pinned metric within a relative tolerance of 1e-5
(plus 1e-6 absolute, for sums of O(1) terms that cancel, such as a GRPO loss); the weight
hashes exactly, where torch's version and the CPU's vector capability match too. On a CPU
vendor with no recording the test is skipped and says how to record one (on a machine
where the other recordings still pass).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

import rlvr  # noqa: F401  (before torch, as the CLI imports them: rlvr sets OpenMP's spin policy)
import torch

GOLDEN_DIR = Path(__file__).resolve().parent
STEPS = 4

# A run small enough for about a second on one core that still has a learning signal: a
# 1-layer, 32-wide model warmed up for 150 SFT steps on one-digit addition gets some answers
# right and most in the right format, so a format reward (0.2) plus correctness gives groups
# with unequal rewards: non-zero advantages, losses and gradients from step 1 on.
BASE = [
    "seed=0", "device=cpu", "threads=1",
    "model.hidden_size=32", "model.num_layers=1", "model.num_heads=2", "model.intermediate_size=64",
    "task.name=addition", "task.params={min_digits: 1, max_digits: 1}",
    "reward.components={correctness: 1.0, format: 0.2}",
    "sft.steps=150", "sft.batch_size=16", "sft.lr=0.01", "sft.warmup_steps=0",
    f"rl.steps={STEPS}", "rl.prompts_per_step=4", "rl.samples_per_prompt=4", "rl.mini_batches=2",
    "rl.micro_batch_size=4", "rollout.max_new_tokens=16",
    "eval.problems=8", "eval.samples=0", "eval.every=0", "checkpoint.every=1000",
    "logging.progress=false", "logging.samples_per_step=0",
]

# name -> (what it covers, overrides on top of BASE)
CONFIGS: dict[str, tuple[str, list[str]]] = {
    "grpo": ("the default recipe's algorithm: GRPO advantages, PPO-clip 0.2, token-mean loss, no KL; "
             "two mini-batches of two micro-batches each", []),
    "grpo_kl": ("GRPO with a k3 KL term to the frozen SFT model in the loss (beta = 0.1)",
                ["algorithm.kl.coef=0.1", "algorithm.kl.estimator=k3", "algorithm.kl.placement=loss"]),
    "dr_grpo": ("Dr. GRPO: no std division, constant length normaliser (seq_mean_token_sum_norm)",
                ["algorithm.advantage=dr_grpo", "algorithm.loss_agg=seq_mean_token_sum_norm"]),
    "dapo": ("DAPO: clip-higher 0.28, token-level loss, dynamic sampling, soft overlong punishment",
             ["algorithm.clip_high=0.28", "algorithm.loss_agg=token_mean", "data.filter=dynamic",
              "data.max_rounds=2", "reward.shaping=[{name: overlong, params: {buffer: 4}}]"]),
    "tool_python": ("multi-turn tool use: the python environment runs the policy's <code> calls in the "
                    "sandbox, observations are masked from the loss (multiplication, SimpleTIR void-turn filter)",
                    ["task.name=multiplication", "task.params={min_digits: 1, max_digits: 2, tool_demo_rate: 0.7}",
                     "sft.steps=100", "rollout.max_new_tokens=72", "rollout.environment.name=python",
                     "rollout.environment.params={tools: optional, max_output_chars: 40, wall_time_s: 5.0, "
                     "memory_mb: 256}",
                     "rollout.environment.max_turns=3", "rollout.environment.filter_void_turns=true"]),
}

# The metrics pinned per RL step, where the loop records them (a configuration pins those
# its records hold). Timings and throughput are left out: they are not deterministic.
METRICS = (
    "reward_mean", "reward_std", "accuracy", "response_length", "truncated_frac", "zero_variance_groups",
    "reward/shaping", "filter_kept_frac", "rollout_rounds",
    "loss", "grad_norm", "entropy", "clip_frac", "ratio_mean", "approx_kl", "kl", "kl_rollout",
    "turns", "tool_calls", "tool_error_rate", "observation_token_frac",
)
RTOL, ATOL = 1e-5, 1e-6
REGENERATE = "regenerate with `python tests/golden/regenerate.py` only if the change is intended"


def find_metric(record: dict[str, Any], key: str) -> float | None:
    """``record[key]``, or the one value whose key is ``key`` under a namespace
    (``loss/grad_norm`` for ``grad_norm``), so grouping metrics into namespaces does not
    force a regeneration; None when absent."""
    if key in record:
        return record[key]
    found = [name for name in record if name.endswith("/" + key)]
    if len(found) > 1:
        raise KeyError(f"metric {key!r} is ambiguous in this record: {found}")
    return record[found[0]] if found else None


def weights_sha256(checkpoint: Path) -> str:
    """sha256 over the checkpoint's tensors (name, dtype, shape, bytes) in name order: equal
    exactly when the weights are, whatever the file layout or metadata."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(checkpoint, local_files_only=True)
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}:".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def cpu_vendor() -> str:
    """``vendor_id`` of /proc/cpuinfo (GenuineIntel, AuthenticAMD), else the platform's name."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("vendor_id"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def golden_dir() -> Path:
    """Where this machine's recordings live."""
    return GOLDEN_DIR / cpu_vendor()


def environment() -> dict[str, str]:
    """Where bit-exact weights can be expected to repeat."""
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "machine": platform.machine(), "cpu_vendor": cpu_vendor()}


def run_config(name: str, workdir: Path) -> dict[str, Any]:
    """Run configuration ``name`` through ``rlvr train`` in ``workdir``; its golden record."""
    from rlvr.cli import main

    overrides = [*BASE, *CONFIGS[name][1]]
    run_dir = Path(workdir) / name
    with contextlib.redirect_stdout(io.StringIO()) as out:
        code = main(["train", "--output-dir", str(run_dir), *overrides])
    if code != 0:
        raise RuntimeError(f"golden run {name!r} exited with {code}: {out.getvalue()}")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rl = [r for r in records if r["stage"] == "rl"]
    sft = [r for r in records if r["stage"] == "sft"]
    steps = []
    for record in rl:
        step: dict[str, Any] = {"step": record["step"]}
        for key in METRICS:
            value = find_metric(record, key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                step[key] = float(value)
        steps.append(step)
    summary = json.loads((run_dir / "summary.json").read_text())
    return {
        "config": name,
        "covers": CONFIGS[name][0],
        "overrides": overrides,
        "recorded_with": environment(),
        "sft_final_loss": float(find_metric(sft[-1], "loss")),
        "steps": steps,
        "sft_weights_sha256": weights_sha256(run_dir / "checkpoints" / "sft-final"),
        "final_weights_sha256": weights_sha256(Path(summary["final_checkpoint"])),
    }


def compare(golden: dict[str, Any], got: dict[str, Any]) -> list[str]:
    """Every difference between a pinned record and a fresh one, one line each."""
    name = golden["config"]
    problems = []
    if golden["overrides"] != got["overrides"]:
        problems.append(f"{name}: the configuration changed since the golden file was written "
                        f"(pinned overrides {golden['overrides']}, now {got['overrides']})")
        return problems
    if len(golden["steps"]) != len(got["steps"]):
        problems.append(f"{name}: {len(got['steps'])} RL steps recorded, {len(golden['steps'])} pinned")
    pairs = [("SFT", "sft_final_loss", golden["sft_final_loss"], got["sft_final_loss"])]
    for pinned, fresh in zip(golden["steps"], got["steps"]):
        for key, value in pinned.items():
            if key != "step":
                pairs.append((f"step {pinned['step']}", key, value, fresh.get(key)))
    for where, key, value, fresh in pairs:
        if fresh is None:
            problems.append(f"{name} {where}: metric {key!r} is no longer recorded (pinned {value!r})")
        elif not math.isclose(fresh, value, rel_tol=RTOL, abs_tol=ATOL):
            problems.append(f"{name} {where}: {key} = {fresh!r}, pinned {value!r} "
                            f"(relative difference {abs(fresh - value) / max(abs(value), 1e-30):.2e})")
    if golden["recorded_with"] == got["recorded_with"]:
        for key in ("sft_weights_sha256", "final_weights_sha256"):
            if golden[key] != got[key]:
                problems.append(f"{name}: {key} differs on the machine kind that recorded it "
                                f"({golden['recorded_with']}): the weights are no longer bit-identical")
    return problems


def main(names: list[str]) -> int:
    unknown = sorted(set(names) - set(CONFIGS))
    if unknown:
        print(f"unknown configuration(s) {unknown}; known: {sorted(CONFIGS)}", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="rlvr-golden-") as workdir:
        for name in names or list(CONFIGS):
            record = run_config(name, Path(workdir))
            path = golden_dir() / f"{name}.json"
            path.parent.mkdir(exist_ok=True)
            old = json.loads(path.read_text()) if path.exists() else None
            path.write_text(json.dumps(record, indent=1) + "\n")
            moved = compare(old, record) if old else ["new file"]
            print(f"{path.relative_to(GOLDEN_DIR)}: " + ("unchanged" if not moved else f"{len(moved)} change(s)"))
            for line in moved[:10]:
                print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
