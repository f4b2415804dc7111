"""Reference-value tests for rlvr.algorithms.token_selection (high-entropy token mask, sample weights)."""

import pytest
import torch
from torch.testing import assert_close

from rlvr.algorithms import high_entropy_mask, sample_weights

F64 = torch.float64


def test_high_entropy_half_by_hand():
    # valid entropies: 0.9 (0,0), 0.1 (0,1), 0.5 (0,2), 0.7 (1,0), 0.3 (1,1); (1,2) is padding with 5.0
    # N_valid = 5, k = ceil(0.5 * 5) = 3 -> 0.9, 0.7, 0.5 -> (0,0), (1,0), (0,2)
    entropy = torch.tensor([[0.9, 0.1, 0.5], [0.7, 0.3, 5.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    out = high_entropy_mask(entropy, mask, 0.5)
    assert torch.equal(out, torch.tensor([[1, 0, 1], [1, 0, 0]]))
    assert out.dtype == mask.dtype


def test_high_entropy_threshold_is_batch_wide_not_per_sequence():
    # N = 6, k = 3: the three highest are all in row 1; row 0 keeps nothing
    entropy = torch.tensor([[0.1, 0.2, 0.3], [0.9, 0.8, 0.7]])
    out = high_entropy_mask(entropy, torch.ones(2, 3, dtype=torch.bool), 0.5)
    assert torch.equal(out, torch.tensor([[False, False, False], [True, True, True]]))


def test_high_entropy_ties_keep_exactly_k_earliest_first():
    # 0.9 at (1,1), then a three-way tie at 0.5: (0,0), (0,1), (1,0) in row-major order
    entropy = torch.tensor([[0.5, 0.5, 0.2], [0.5, 0.9, 0.0]])
    mask = torch.ones(2, 3)
    # rho = 0.5: k = 3 -> (1,1), (0,0), (0,1)
    assert torch.equal(high_entropy_mask(entropy, mask, 0.5), torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0]]))
    # rho = 0.2: k = ceil(1.2) = 2 -> (1,1), (0,0)
    assert torch.equal(high_entropy_mask(entropy, mask, 0.2), torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))


def test_high_entropy_float_rounding_and_weights():
    # 0.28 * 25 = 7.000000000000001 in floating point: still k = 7, not 8 -> entropies 18..24 kept
    entropy = torch.arange(25, dtype=F64).reshape(5, 5)
    out = high_entropy_mask(entropy, torch.ones(5, 5, dtype=F64), 0.28)
    assert out.sum().item() == 7
    assert torch.equal(out, (entropy >= 18).to(F64))
    # float mask weights survive on kept tokens: k = ceil(0.5 * 3) = 2 -> 0.8 (0,2) and 0.6 (1,0)
    weights = torch.tensor([[0.5, 0.0, 2.0], [3.0, 0.25, 0.0]])
    out = high_entropy_mask(torch.tensor([[0.1, 0.99, 0.8], [0.6, 0.2, 0.95]]), weights, 0.5)
    assert_close(out, torch.tensor([[0.0, 0.0, 2.0], [3.0, 0.0, 0.0]]))


def test_high_entropy_rho_one_and_empty():
    mask = torch.tensor([[1.0, 0.5, 0.0], [1.0, 1.0, 0.0]])
    out = high_entropy_mask(torch.rand(2, 3), mask, 1.0)
    assert torch.equal(out, mask) and out is not mask
    empty = torch.zeros(2, 3)
    assert torch.equal(high_entropy_mask(torch.rand(2, 3), empty, 0.2), empty)


@pytest.mark.parametrize("rho", [0.0, -0.1, 1.5])
def test_high_entropy_rejects_bad_fraction(rho):
    with pytest.raises(ValueError):
        high_entropy_mask(torch.rand(2, 3), torch.ones(2, 3), rho)


def test_high_entropy_shape_mismatch():
    with pytest.raises(ValueError):
        high_entropy_mask(torch.rand(2, 3), torch.ones(3, 2), 0.5)


def test_sample_weights():
    adv = torch.tensor([0.5, -1.2, 0.0, 2.0, -0.1], dtype=F64)
    # W-REINFORCE (lambda = 0.1 on positives): + -> 0.1, - -> 1.0, 0 -> 1
    assert_close(sample_weights(adv, 0.1, 1.0), torch.tensor([0.1, 1.0, 1.0, 0.1, 1.0], dtype=F64))
    assert_close(sample_weights(adv, 2.0, 0.5), torch.tensor([2.0, 0.5, 1.0, 2.0, 0.5], dtype=F64))
    # NSR only: positives get weight 0
    assert_close(adv * sample_weights(adv, 0.0, 1.0), torch.tensor([0.0, -1.2, 0.0, 0.0, -0.1], dtype=F64))
    with pytest.raises(ValueError):
        sample_weights(adv, -0.1, 1.0)


