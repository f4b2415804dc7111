"""The typed configuration of a run: one dataclass tree, loaded from YAML with strict checks.

Every field has a type, a default and a help line stating its unit. The defaults *are* the
default recipe (``recipes/default.yaml`` is their dump), so ``rlvr train`` with no arguments
needs no file. Units are spelled out because RL configs mix them: *prompts* per step,
*samples* per prompt, *sequences* per micro-batch, *tokens* per response.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

from rlvr.typed_yaml import ConfigError, dump_yaml, from_dict, load_yaml_config, to_dict

__all__ = ["RunConfig", "ConfigError", "load_config", "save_config"]


def _f(default: Any, help: str, *, ge: float | None = None, gt: float | None = None,
       le: float | None = None, lt: float | None = None) -> Any:
    """A field with a default (copied per instance when mutable), its help line and, for a
    number (or a list of numbers), its valid range: ``ge``/``gt``/``le``/``lt`` bounds that
    typed_yaml checks on load and that the resolved config.yaml states next to the help.
    Floats are finite everywhere (NaN and inf are rejected without being declared)."""
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    metadata = {"help": help, **bounds}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def _sub(cls: type, help: str) -> Any:
    return field(default_factory=cls, metadata={"help": help})


@dataclass
class LoraSettings:
    r: int = _f(0, "LoRA rank of the RL stage's adapters (Hu et al. 2022; RL on LoRA as in Tina, Wang et al. 2025); 0 = full fine-tuning. SFT stays full; RL trains only the adapters, the KL reference is the base with the adapters off (no second copy), checkpoints hold the merged weights plus adapter/. Needs peft (pip install -e '.[lora]')", ge=0, le=4096)
    alpha: float = _f(16.0, "LoRA scaling numerator: the update is (alpha / r) * B A", gt=0, le=1e6)
    dropout: float = _f(0.0, "dropout on the adapters' input", ge=0, lt=1)
    target_modules: list[str] = _f(["all-linear"], "modules that get adapters: all-linear (every linear layer but the output head) or module names such as [q_proj, v_proj]")

    def __post_init__(self) -> None:
        if not self.target_modules:
            raise ValueError("target_modules must name at least one module (or all-linear)")


@dataclass
class ModelConfig:
    path: str | None = _f(None, "Hugging Face checkpoint to start from: a local directory, or a hub id (org/name) found in the Hugging Face cache (HF_HUB_CACHE / HF_HOME; fetched unless HF_HUB_OFFLINE=1); null builds a tiny model from the fields below")
    architecture: Literal["llama", "qwen2"] = _f("llama", "architecture of the tiny model built when path is null")
    hidden_size: int = _f(128, "tiny model: width of the residual stream", ge=2, le=2**16)
    num_layers: int = _f(2, "tiny model: number of transformer blocks", ge=1, le=1024)
    num_heads: int = _f(4, "tiny model: attention heads per block", ge=1, le=1024)
    intermediate_size: int = _f(512, "tiny model: width of the MLP", ge=1, le=2**18)
    max_position_embeddings: int = _f(128, "tiny model: longest sequence in tokens (prompt + response)", ge=2, le=2**20)
    dtype: Literal["float32", "bfloat16", "float16"] = _f("float32", "compute precision of forward passes (autocast); weights, gradients and optimizer state stay float32 (master weights) whatever this says; float16 adds dynamic loss scaling")
    chat_template: str | None = _f(None, "replace the checkpoint's chat template: a preset (chatml, llama3), a Jinja file or the template text; null keeps the checkpoint's")
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = _f("sdpa", "attention kernel of the model's own forward (transformers' attn_implementation); flash_attention_2 needs the flash-attn package and a CUDA device. rlvr's packed forward and KV-cache decoder use SDPA")
    gradient_checkpointing: bool = _f(False, "recompute activations in the backward pass (less memory, ~30% more compute); training forwards then use the model's own forward, not the packed one")
    lora: LoraSettings = _sub(LoraSettings, "LoRA adapters for the RL stage (r: 0 = full fine-tuning)")

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})")
        if (self.hidden_size // self.num_heads) % 2:  # rotary embeddings rotate pairs of dimensions
            raise ValueError(f"hidden_size / num_heads ({self.hidden_size} / {self.num_heads}) must be even: "
                             "rotary position embeddings need an even head dimension")


@dataclass
class TaskConfig:
    name: str = _f("addition", "registered task name (see `rlvr list`)")
    params: dict[str, Any] = _f(
        {"min_digits": 2, "max_digits": 3, "teacher_carry_error": 0.6},
        "task-specific parameters, checked against the task's Params dataclass",
    )
    system_prompt: str | None = _f(None, "system message put before every chat prompt that has none (it lives in the "
                                         "chat template, so the run's checkpoints carry it); null: none")
    answer_layout: Literal["plain", "think_answer"] = _f("plain", "plain: the task's own answer format; think_answer: DeepSeek-R1's <think>...</think><answer>...</answer> (demonstrations are laid out so, only the last <answer> block is scored)")
    stated_confidence: bool = _f(False, "RLCR: responses end with <confidence>q</confidence>, q in [0, 1] (demonstrations carry one drawn from 0.1..0.9, scoring ignores it, evaluation reports brier and ece); reward it with the rlcr component; a Hugging Face model needs a task.system_prompt asking for it")


@dataclass
class ShapingStep:
    name: str = _f("overlong", "registered reward-shaping function (see `rlvr list`)")
    params: dict[str, Any] = _f({}, "its keyword parameters (units in its docstring)")


@dataclass
class StepRewardSettings:
    coef: float = _f(0.0, "token-level process rewards: coef x each step's score (the task's step checker, e.g. the addition scratchpad's column sums) on the step's last token, for returns-to-go estimators (reinforce_pp, gae); 0 = off", ge=-1e6, le=1e6)
    delta: bool = _f(False, "reward each step by its score's change from the step before (sums to coef x the last step's score: no gain from writing more steps)")
    scorer: Literal["task", "reward_model", "judge"] = _f("task", "who scores each step, for the process component and the token-level rewards: task = the task's own step checker (it knows its steps); reward_model = a sequence-classification checkpoint (path; e.g. from `rlvr rm`) scoring each prefix of the response that ends at a step, P(right so far); judge = a generative judge (path; reward.params.judge's rubric and options) reading each such prefix as the response")
    path: str | None = _f(None, "the step scorer's checkpoint (a directory or a hub id in the local cache) for scorer reward_model or judge")
    delimiter: str = _f("\n\n", "with a learned scorer: the text between steps (the response is split at it; a step's prefix ends before it); the addition scratchpad's is ' '")


@dataclass
class RewardConfig:
    components: dict[str, float] = _f({"correctness": 1.0}, "reward name (registered, or module:function) -> weight; the reward is the weighted sum")
    params: dict[str, dict[str, Any]] = _f({}, "reward name -> keyword arguments passed to that reward function")
    shaping: list[ShapingStep] = _f([], "batch-level shapers applied in order to the summed reward (overlong, laser, laser_d, cosine, kimi_length, label_noise, format_only, random_reward)")
    on_error: Literal["raise", "zero"] = _f("raise", "a component that raises or returns NaN, inf or a non-number: raise = stop the run naming the component and the sample; zero = score that component 0 for the sample and count it (metric reward/failed, samples per step)")
    step_rewards: StepRewardSettings = _sub(StepRewardSettings, "process rewards per reasoning step, as token-level rewards (see also the process reward component)")

    def __post_init__(self) -> None:
        unused = sorted(set(self.params) - set(self.components))
        if unused:
            raise ValueError(f"params given for rewards that are not in components: {', '.join(unused)}")


@dataclass
class VerifierConfig:
    isolate: Literal["auto", "always", "never"] = _f("auto", "score in worker processes with timeouts: auto = when the task asks for it (math, code)")
    workers: int = _f(2, "verifier worker processes (each a process of its own: a few per core at most)", ge=1, le=256)
    timeout_s: float = _f(5.0, "seconds one verification may take before its worker is killed and the score is 0", gt=0, le=86400)
    memory_limit_mb: int = _f(2048, "address space a worker may add on top of its start-up size (MB)", ge=64, le=2**30)
    max_timeout_batches: int = _f(3, "stop the run when every verification of this many batches in a row timed out (batches; a warning comes first, once half of one batch times out)", ge=1)


@dataclass
class SFTConfig:
    steps: int = _f(600, "optimizer steps of supervised warm start on task demonstrations", ge=0)
    batch_size: int = _f(64, "demonstrations (sequences) per optimizer step", ge=1)
    lr: float = _f(3e-3, "peak learning rate", gt=0)
    warmup_steps: int = _f(50, "linear warm-up length in optimizer steps; cosine decay to 10% after it", ge=0)
    weight_decay: float = _f(0.0, "AdamW decoupled weight decay", ge=0)
    grad_clip: float = _f(1.0, "max global gradient norm; 0 disables clipping", ge=0)
    max_nonfinite_updates: int = _f(3, "an update whose loss or gradient is NaN/inf is skipped; stop the run after this many skipped in a row (optimizer updates)", ge=1)
    corrupt_content: float = _f(0.0, "'structure, not content' (Li et al. 2025): each digit of a demonstration's reasoning (everything before its final answer, which is kept) is replaced by another digit with this probability, so the steps keep their form and lose their truth; 0 = the demonstrations as the task writes them", ge=0, le=1)
    cache: bool = _f(True, "reuse a cached warm start whose config, data, seed and code equal this run's, and cache this one (RLVR_CACHE_DIR, default ~/.cache/rlvr)")


@dataclass
class EnvironmentConfig:
    name: str | None = _f(None, "multi-turn environment: python (tool calls), try_again (feedback turns), module:Class, or null for single-turn")
    params: dict[str, Any] = _f({}, "environment-specific parameters, checked against its Params dataclass")
    max_turns: int = _f(4, "policy turns per episode at most (rollout.max_new_tokens bounds the whole response)", ge=1)
    observation_tokens: int = _f(64, "tokens of one observation kept at most; the rest is cut", ge=1)
    filter_void_turns: bool = _f(False, "SimpleTIR: a trajectory with a turn that has neither a tool call nor an answer gets no gradient")

    def __post_init__(self) -> None:
        if self.name is None and self.params:
            raise ValueError("params are given but no environment is named (set rollout.environment.name)")


DEFAULT_TIS_CAP = 2.0  # truncated IS cap with a separate engine (Yao et al. 2025, "Your efficient RL framework secretly brings you off-policy RL training")


@dataclass
class VLLMConfig:
    mode: Literal["colocated", "server"] = _f("colocated", "colocated: a vllm.LLM inside the trainer's process; server: a `vllm serve` process (started by rlvr, or the one at url)")
    url: str | None = _f(None, "server mode: the base URL of a running `vllm serve` (started with VLLM_SERVER_DEV_MODE=1), or several, comma-separated; null starts rollout.vllm.engines servers")
    weights_dir: str | None = _f(None, "server mode: where a weight sync writes its safetensors buckets for the servers to read (each sync's files replace the last's); a server on another machine needs a directory both see (a shared filesystem); null = the system's temporary directory")
    engines: int = _f(1, "server mode: vLLM servers rlvr starts (own processes; requests go to the least-loaded one, a GRPO group whole; a lost one is restarted and its requests re-issued); with url, one per URL", ge=1, le=1024)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = _f("auto", "the engine's weight dtype; auto = model.dtype")
    gpu_memory_utilization: float = _f(0.5, "GPU: fraction of the device's memory vLLM may take (weights + KV cache); the trainer needs the rest when colocated", gt=0, le=1)
    kv_cache_gib: float = _f(1.0, "CPU: KV-cache size in GiB (vLLM would otherwise reserve most of the machine's memory)", gt=0, le=4096)
    tensor_parallel_size: int = _f(1, "GPUs one engine is split over", ge=1, le=64)
    max_num_seqs: int = _f(256, "sequences vLLM schedules at once", ge=1, le=65536)
    enable_prefix_caching: bool = _f(True, "reuse the KV cache of shared prefixes (a GRPO group's prompt)")
    enforce_eager: bool = _f(True, "skip torch.compile and CUDA graphs (minutes of start-up on a CPU; on a GPU false is faster once started)")
    sleep_level: int = _f(0, "GPU, colocated: put the engine to sleep while the trainer trains (1: weights offloaded to CPU, 2: discarded; they are re-sent at the next sync); 0 never", ge=0, le=2)
    verify_every: int = _f(1, "check the engine's weights against the trainer's by checksum every this many syncs (version and a SHA-256 per tensor); 0 never", ge=0)
    startup_timeout_s: float = _f(900.0, "seconds the engine may take to start", gt=0, le=86400)
    generate_timeout_s: float = _f(3600.0, "seconds one generate call may take before the run stops with every thread's stack", gt=0, le=86400)
    call_timeout_s: float = _f(600.0, "seconds any other engine call (weight sync, checksum, ping) may take", gt=0, le=86400)


@dataclass
class RolloutConfig:
    engine: str = _f("kv_cache", "registered rollout engine name (see `rlvr list`)")
    max_new_tokens: int = _f(40, "longest response in tokens; longer ones are truncated (finish_reason=length)", ge=1)
    temperature: float = _f(1.0, "sampling temperature (greedy is for evaluation); log-probs for the loss use the same temperature", gt=0)
    top_p: float = _f(1.0, "nucleus sampling mass in (0, 1]", gt=0, le=1)
    vllm: VLLMConfig = _sub(VLLMConfig, "the vllm engine (rollout.engine: vllm)")
    max_logprob_gap: float | None = _f(0.5, "stop the run when the rollout engine's log-probs differ from the trainer's on the same tokens by more than this (mean |difference| per token, nats; logged every step as logprob_gap_mean/max): the engine is not sampling from the trainer's weights; null never stops", gt=0)
    environment: EnvironmentConfig = _sub(EnvironmentConfig, "multi-turn episodes (tool use, feedback turns); off by default")


@dataclass
class KLConfig:
    coef: float = _f(0.0, "KL(policy || reference) coefficient beta; 0 disables KL and skips the reference model", ge=0)
    estimator: str = _f("k3", "registered KL estimator: k1, k2, k3, or straight-through k1_st / k3_st (value of k1/k3, gradient of k2)")
    placement: Literal["loss", "reward"] = _f("loss", "loss: beta*KL is a loss term; reward: -beta*KL_t is added to each token's reward")
    target: float | None = _f(None, "adaptive coefficient: KL per token to steer towards (Ziegler et al. 2019); null keeps beta fixed", gt=0)
    horizon: int = _f(10000, "adaptive coefficient: samples over which the KL error is corrected", ge=1)
    reset_every: int = _f(0, "ProRL reference reset: copy the policy into the reference every this many RL steps; 0 never", ge=0)
    reset_threshold: float | None = _f(None, "ProRL reference reset when the measured KL per token exceeds this; null never", gt=0)
    reset_optimizer: bool = _f(True, "also clear the optimizer's moment estimates at a reference reset (ProRL's hard reset)")

    def __post_init__(self) -> None:
        if self.target is not None and self.coef == 0:
            raise ValueError("target (adaptive KL) needs coef > 0: the controller scales beta, which stays 0 from 0")


@dataclass
class TeacherConfig:
    path: str | None = _f(None, "the teacher for KDRL and on-policy distillation: a Hugging Face checkpoint directory, a hub id in the local cache, or a run directory (its final checkpoint); null = no teacher. Its tokenizer must be the student's (the same vocabulary and ids; there is no re-tokenisation). Loaded frozen on the run's device; its log-probs of the sampled tokens are computed without gradient, in the trainer's batches, timed as time_teacher")
    sft_steps: int = _f(0, "no path: the run trains its own teacher first, as a run directory of its own in <run>/teacher (resumed, and reused once done): SFT on the task's demonstrations for this many steps, then teacher.rl_steps of RL, with the run's own model, SFT and RL settings (no teacher term) and another seed; 0 = none", ge=0)
    rl_steps: int = _f(0, "teacher.sft_steps: RL steps after the teacher's SFT (0 = SFT only; on the default task SFT alone saturates near the warm start's accuracy, RL takes the teacher further)", ge=0)
    coef: float = _f(0.0, "beta of the reverse KL(policy || teacher) term on the policy's own samples (KDRL, Xu et al. 2025; on-policy distillation); > 0 needs teacher.path or teacher.sft_steps", ge=0, le=1e6)
    coef_final: float | None = _f(None, "anneal the coefficient linearly from coef (first RL step) to this (last RL step), KDRL's schedule (e.g. 5e-3 -> 1e-3); null keeps coef", ge=0, le=1e6)
    estimator: str = _f("k2", "per-token estimator of KL(policy || teacher) on the sampled tokens (algorithm.kl's registry): k2 (as a loss, its gradient is the exact reverse-KL gradient on the policy's own samples, KDRL's choice), k3 (GRPO's low-variance KL; a biased gradient), k1, k1_st, k3_st")
    placement: Literal["loss", "reward"] = _f("loss", "loss: coef * KL is a loss term, aggregated like the policy loss; reward: -coef * KL_t is each token's reward (per token with gae and reinforce_pp; group estimators fold it into the sequence score)")
    mask: Literal["all", "incorrect"] = _f("all", "the responses the teacher term covers: all, or incorrect (KDRL's reward-guided masking: no pull towards the teacher on responses the verifier accepts)")
    outcome: bool = _f(True, "learn from the task's reward too; false = pure on-policy distillation: the rewards are logged but the advantages see zero, so the teacher term is the whole signal")

    def __post_init__(self) -> None:
        if self.rl_steps and not self.sft_steps:
            raise ValueError("rl_steps needs sft_steps: a teacher the run trains starts with SFT")
        if self.coef > 0 and not self.path and not self.sft_steps:
            raise ValueError("coef > 0 needs teacher.path (the model to distil from) or teacher.sft_steps (train one)")
        if self.path and self.sft_steps:
            raise ValueError("teacher.path and teacher.sft_steps both set: distil from the given teacher (path) or "
                             "train one (sft_steps), not both")
        if (self.path or self.sft_steps) and self.coef == 0:
            raise ValueError("a teacher is set but coef is 0: it would be loaded and never used; set coef")
        if not self.outcome and self.coef == 0:
            raise ValueError("outcome: false without a teacher term leaves nothing to learn from; set path and coef")


@dataclass
class EntropyConfig:
    coef: float = _f(0.0, "entropy bonus coefficient: loss -= coef * entropy (nats/token)", ge=0)
    target: float | None = _f(None, "adaptive coefficient: entropy (nats/token) to steer towards; null keeps coef fixed", ge=0)
    lr: float = _f(0.01, "adaptive coefficient: step size of coef per nat of entropy error", gt=0)


@dataclass
class CriticConfig:
    lr: float = _f(1e-4, "critic learning rate (gae only)", gt=0)
    value_clip: float | None = _f(0.2, "PPO value clipping range around the old value; null disables clipping", gt=0, le=1e6)
    warmup_steps: int = _f(0, "RL steps that train only the critic, before the policy starts moving", ge=0)


@dataclass
class AlgorithmConfig:
    advantage: str = _f("grpo", "registered advantage estimator (see `rlvr list`)")
    loss: str = _f("ppo", "registered policy loss (see `rlvr list`)")
    loss_agg: str = _f("token_mean", "loss aggregation: token_mean, seq_mean_token_mean, seq_mean_token_sum, seq_mean_token_sum_norm")
    clip_low: float = _f(0.2, "ratio clip below 1 (ratio >= 1 - clip_low)", ge=0, lt=1)
    clip_high: float = _f(0.2, "ratio clip above 1 (ratio <= 1 + clip_high); DAPO clip-higher uses 0.28", ge=0, le=1e6)
    clip_c: float | None = _f(None, "ppo dual-clip bound (> 1) for negative advantages (Ye et al. 2020); null disables it", gt=1, le=1e6)
    scale_by_std: bool = _f(True, "grpo: divide advantages by the group's reward std")
    gamma: float = _f(1.0, "discount per token (gae, reinforce_pp)", ge=0, le=1)
    lam: float = _f(1.0, "GAE lambda (gae)", ge=0, le=1)
    pass_k: int = _f(1, "pass_at_k estimator: the k whose pass@k is optimised (<= samples_per_prompt)", ge=1)
    accept_reward: float = _f(1.0, "rft estimator (expert iteration): a sample whose reward is >= this is accepted (advantage 1), the rest get 0; 1.0 = the correctness reward's value", ge=-1e6, le=1e6)
    top_entropy_fraction: float = _f(1.0, "train only on this fraction of response tokens with the highest entropy (0.2 in 'Beyond the 80/20 rule'); 1 trains on all", gt=0, le=1)
    token_selection: Literal["top_entropy", "bottom_entropy", "random"] = _f("top_entropy", "which top_entropy_fraction of the tokens: top_entropy (the paper's forking tokens), bottom_entropy (its bottom-80% control: top_entropy_fraction 0.8) or random (the same count drawn at random each step: the control for 'fewer tokens')")
    positive_weight: float = _f(1.0, "multiplies advantages > 0 (W-REINFORCE uses 0.1: negative-sample reinforcement)", ge=0)
    negative_weight: float = _f(1.0, "multiplies advantages < 0", ge=0)
    tis_cap: float | None = _f(None, "truncated importance sampling: recompute old log-probs in the trainer and weight tokens by min(pi_old/pi_behaviour, cap); null = 2.0 with an engine that holds its own weights (vllm) or with rl.max_staleness > 0 (samples from older weights), else off (the own engine samples from the trainer's weights)", ge=1, le=1e6)
    kl: KLConfig = _sub(KLConfig, "KL regularisation to a frozen reference policy")
    entropy: EntropyConfig = _sub(EntropyConfig, "entropy bonus")
    critic: CriticConfig = _sub(CriticConfig, "value model, used by the gae estimator")

    def __post_init__(self) -> None:
        if self.advantage == "pass_at_k" and self.kl.coef > 0 and self.kl.placement == "reward":
            raise ValueError("the pass_at_k estimator needs 0/1 rewards: use kl.placement=loss")


@dataclass
class ReliftConfig:
    buffer: int = _f(0, "ReLIFT (Ma et al. 2025): buffer the problems no sample of a group solved (accuracy 0) with a demonstration each (the task's solver, as for SFT); once this many are buffered, one fine-tuning update on them, then the buffer empties; 0 = off", ge=0)
    lr: float | None = _f(None, "learning rate of the fine-tuning updates (an AdamW of their own, between RL updates, no warm-up); null = rl.lr. Measured on the default recipe: rl.lr (1e-4) 93.5% held-out, sft.lr (3e-3) 22.5%: a fresh Adam at the SFT rate undoes the warm start", gt=0)


@dataclass
class RLConfig:
    steps: int = _f(60, "RL steps; each samples a fresh batch of prompts", ge=0)
    max_seconds: float = _f(0.0, "also stop RL once its steps have taken this many wall-clock seconds in all (evaluations excluded); 0 = no limit", ge=0)
    skip_zero_gradient: bool = _f(True, "skip the optimizer step of a mini-batch whose gradient is exactly zero (every advantage zero, as when all of its groups' rewards are equal, and no KL, entropy or teacher term): Adam's momentum and weight decay would otherwise keep moving the weights with no signal, so a run whose reward never varies still drifts. Counted in zero_gradient_updates; false = step anyway, as most frameworks do")
    max_samples: int = _f(0, "also stop RL once this many responses have been generated in all (data-filter rounds included: what a step costs, not what it keeps); 0 = no limit. With rl.steps high, an equal-samples budget (rlvr compare --budget samples=N)", ge=0)
    max_tokens: int = _f(0, "also stop RL once this many response tokens have been generated in all (the policy's own tokens: tool output excluded; filter rounds included); 0 = no limit", ge=0)
    prompts_per_step: int = _f(32, "distinct prompts per RL step", ge=1)
    samples_per_prompt: int = _f(8, "responses sampled per prompt (the group size G; a group baseline needs two)", ge=2)
    epochs: int = _f(1, "passes over each rollout batch", ge=1)
    mini_batches: int = _f(2, "optimizer steps per epoch; the batch is split into this many mini-batches", ge=1)
    micro_batch_size: int = _f(64, "sequences per forward/backward pass (gradient accumulation inside a mini-batch)", ge=1)
    lr: float = _f(1e-4, "peak learning rate (after warm-up; then as rl.lr_schedule says)", gt=0)
    warmup_steps: int = _f(0, "linear warm-up length in optimizer steps", ge=0)
    lr_schedule: Literal["constant", "linear", "cosine"] = _f("constant", "after warm-up: constant, or linear / cosine decay to rl.min_lr_ratio x rl.lr at the last of rl.steps' optimizer steps")
    min_lr_ratio: float = _f(0.0, "with linear or cosine decay: the final learning rate as a fraction of rl.lr (verl's min_lr_ratio)", ge=0, le=1)
    weight_decay: float = _f(0.0, "AdamW decoupled weight decay", ge=0)
    grad_clip: float = _f(1.0, "max global gradient norm; 0 disables clipping", ge=0)
    mask_truncated: bool = _f(False, "DAPO overlong filtering: responses cut at max_new_tokens get no gradient")
    max_nonfinite_updates: int = _f(3, "an update whose loss, gradient or inputs (advantages, log-probs) hold NaN/inf is skipped; stop the run after this many skipped in a row (optimizer updates)", ge=1)
    max_staleness: int = _f(0, "asynchronous RL, bounded staleness: 0 = synchronous (each step samples with the weights it trains); k >= 1 = the rollouts of step t+k are generated in a background thread while step t trains, so a step learns from samples up to k weight versions old (each trajectory carries the policy_version it was sampled under; older ones are dropped and counted in stale_dropped) and truncated importance sampling against the engine's log-probs corrects for it (algorithm.tis_cap, 2.0 when null). logprob_gap_* then also measures the policy's change over those versions. Needs an engine that holds its own weights (rollout.engine: vllm, colocated or server); logs staleness_mean/_max, staleness/<s> fractions, stale_dropped, time_generation_background/_overlapped/_wait and overlap_frac", ge=0)
    relift: ReliftConfig = _sub(ReliftConfig, "ReLIFT: fine-tuning on demonstrations of the problems RL fails, interleaved with RL")

    def __post_init__(self) -> None:
        batch = self.prompts_per_step * self.samples_per_prompt
        if batch % self.mini_batches:
            raise ValueError(f"prompts_per_step * samples_per_prompt ({batch}) must be divisible by mini_batches ({self.mini_batches})")


@dataclass
class CurriculumConfig:
    param: str | None = _f(None, "integer task parameter to adapt (e.g. max_digits, or difficulty.num_terms for a reasoning-gym curriculum attribute); null disables the curriculum")
    minimum: int = _f(1, "lowest value the parameter may take", ge=0)
    maximum: int = _f(8, "highest value the parameter may take", ge=0)
    target_low: float = _f(0.3, "lower the difficulty when the mean training pass rate falls below this", ge=0, lt=1)
    target_high: float = _f(0.8, "raise the difficulty when the mean training pass rate rises above this", gt=0, le=1)
    window: int = _f(5, "RL steps averaged before each decision", ge=1)

    def __post_init__(self) -> None:
        if self.minimum > self.maximum:
            raise ValueError(f"minimum ({self.minimum}) must be <= maximum ({self.maximum})")
        if self.target_low >= self.target_high:
            raise ValueError(f"target_low ({self.target_low}) must be < target_high ({self.target_high})")


@dataclass
class DataConfig:
    filter: Literal["none", "dynamic", "pass_rate"] = _f("none", "group filter: dynamic = DAPO dynamic sampling (drop groups with equal rewards); pass_rate = keep groups whose pass rate is in [pass_rate_low, pass_rate_high] (online difficulty filtering)")
    filter_metric: Literal["reward", "correct"] = _f("reward", "dynamic filter: the value that must differ within a group: reward (after shaping) or correct (DAPO's accuracy; verl's filter_groups.metric=acc)")
    pass_rate_low: float = _f(0.25, "pass_rate filter: lowest kept pass rate (fraction of a group correct)", ge=0, le=1)
    pass_rate_high: float = _f(0.75, "pass_rate filter: highest kept pass rate", ge=0, le=1)
    max_rounds: int = _f(3, "with a filter: generation rounds per step to fill rl.prompts_per_step kept groups; then train on what was kept", ge=1)
    prefilter: bool = _f(False, "skip prompts whose tracked pass rate (EMA across steps) is outside the pass_rate band before generating")
    tracker_decay: float = _f(0.5, "EMA decay of the per-prompt pass-rate tracker", ge=0, lt=1)
    fixed_problems: int = _f(0, "few-shot RLVR: train on this many fixed problems, repeated (1 = 'RL with one training example'); 0 draws fresh problems", ge=0)
    include_ids: str | None = _f(None, "JSON file with a list of problem ids (e.g. from `rlvr limr`): train only on those problems of a file-backed task")
    reuse_problems: bool = _f(True, "when the training problems are fewer than a batch asks for (sft.batch_size, rl.prompts_per_step), repeat them within the batch in shuffled passes, as epochs over a small file do (TRL's behaviour), with a warning before the run; false makes it an error")
    curriculum: CurriculumConfig = _sub(CurriculumConfig, "adaptive difficulty for generated tasks")
    max_prompt_length: int | None = _f(None, "longest prompt in tokens, as the model sees it (chat template, system prompt and BOS included): TRL's max_prompt_length, verl's data.max_prompt_length; what a longer one gets is data.overlong_prompts. null: only the model's context bounds a prompt (with rollout.max_new_tokens)", ge=1)
    overlong_prompts: Literal["error", "truncate_left", "drop"] = _f("error", "a prompt longer than max_prompt_length: error (the run stops naming the problem; the held-out split and a sample of training prompts are checked at start-up), truncate_left (keep its last max_prompt_length tokens, as TRL does, in rollouts, SFT and evaluation; each RL step logs prompts_truncated, the fraction of its samples whose prompt was cut), drop (remove such problems from a file-backed task's data before the held-out split is drawn, verl's filter_overlong_prompts; said at start-up)")

    @property
    def prompt_keep_last(self) -> int | None:
        """Tokens a prompt is cut to (its last ones) where prompts are rendered; None: uncut."""
        return self.max_prompt_length if self.overlong_prompts == "truncate_left" else None

    def __post_init__(self) -> None:
        if self.overlong_prompts != "error" and self.max_prompt_length is None:
            raise ValueError(f"overlong_prompts: {self.overlong_prompts} needs max_prompt_length (tokens)")
        if self.pass_rate_low > self.pass_rate_high:
            raise ValueError(f"pass_rate_low ({self.pass_rate_low}) must be <= pass_rate_high ({self.pass_rate_high})")
        if self.fixed_problems and self.include_ids:
            raise ValueError("fixed_problems and include_ids both choose the training problems: set one of them")


@dataclass
class EvalSet:
    """Another task the run is evaluated on alongside its own (TRL's several eval datasets)."""

    task: str = _f("", "registered task name or module:Class to evaluate on (required)")
    params: dict[str, Any] = _f({}, "that task's parameters (its own defaults when empty)")
    name: str = _f("", "label in eval.jsonl, summary.json and the report (default: the task name)")
    problems: int = _f(100, "problems of that task's held-out split", ge=1)

    def __post_init__(self) -> None:
        if not self.task:
            raise ValueError("task is required: the task to evaluate on")
        if not self.name:
            self.name = self.task


@dataclass
class EvalConfig:
    problems: int = _f(200, "held-out problems (drawn with eval.seed, never trained on)", ge=1)
    seed: int = _f(1_000_003, "seed of the held-out split; training draws with run seeds and skips held-out ids", ge=0, lt=2**63)
    samples: int = _f(8, "sampled responses per problem for pass@k (n); 0 evaluates greedy only", ge=0)
    temperature: float = _f(1.0, "sampling temperature for pass@k", gt=0)
    every: int = _f(20, "also evaluate every this many RL steps; 0 only before and after RL", ge=0)
    batch_size: int = _f(256, "sequences generated together during evaluation", ge=1)
    ks: list[int] = _f([], "k values reported for pass@k and maj@k (each <= samples); [] = 1, 2, 4, ... up to samples", ge=1)
    sets: list[EvalSet] = _f([], "more tasks to evaluate on at every evaluation (greedy accuracy, and pass@k with "
                                 "eval.samples), e.g. [{task: countdown, problems: 50}]")

    def __post_init__(self) -> None:
        bad = [k for k in self.ks if not 1 <= k <= self.samples]
        if bad:
            raise ValueError(f"ks: {bad} outside [1, samples = {self.samples}]")
        names = [s.name for s in self.sets]
        if len(set(names)) != len(names):
            raise ValueError(f"sets: two evaluation sets are called {sorted(n for n in names if names.count(n) > 1)[0]!r};"
                             " give them distinct names")


@dataclass
class CheckpointConfig:
    every: int = _f(20, "save a resumable checkpoint every this many steps (SFT and RL)", ge=1)
    keep_last: int = _f(2, "resumable checkpoints kept per stage; older ones are deleted", ge=1)


@dataclass
class DistributedConfig:
    timeout_s: float = _f(1800.0, "longest wait of one collective between trainer ranks (rlvr train --nproc N, torchrun); a rank that stalls or dies ends the others' wait with an error naming the collective, after each rank dumps its stacks", gt=0, le=86400)
    strategy: Literal["replicate", "fsdp"] = _f("replicate", "how trainer ranks hold the model: replicate = every rank holds the whole model and AdamW state, gradients summed across ranks; fsdp = FSDP2 fully_shard per decoder layer (policy, reference, critic): parameters, gradients and AdamW state sharded across ranks, gradients reduce-scattered, mixed precision from model.dtype; rollouts and evaluation sample from a full copy gathered after every update; step checkpoints hold whole HF-format weights and the sharded trainer state (optimizer moments, reference, critic) as torch.distributed.checkpoint files under trainer_shards/, read back resharded, so a run resumes with any number of ranks. One process ignores it")
    launcher: Literal["torchrun", "ray"] = _f("torchrun", "what starts the --nproc trainer ranks: torchrun (this machine; --nnodes/--node-rank for more), or ray: Ray actors in a placement group on the cluster at RAY_ADDRESS (else a local one), pip install -e '.[ray]'")
    ray_cpus_per_rank: float = _f(1.0, "launcher ray: CPUs each rank reserves in its placement-group bundle (a GPU run also reserves one GPU); Ray gives nothing else a reserved CPU", gt=0, le=1024)
    ray_cpus_per_engine: float = _f(1.0, "launcher ray with rollout.vllm.mode server (servers rlvr starts): each vLLM server runs in an actor of its own placement-group bundle with this many CPUs (a GPU run also reserves rollout.vllm.tensor_parallel_size GPUs); servers on other nodes read weights from rollout.vllm.weights_dir, which every node must mount", gt=0, le=1024)


@dataclass
class LoggingConfig:
    samples_per_step: int = _f(8, "completions written to samples.jsonl per RL step, as whole GRPO groups (every "
                               "sample of a prompt, with its reward and advantage) spread over the batch; at least "
                               "one group when > 0", ge=0)
    progress: bool = _f(True, "show a live progress bar")
    backends: list[Literal["tensorboard", "wandb", "mlflow"]] = _f([], "extra metric sinks besides the run directory's JSONL files (optional extras, pip install rlvr[tensorboard|wandb|mlflow]); they write under the run directory and need no network")
    project: str = _f("rlvr", "wandb project / mlflow experiment name the backends file runs under")


# What a stage of a chain may set for itself (``stages: [{rl: {rl.steps: 30}}]``): training
# settings. The model, task, held-out evaluation, seed and machinery stay the run's, so that
# every stage's evaluation measures the same thing and the stages chain one model.
STAGE_SETTINGS = ("sft", "rl", "algorithm", "reward", "rollout", "teacher", "data", "verifier", "checkpoint",
                  "model.lora")


@dataclass
class RunConfig:
    seed: int = _f(0, "seed of everything random in the run (weights, data, sampling)", ge=0, lt=2**63)
    stages: list[Literal["sft", "rl"] | dict[Literal["sft", "rl"], dict[str, Any]]] = _f(["sft", "rl"], "pipeline stages in order: sft and rl, any number in any order ([sft, rl, sft, rl]; [rl, sft] as Metis-RISE); an entry {rl: {rl.steps: 30, rl.lr: 1.0e-6}} gives that stage its own settings (dotted fields under " + ", ".join(STAGE_SETTINGS) + "). A chain other than [sft], [rl] or [sft, rl] runs each stage as a run directory of its own under <run>/stages/ (stage 1 with the run's seed, each later one with a seed derived from it), starting from the previous stage's result, and gathers their records into the run's")
    output_dir: str = _f("runs", "parent directory of run directories")
    run_name: str | None = _f(None, "run directory name; null uses <recipe>-<timestamp>")
    device: str = _f("auto", "where the model runs: auto (cuda when a GPU is visible, else cpu), cpu, cuda, or cuda:N")
    threads: int = _f(0, "torch CPU threads; 0 uses every core (OpenMP crashes on absurd counts such as 100000)", ge=0, le=1024)
    model: ModelConfig = _sub(ModelConfig, "the policy model")
    task: TaskConfig = _sub(TaskConfig, "the task and its verifier")
    reward: RewardConfig = _sub(RewardConfig, "how scores become the scalar reward")
    verifier: VerifierConfig = _sub(VerifierConfig, "where and how answers are checked")
    sft: SFTConfig = _sub(SFTConfig, "supervised warm start")
    rollout: RolloutConfig = _sub(RolloutConfig, "sampling of responses")
    algorithm: AlgorithmConfig = _sub(AlgorithmConfig, "advantage estimator, policy loss and KL")
    rl: RLConfig = _sub(RLConfig, "the RL training recipe")
    teacher: TeacherConfig = _sub(TeacherConfig, "a teacher model: KDRL (GRPO + reverse KL to the teacher) and on-policy distillation")
    data: DataConfig = _sub(DataConfig, "which prompts RL trains on")
    eval: EvalConfig = _sub(EvalConfig, "held-out evaluation")
    checkpoint: CheckpointConfig = _sub(CheckpointConfig, "checkpointing for resume")
    logging: LoggingConfig = _sub(LoggingConfig, "metrics, samples and progress display")
    distributed: DistributedConfig = _sub(DistributedConfig, "trainer ranks (rlvr train --nproc N, or torchrun): data parallel, gloo on CPU, NCCL on GPU")

    def stage_kinds(self) -> list[str]:
        """The kind of each entry of ``stages`` ('sft' or 'rl'), in order."""
        return [entry if isinstance(entry, str) else next(iter(entry)) for entry in self.stages]

    def is_chain(self) -> bool:
        """True when ``stages`` is more than the one-directory pipeline ([sft], [rl], [sft, rl]
        with no per-stage settings): repeated stages, RL before SFT, or settings per stage."""
        return any(isinstance(entry, dict) for entry in self.stages) or \
            self.stage_kinds() not in (["sft"], ["rl"], ["sft", "rl"])

    def stage_config(self, index: int) -> "RunConfig":
        """The whole config stage ``index`` (0-based) of a chain runs with: its own settings on
        top of the run's, ``stages`` just its kind, and the run's seed for the first stage and
        a seed derived from it (and the index) for each later one, so that a repeated stage
        draws other problems and samples than the first."""
        from rlvr.seeding import derive_seed

        entry = self.stages[index]
        kind = entry if isinstance(entry, str) else next(iter(entry))
        settings = {} if isinstance(entry, str) else entry[kind]
        where = f"stages[{index}] ({kind})"
        if isinstance(entry, dict) and len(entry) != 1:
            raise ValueError(f"{where}: a stage with settings is one kind and its settings, "
                             f"{{{kind}: {{rl.steps: 30}}}}, not {len(entry)} keys")
        if not isinstance(settings, dict):
            raise ValueError(f"{where}: expected a mapping of dotted fields to values, got {settings!r}")
        data = to_dict(self)
        data["stages"] = [kind]
        if index:
            data["seed"] = derive_seed(self.seed, "stage", index) % 2**31
        for key, value in settings.items():
            if not any(key == allowed or key.startswith(allowed + ".") for allowed in STAGE_SETTINGS):
                raise ValueError(f"{where}: {key!r} cannot differ between stages; a stage may set fields under "
                                 + ", ".join(STAGE_SETTINGS))
            node = data
            parts = key.split(".")
            for part in parts[:-1]:
                if not isinstance(node.get(part), dict):
                    raise ValueError(f"{where}: {key!r} is not a field")
                node = node[part]
            node[parts[-1]] = value
        try:
            return from_dict(RunConfig, data, source=where)
        except ConfigError as err:
            raise ValueError(str(err)) from None

    def tis_cap(self) -> float | None:
        """``algorithm.tis_cap``, or its default for the engine: 2.0 with vllm (its log-probs
        come from another copy of the weights and another kernel) or with rl.max_staleness > 0
        (samples from older weights), None otherwise."""
        if self.algorithm.tis_cap is not None:
            return self.algorithm.tis_cap
        return DEFAULT_TIS_CAP if self.rollout.engine == "vllm" or self.rl.max_staleness > 0 else None

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError("stages must name at least one stage")
        if self.is_chain():
            for index in range(len(self.stages)):
                self.stage_config(index)  # every stage's settings checked now, not when it starts
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.algorithm.pass_k > self.rl.samples_per_prompt:
            raise ValueError("algorithm.pass_k must be <= rl.samples_per_prompt")


def _params_follow_the_task(overrides: Sequence[str]) -> Callable[[dict[str, Any], dict[str, Any]], None]:
    """A task named without its ``params`` starts from that task's own defaults, not from the
    recipe's task's: addition's ``min_digits`` means nothing to countdown. That holds for a
    recipe file's ``task.name`` and for a ``task.name=...`` override that names another task
    than the recipe's without also setting ``task.params``."""
    keys = [item.partition("=")[0].strip() for item in overrides]
    named_here = "task.name" in keys and not any(k in ("task", "task.params") or k.startswith("task.params.")
                                                 for k in keys)

    def adjust(data: dict[str, Any], recipe: dict[str, Any]) -> None:
        task = data.get("task")
        if not isinstance(task, dict) or "name" not in task:
            return
        if "params" not in task:
            if task["name"] != TaskConfig.name:
                task["params"] = {}
        elif named_here:
            recipe_task = recipe.get("task") or {}
            if task["name"] != (recipe_task.get("name", TaskConfig.name) if isinstance(recipe_task, dict) else None):
                task["params"] = {}

    return adjust


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Defaults, then the YAML file at ``path`` (if any), then ``key.sub=value`` overrides."""
    return load_yaml_config(RunConfig, path, overrides, adjust=_params_follow_the_task(overrides))


def save_config(config: RunConfig, path: str | Path) -> None:
    dump_yaml(config, path)
