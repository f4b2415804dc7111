"""Reference-value tests for rlvr.rewards.shaping (expected numbers computed by hand)."""

import math

import pytest
import torch
from torch.testing import assert_close

from rlvr.rewards.shaping import (
    REWARD_SHAPERS,
    LaserD,
    ShapingInputs,
    apply_shapers,
    build_shaper,
    cosine_shaping,
    format_only_shaping,
    kimi_length_shaping,
    label_noise_shaping,
    laser_shaping,
    overlong_filter_mask,
    overlong_shaping,
    random_reward_shaping,
)


def batch(rewards, correct, lengths, *, truncated=None, group_ids=None, max_new_tokens=100, seed=0,
          format_ok=None) -> ShapingInputs:
    n = len(rewards)
    return ShapingInputs(
        rewards=torch.tensor(rewards, dtype=torch.float32),
        correct=torch.tensor(correct, dtype=torch.bool),
        lengths=torch.tensor(lengths, dtype=torch.long),
        truncated=torch.tensor(truncated if truncated is not None else [False] * n, dtype=torch.bool),
        group_ids=torch.tensor(group_ids if group_ids is not None else list(range(n)), dtype=torch.long),
        max_new_tokens=max_new_tokens,
        generator=torch.Generator().manual_seed(seed),
        format_ok=None if format_ok is None else torch.tensor(format_ok, dtype=torch.bool),
    )


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


# --------------------------------------------------------------------------- registry / inputs


def test_registered_names():
    assert REWARD_SHAPERS.names() == [
        "cosine", "format_only", "kimi_length", "label_noise", "laser", "laser_d", "otc", "overlong",
        "random_reward",
    ]


def test_build_shaper_instantiates_stateful_classes_only():
    a, b = build_shaper("laser_d"), build_shaper("laser_d")
    assert isinstance(a, LaserD) and a is not b  # fresh state per build
    assert build_shaper("overlong") is overlong_shaping


def test_inputs_are_validated_with_the_field_name():
    with pytest.raises(ValueError, match="lengths"):
        batch([1.0, 0.0], [True, False], [3])
    with pytest.raises(TypeError, match="correct"):
        ShapingInputs(t([1.0]), torch.tensor([1]), torch.tensor([3]), torch.tensor([False]),
                      torch.tensor([0]), 10, torch.Generator())
    with pytest.raises(TypeError, match="rewards"):
        ShapingInputs(torch.tensor([1]), torch.tensor([True]), torch.tensor([3]), torch.tensor([False]),
                      torch.tensor([0]), 10, torch.Generator())
    with pytest.raises(ValueError, match="max_new_tokens"):
        batch([1.0], [True], [3], max_new_tokens=0)


def test_overlong_filter_mask():
    assert_close(overlong_filter_mask(torch.tensor([False, True, False])), t([1.0, 0.0, 1.0]))


# --------------------------------------------------------------------------- overlong (DAPO Eq. 13)


def test_overlong_three_regimes_and_boundaries():
    # L_max = 100, L_cache = 20, so the ramp starts after L_max - L_cache = 80.
    #   |y| = 0   -> 0                       (<= 80)
    #   |y| = 80  -> 0                       (boundary, still <= 80)
    #   |y| = 81  -> (80 - 81) / 20 = -0.05
    #   |y| = 90  -> (80 - 90) / 20 = -0.5
    #   |y| = 100 -> (80 - 100) / 20 = -1    (boundary L_max, inside the ramp)
    #   |y| = 101 -> -1                      (> L_max)
    inputs = batch([1.0, 1.0, 1.0, 0.0, 1.0, 0.0], [True, True, True, False, True, False],
                   [0, 80, 81, 90, 100, 101])
    out = overlong_shaping(inputs, buffer=20)
    assert_close(out, t([1.0, 1.0, 1.0 - 0.05, 0.0 - 0.5, 1.0 - 1.0, 0.0 - 1.0]))
    # penalty_factor scales the penalty only: 1 - 0.5 * 0.05 = 0.975, 0 - 0.5 * 0.5 = -0.25, ...
    out = overlong_shaping(inputs, buffer=20, penalty_factor=0.5)
    assert_close(out, t([1.0, 1.0, 0.975, -0.25, 0.5, -0.5]))