def test_the_controls_of_the_forking_token_claim_by_hand():
    from rlvr.algorithms import select_tokens

    entropy = torch.tensor([[0.9, 0.1, 0.5, 0.0], [0.3, 0.7, 0.2, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0]])  # 6 valid tokens
    # bottom half: the three lowest-entropy valid tokens (0.1, 0.2, 0.3); padding never chosen
    assert select_tokens(entropy, mask, 0.5, "bottom_entropy").tolist() == [[0, 1, 0, 0], [1, 0, 1, 0]]
    assert select_tokens(entropy, mask, 0.5, "top_entropy").tolist() == [[1, 0, 1, 0], [0, 1, 0, 0]]
    # random: exactly ceil(0.5 * 6) = 3 valid tokens, the same for the same seed, others for another
    draws = [select_tokens(entropy, mask, 0.5, "random", torch.Generator().manual_seed(s)) for s in (0, 0, 1, 2, 3)]
    assert all(int(d.sum()) == 3 and not (d * (1 - mask)).any() for d in draws)
    assert torch.equal(draws[0], draws[1]) and any(not torch.equal(draws[0], d) for d in draws[2:])
    with pytest.raises(ValueError, match="token selection"):
        select_tokens(entropy, mask, 0.5, "middle")


def test_a_zero_gradient_skips_the_optimizer_step(tmp_path):
    """Every reward 0: no advantage, no gradient; the step is skipped (and counted), and the
    weights stay the warm start's; with the option off, AdamW's decoupled weight decay moves
    them on no signal at all."""
    from safetensors.torch import load_file

    from rlvr.cli import main
    from rlvr.training.run_dir import RunDir

    tiny = ["model.hidden_size=32", "model.num_layers=1", "model.num_heads=2", "model.intermediate_size=64",
            "sft.steps=4", "sft.batch_size=8", "rl.prompts_per_step=4", "rl.samples_per_prompt=4", "rl.steps=2",
            "rl.mini_batches=2", "rl.micro_batch_size=8", "rollout.max_new_tokens=12", "eval.problems=8",
            "eval.samples=2", "logging.progress=false", "threads=1", "reward.components={correctness: 0.0}",
            "rl.weight_decay=0.1"]
    for skip, counted in ((True, 2.0), (False, 0.0)):
        run = tmp_path / str(skip)
        assert main(["train", "--output-dir", str(run), *tiny, f"rl.skip_zero_gradient={str(skip).lower()}"]) == 0
        rl = [r for r in RunDir(run).read("metrics.jsonl") if r["stage"] == "rl"]
        assert [r["zero_gradient_updates"] for r in rl] == [counted, counted] and all(r["grad_norm"] == 0 for r in rl)
        before = load_file(run / "checkpoints" / "sft-final" / "model.safetensors")
        after = load_file(run / "checkpoints" / "final" / "model.safetensors")
        assert all(torch.equal(before[k], after[k]) for k in before) == skip


def test_sft_content_corruption_keeps_the_structure_and_the_answer():
    import random

    from rlvr.tasks.addition import AdditionTask
    from rlvr.training.sft import corrupt_content

    task = AdditionTask(AdditionTask.Params(min_digits=3, max_digits=3))
    text = "5+8=13 7+4+1=12 2+0+1=3 => 323"
    every = corrupt_content(task, text, 1.0, random.Random(0))
    head, tail = every.split("=>")
    assert tail == " 323" and len(every) == len(text)  # the answer kept, every other place the same kind
    assert all((a.isdigit() and b.isdigit() and a != b) or a == b for a, b in zip(text[:len(head)], head))
    assert all(a != b for a, b in zip(text[:len(head)], head) if a.isdigit())  # rate 1: every reasoning digit
    assert corrupt_content(task, text, 0.0, random.Random(0)) == text
    some = [corrupt_content(task, text, 0.3, random.Random(s)) for s in range(20)]
    changed = [sum(a != b for a, b in zip(text, s)) for s in some]
    assert 0 < sum(changed) / (20 * 15) < 0.6  # about 0.3 of the 15 reasoning digits
    assert corrupt_content(task, text, 0.3, random.Random(7)) == corrupt_content(task, text, 0.3, random.Random(7))