def test_overlong_rejects_bad_buffer():
    inputs = batch([1.0], [True], [3])
    with pytest.raises(ValueError, match="buffer"):
        overlong_shaping(inputs, buffer=0)
    with pytest.raises(ValueError, match="buffer"):
        overlong_shaping(inputs, buffer=101)


# --------------------------------------------------------------------------- LASER


def test_laser_correct_incorrect_short_long():
    # target 50, alpha 0.5: only correct responses with |y| <= 50 gain +0.5.
    #   correct, 10 -> 1 + 0.5;  correct, 50 (boundary) -> 1 + 0.5;  correct, 51 -> 1
    #   wrong, 10 -> -0.5 (kept, no bonus);  wrong, 90 -> -0.5 (no penalty either)
    inputs = batch([1.0, 1.0, 1.0, -0.5, -0.5], [True, True, True, False, False], [10, 50, 51, 10, 90])
    assert_close(laser_shaping(inputs, target_length=50), t([1.5, 1.5, 1.0, -0.5, -0.5]))
    assert_close(laser_shaping(inputs, target_length=50, alpha=2.0), t([3.0, 3.0, 1.0, -0.5, -0.5]))


# --------------------------------------------------------------------------- LASER-D

# Three steps of 3 groups x 6 samples; max_new_tokens 100, grid [20, 40, 60, 80, 100].
# Buckets for n = 6 (k correct): easy k >= 4, medium 2 <= k <= 3, hard k <= 1.
# N_d = floor(2n/3), floor(n/3), 1 = 4, 2, 1; with E = 1 the target is the first grid l with
# covered(l) * N_d >= total, i.e. P(l) >= 1/4 (easy), >= 1/2 (medium), = 1 (hard).
LASER_D_PARAMS = dict(interval=20, lower_bound=20, alpha=0.5, initial_target=50, expected_correct=1, decay=0.5)


def laser_d_step(groups):
    """groups: list of (group_id, [(correct, length), ...]); reward = 1 if correct else 0."""
    correct, lengths, ids = [], [], []
    for gid, samples in groups:
        for c, n in samples:
            correct.append(c)
            lengths.append(n)
            ids.append(gid)
    return batch([float(c) for c in correct], correct, lengths, group_ids=ids)


T, F = True, False
STEP1 = laser_d_step([
    (0, [(T, 10), (T, 30), (T, 50), (T, 70), (F, 90), (F, 15)]),     # k=4 easy
    (1, [(T, 25), (T, 45), (F, 5), (F, 60), (F, 95), (F, 100)]),     # k=2 medium
    (2, [(T, 85), (F, 10), (F, 20), (F, 30), (F, 40), (F, 100)]),    # k=1 hard
])
STEP2 = laser_d_step([
    (10, [(T, 20), (T, 35), (T, 38), (T, 55), (T, 90), (F, 50)]),    # k=5 easy
    (11, [(T, 30), (T, 42), (T, 61), (F, 10), (F, 20), (F, 99)]),    # k=3 medium
    (12, [(F, 5), (F, 50), (F, 60), (F, 70), (F, 80), (F, 100)]),    # k=0 hard
])
STEP3 = laser_d_step([
    (20, [(T, 40), (T, 41), (T, 60), (T, 61), (T, 10), (T, 99)]),    # k=6 easy
    (21, [(T, 60), (T, 61), (F, 1), (F, 2), (F, 3), (F, 4)]),        # k=2 medium
    (22, [(T, 99), (F, 1), (F, 2), (F, 3), (F, 4), (F, 5)]),         # k=1 hard
])
# Step 1 uses the initial target 50 everywhere: bonus for correct 10, 30, 50 | 25, 45 | not 85.
STEP1_OUT = [1.5, 1.5, 1.5, 1.0, 0, 0, 1.5, 1.5, 0, 0, 0, 0, 1.0, 0, 0, 0, 0, 0]
# After step 1 (decay 0.5 on zeros, so just step 1's counts), covered at [20, 40, 60, 80, 100]:
#   easy {10,30,50,70}: [1,2,3,4,4], total 4 -> need covered >= 4/4 = 1   -> 20
#   medium {25,45}:     [0,1,2,2,2], total 2 -> need covered >= 2/2 = 1   -> 40
#   hard {85}:          [0,0,0,0,1], total 1 -> need covered >= 1/1 = 1   -> 100
TARGETS1 = {"easy": 20, "medium": 40, "hard": 100}
# Step 2 (targets 20 / 40 / 100): easy bonus for 20 only (boundary), medium for 30 only, hard: none correct.
STEP2_OUT = [1.5, 1.0, 1.0, 1.0, 1.0, 0, 1.5, 1.0, 1.0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
# After step 2: covered = 0.5 * old + new.
#   easy: 0.5*[1,2,3,4,4] + {20,35,38,55,90}=[1,3,4,4,5] = [1.5,4,5.5,6,7], total 0.5*4 + 5 = 7
#         need covered >= 7/4 = 1.75 -> 20 fails (1.5), 40 ok (4)                    -> 40
#   medium: 0.5*[0,1,2,2,2] + {30,42,61}=[0,1,2,3,3] = [0,1.5,3,4,4], total 1 + 3 = 4
#         need covered >= 4/2 = 2 -> 40 fails (1.5), 60 ok (3)                       -> 60
#   hard: 0.5*[0,0,0,0,1] + nothing = [0,0,0,0,0.5], total 0.5 -> need 0.5 -> 100
TARGETS2 = {"easy": 40, "medium": 60, "hard": 100}
# Step 3 (targets 40 / 60 / 100): easy bonus for 40 and 10; medium for 60; hard for 99.
STEP3_OUT = [1.5, 1.0, 1.0, 1.0, 1.5, 1.0, 1.5, 1.0, 0, 0, 0, 0, 1.5, 0, 0, 0, 0, 0]
# After step 3:
#   easy: 0.5*[1.5,4,5.5,6,7] + {40,41,60,61,10,99}=[1,2,4,5,6] = [1.75,4,6.75,8,9.5], total 3.5 + 6 = 9.5
#         need covered >= 9.5/4 = 2.375 -> 20 fails (1.75), 40 ok                    -> 40
#   medium: 0.5*[0,1.5,3,4,4] + {60,61}=[0,0,1,2,2] = [0,0.75,2.5,4,4], total 2 + 2 = 4
#         need covered >= 2 -> 40 fails (0.75), 60 ok (2.5)                          -> 60
#   hard: [0,0,0,0,0.25] + {99}=[0,0,0,0,1] -> [0,0,0,0,1.25], total 1.25        -> 100
TARGETS3 = {"easy": 40, "medium": 60, "hard": 100}


def test_laser_d_target_adapts_over_three_steps():
    shaper = LaserD()
    assert shaper.targets() == {}
    assert_close(shaper(STEP1, **LASER_D_PARAMS), t(STEP1_OUT))
    assert shaper.targets() == TARGETS1
    assert_close(shaper(STEP2, **LASER_D_PARAMS), t(STEP2_OUT))
    assert shaper.targets() == TARGETS2
    assert_close(shaper(STEP3, **LASER_D_PARAMS), t(STEP3_OUT))
    assert shaper.targets() == TARGETS3
    assert shaper.steps == 3
    # The decayed counts themselves, as computed in the comments above.
    state = shaper.state_dict()
    assert_close(state["covered"], torch.tensor(
        [[1.75, 4, 6.75, 8, 9.5], [0, 0.75, 2.5, 4, 4], [0, 0, 0, 0, 1.25]], dtype=torch.float64))
    assert_close(state["total"], torch.tensor([9.5, 4, 1.25], dtype=torch.float64))
    assert state["grid"].tolist() == [20, 40, 60, 80, 100]


def test_laser_d_state_dict_round_trip():
    saved = LaserD()
    saved(STEP1, **LASER_D_PARAMS)
    saved(STEP2, **LASER_D_PARAMS)
    state = saved.state_dict()

    restored = LaserD()
    restored.load_state_dict(state)
    assert restored.targets() == saved.targets() == TARGETS2
    assert_close(restored(STEP3, **LASER_D_PARAMS), saved(STEP3, **LASER_D_PARAMS))
    assert_close(restored.state_dict()["covered"], saved.state_dict()["covered"])
    assert restored.steps == saved.steps == 3
    # The state is what makes the difference: a fresh shaper uses the initial target 50
    # (easy 41 gets the bonus) and so gives a different reward on step 3.
    assert not torch.equal(LaserD()(STEP3, **LASER_D_PARAMS), t(STEP3_OUT))
    # state_dict returns copies: stepping the original does not change a saved state.
    assert_close(state["total"], torch.tensor([7, 4, 0.5], dtype=torch.float64))


def test_laser_d_rejects_a_changed_grid_and_bad_state():
    shaper = LaserD()
    shaper(STEP1, **LASER_D_PARAMS)
    with pytest.raises(ValueError, match="grid"):
        shaper(STEP1, **{**LASER_D_PARAMS, "interval": 25})
    with pytest.raises(ValueError, match="laser_d state"):
        LaserD().load_state_dict({"steps": 1, "grid": torch.tensor([20])})


# --------------------------------------------------------------------------- cosine


def test_cosine_at_zero_half_and_full_length():
    # L = 100, defaults (r_c_0, r_c_L, r_w_0, r_w_L, r_exceed) = (2, 1, -10, 0, -10).
    #   CosFn(t) = r_L + 0.5 * (r_0 - r_L) * (1 + cos(pi t / L))
    #   correct: t=0 -> 1 + 0.5*1*2 = 2;  t=50 -> 1 + 0.5*1*1 = 1.5;  t=100 -> 1 + 0 = 1
    #   wrong:   t=0 -> 0 - 0.5*10*2 = -10;  t=50 -> -5;  t=100 -> 0   (longer is better)
    #   truncated (correct or not) -> -10
    # Every reward holds an extra 0.25 besides the 0/1 correctness part; it is kept.
    correct = [T, T, T, F, F, F, T, F]
    rewards = [(1.0 if c else 0.0) + 0.25 for c in correct]
    truncated = [F, F, F, F, F, F, T, T]
    inputs = batch(rewards, correct, [0, 50, 100, 0, 50, 100, 100, 100], truncated=truncated)
    expected = [2.0, 1.5, 1.0, -10.0, -5.0, 0.0, -10.0, -10.0]
    assert_close(cosine_shaping(inputs), t([0.25 + e for e in expected]))


def test_cosine_custom_values():
    # r_c_0=1, r_c_L=0.5 at t = 25 of 100: 0.5 + 0.5*0.5*(1 + cos(pi/4)) = 0.5 + 0.25*1.7071068
    inputs = batch([1.0], [True], [25])
    out = cosine_shaping(inputs, r_c_0=1.0, r_c_L=0.5)
    assert_close(out, t([0.5 + 0.25 * (1 + math.cos(math.pi / 4))]))


# --------------------------------------------------------------------------- Kimi k1.5


def test_kimi_length_penalty_per_group():
    # Groups interleaved on purpose (ids 0, 1, 2, 3 mixed).
    # group 0: lengths 10, 20, 30 (min 10, max 30) -> lambda = 0.5, 0, -0.5
    #          correct, correct, wrong -> 0.5, 0, min(0, -0.5) = -0.5
    # group 1: lengths 10, 30, 20 -> lambda = 0.5, -0.5, 0
    #          wrong, correct, wrong -> min(0, 0.5) = 0, -0.5, 0
    # group 2: lengths 7, 7 (max == min) -> 0, 0
    # group 3: a single sample -> 0
    group_ids = [0, 1, 0, 2, 1, 0, 2, 1, 3]
    lengths = [10, 10, 20, 7, 30, 30, 7, 20, 55]
    correct = [T, F, T, T, T, F, F, F, T]
    rewards = [float(c) for c in correct]
    inputs = batch(rewards, correct, lengths, group_ids=group_ids)
    len_reward = [0.5, 0.0, 0.0, 0.0, -0.5, -0.5, 0.0, 0.0, 0.0]
    assert_close(kimi_length_shaping(inputs), t([r + lr for r, lr in zip(rewards, len_reward)]))
    weighted = [r + 0.4 * lr for r, lr in zip(rewards, len_reward)]
    assert_close(kimi_length_shaping(inputs, weight=0.4), t(weighted))


# --------------------------------------------------------------------------- label noise


def test_label_noise_flips_exactly_the_drawn_trajectories():
    correct = [T, F, T, T, F, F, T, F, T, F]
    rewards = [float(c) + 0.1 for c in correct]  # 0.1 stands for another component, kept
    inputs = batch(rewards, correct, [5] * 10, seed=1234)
    out = label_noise_shaping(inputs, p=0.4)

    # Same seed, same draw: one torch.rand(N, dtype=float64), flip where u < p.
    u = torch.rand(10, generator=torch.Generator().manual_seed(1234), dtype=torch.float64)
    flip = (u < 0.4).tolist()
    assert 0 < sum(flip) < 10  # the seed exercises both cases
    expected = [(0.1 + (0.0 if c else 1.0)) if f else r for c, r, f in zip(correct, rewards, flip)]
    assert_close(out, t(expected))

    # The shaper consumed exactly that one draw from the step's generator.
    reference = torch.Generator().manual_seed(1234)
    torch.rand(10, generator=reference, dtype=torch.float64)
    assert torch.equal(torch.rand(3, generator=inputs.generator), torch.rand(3, generator=reference))


def test_label_noise_extremes():
    correct = [T, F, T]
    rewards = [1.5, 0.5, 1.0]  # 1.5 = correct + 0.5 format, 0.5 = wrong + 0.5 format
    assert_close(label_noise_shaping(batch(rewards, correct, [1, 2, 3]), p=0.0), t(rewards))
    # p = 1 flips all: 1.5 - 1 + 0 = 0.5;  0.5 - 0 + 1 = 1.5;  1 - 1 + 0 = 0
    assert_close(label_noise_shaping(batch(rewards, correct, [1, 2, 3]), p=1.0), t([0.5, 1.5, 0.0]))
    with pytest.raises(ValueError, match="p"):
        label_noise_shaping(batch(rewards, correct, [1, 2, 3]), p=1.5)


# --------------------------------------------------------------------------- spurious rewards


def test_format_only_ignores_correctness():
    inputs = batch([1.0, 1.0, 0.0, 0.3], [T, T, F, F], [1, 2, 3, 4], format_ok=[T, F, T, F])
    assert_close(format_only_shaping(inputs), t([1.0, 0.0, 1.0, 0.0]))
    with pytest.raises(ValueError, match="format_ok"):
        format_only_shaping(batch([1.0], [True], [1]))


def test_random_reward_reproducible_and_mean_p():
    def draw(seed, p, n=10_000):
        return random_reward_shaping(batch([0.0] * n, [False] * n, [1] * n, seed=seed), p=p)

    a, b = draw(7, 0.5), draw(7, 0.5)
    assert torch.equal(a, b)
    assert not torch.equal(a, draw(8, 0.5))
    assert set(a.unique().tolist()) == {0.0, 1.0}
    # Same draw by hand: Bernoulli(p) = 1[u < p] with one float64 torch.rand(N).
    u = torch.rand(10_000, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    assert torch.equal(a, (u < 0.5).float())
    # Mean of 10k Bernoulli(p): std <= 0.005, so 0.02 is 4 std.
    assert abs(a.mean().item() - 0.5) < 0.02
    assert abs(draw(3, 0.2).mean().item() - 0.2) < 0.02
    assert draw(3, 0.0).sum().item() == 0.0 and draw(3, 1.0).sum().item() == 10_000


# --------------------------------------------------------------------------- composition


def test_overlong_then_laser_composition():
    # max_new_tokens 100, overlong buffer 20 (ramp after 80), laser target 85, alpha 0.5.
    # lengths 50, 84, 90, 100; correct T, T, F, T; rewards 1, 1, 0, 1.
    # overlong: 0, (80-84)/20 = -0.2, (80-90)/20 = -0.5, -1  -> 1, 0.8, -0.5, 0
    # laser (correct and <= 85): +0.5, +0.5, 0, 0            -> 1.5, 1.3, -0.5, 0
    inputs = batch([1.0, 1.0, 0.0, 1.0], [T, T, F, T], [50, 84, 90, 100], truncated=[F, F, F, T])
    out = apply_shapers(inputs, [
        (build_shaper("overlong"), {"buffer": 20}),
        (build_shaper("laser"), {"target_length": 85, "alpha": 0.5}),
    ])
    assert_close(out, t([1.5, 1.3, -0.5, 0.0]))
    # Each shaper sees the previous output: laser then format_only keeps nothing of laser.
    with_format = batch([1.0, 1.0, 0.0, 1.0], [T, T, F, T], [50, 84, 90, 100], format_ok=[F, T, T, F])
    out = apply_shapers(with_format, [(laser_shaping, {"target_length": 85}), (format_only_shaping, {})])
    assert_close(out, t([0.0, 1.0, 1.0, 0.0]))
    assert_close(apply_shapers(inputs, []), inputs.rewards)
