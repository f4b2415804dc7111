"""The forward passes of a sampling loop: one prefill over the prompts, then one decode step
per generated token, with a KV cache whose rows can be dropped, repeated or copied
(``keep``) as samples finish or fork.

``LlamaStepper`` runs Llama-layout models (Llama, Qwen2, Mistral without a sliding window)
directly on the Hugging Face model's weights with a preallocated cache: the same math as the
model's forward in about 20 tensor ops per layer (fused QKV and gate/up projections, norm
weights and the attention scale folded into them, a one-pass RMS, rotary embeddings as one
complex multiply from a table built once, attention over the filled part of the cache). On a
CPU in float32 its projections and LM head use weights prepacked for oneDNN once per call
(``Projection``), 2-3.5x the default matmul's throughput at decode shapes.
At small batch x model sizes a decode step through ``model(...)`` spends most of its time in
Python (mask construction, cache bookkeeping, module dispatch), not in matmuls; this removes
that overhead on CPU and GPU alike. ``HFStepper`` calls the model itself and serves every
other architecture. Both produce the model's logits within float tolerance (tests compare
them with the model's full forward and with ``generate``).
"""

from __future__ import annotations

import os
import warnings

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import DynamicCache, PreTrainedModel

_LLAMA_LAYOUT = {"llama", "qwen2", "mistral"}
_TABLE_ROPE = {"default", "linear", "llama3", "yarn"}  # rope types whose cos/sin depend only on the position


class HFStepper:
    """Any causal LM through its own forward and a ``DynamicCache``."""

    def __init__(self, model: PreTrainedModel) -> None:
        self.model = model
        self.cache = DynamicCache()

    def prefill(self, input_ids: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=valid.long(), position_ids=positions,
                         past_key_values=self.cache, use_cache=True)
        self.cache = out.past_key_values
        return out.logits[:, -1, :]

    def decode(self, token_ids: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return self.prefill(token_ids[:, None], positions[:, None], valid)

    def keep(self, rows: torch.Tensor) -> None:
        self.cache.batch_select_indices(rows)


class Projection:
    """``F.linear(x, weight, bias)``, with the weight prepacked for oneDNN when ``pack``: on a
    CPU in float32 that is 2-3.5x the throughput of the default (MKL) matmul at decode shapes
    (64 rows x 512 -> 5120: 464 against 129 GFLOP/s on this project's AMD machine, where MKL
    takes a slow path; benchmarks/README.md), the same fp32 math in another summation order.
    The packing is done once per sampling call (the weights change between calls)."""

    __slots__ = ("weight", "bias", "packed")

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, pack: bool, rows: int) -> None:
        self.weight, self.bias, self.packed = weight, bias, None
        if pack:
            try:
                self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), max(1, rows))
            except (RuntimeError, AttributeError):  # an op this torch build lacks: the plain path
                self.packed = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)


def packing_pays(weight: torch.Tensor) -> bool:
    """Prepacked oneDNN projections (``Projection``): on a CPU, in float32 outside autocast,
    where oneDNN is built in (``RLVR_PACKED_LINEAR=0`` turns them off)."""
    return (weight.device.type == "cpu" and weight.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
            and torch.backends.mkldnn.is_available() and os.environ.get("RLVR_PACKED_LINEAR", "1") != "0")


@dataclass
class _Layer:
    qkv: Projection
    o: Projection
    gate_up: Projection
    down: Projection


def base_linear(module: torch.nn.Module) -> torch.nn.Linear:
    """The plain Linear of a projection: itself, or the one a peft LoRA layer wraps."""
    return module.base_layer if hasattr(module, "lora_A") else module


def lora_adapters(module: torch.nn.Module) -> list[tuple[torch.nn.Module, torch.nn.Module, float, torch.nn.Module]]:
    """The adapters a peft LoRA layer adds to its Linear's output, as peft's forward applies
    them (B(A(dropout(x))) * scaling per active adapter): none for a plain Linear, for
    disabled adapters (the KL reference of a LoRA run) or for merged ones (already in the
    Linear's weight)."""
    if not hasattr(module, "lora_A") or module.disable_adapters or module.merged:
        return []
    return [(module.lora_A[name], module.lora_B[name], module.scaling[name], module.lora_dropout[name])
            for name in module.active_adapters if name in module.lora_A]


def projection_reason(module: torch.nn.Module) -> str | None:
    """Why the fast paths cannot read ``module`` as a linear map (None when they can): a plain
    Linear, or a plain LoRA adapter (peft's vanilla LoRA, no bias on B) over one."""
    if type(module) is torch.nn.Linear:
        return None
    if hasattr(module, "lora_A") and type(getattr(module, "base_layer", None)) is torch.nn.Linear:
        if any(name in getattr(module, "lora_variant", {}) for name in module.active_adapters):
            return "a LoRA variant (DoRA and the like) adapts a projection"
        if any(B.bias is not None for _, B, _, _ in lora_adapters(module)):
            return "a LoRA adapter has a bias (lora_bias)"
        return None
    return "a projection is neither a plain Linear nor a LoRA adapter over one (a quantised layer?)"


def effective_weight(module: torch.nn.Module) -> torch.Tensor:
    """The weight a projection applies: its Linear's, plus each active LoRA adapter's
    scaling * B A (what peft merges); no gradient (the decoder's snapshot)."""
    weight = base_linear(module).weight
    adapters = lora_adapters(module)
    if not adapters:
        return weight
    with torch.no_grad():
        delta = sum(module.get_delta_weight(name) for name in module.active_adapters if name in module.lora_A)
        return weight + delta.to(weight.dtype)


def lora_term(x: torch.Tensor, module: torch.nn.Module) -> torch.Tensor | None:
    """What a projection's LoRA adapters add to its output for input ``x`` (peft's own
    computation, gradients to A and B included), or None without adapters."""
    out = None
    for A, B, scaling, dropout in lora_adapters(module):
        term = B(A(dropout(x.to(A.weight.dtype)))) * scaling
        out = term if out is None else out + term
    return out


def fused_bias(*linears: torch.nn.Module) -> torch.Tensor | None:
    """The bias of the projections' fused matmul (zeros for those without one), or None."""
    linears = tuple(base_linear(lin) for lin in linears)
    if all(lin.bias is None for lin in linears):
        return None
    if len(linears) == 1:
        return linears[0].bias
    return torch.cat([lin.bias if lin.bias is not None else lin.weight.new_zeros(lin.out_features)
                      for lin in linears])


def inverse_rms(x: torch.Tensor, eps: float) -> torch.Tensor:
    """1 / sqrt(mean(x^2, last dim) + eps), keeping the dim: one pass over x (a fused norm)
    where ``F.rms_norm`` makes three; the rest works on one number per row."""
    return torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().div_(x.shape[-1]).add_(eps).rsqrt_()


def interleaved_rows(heads: int, head_dim: int) -> torch.Tensor:
    """Row order of a q/k projection that puts each rotary pair (i, i + head_dim/2) side by
    side, so the rotation is one complex multiply. q.k is unchanged when q and k are
    permuted alike, so attention sees the same scores."""
    half = head_dim // 2
    within = torch.stack([torch.arange(half), torch.arange(half) + half], dim=-1).reshape(-1)
    return (torch.arange(heads)[:, None] * head_dim + within).reshape(-1)


def _rotate(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of interleaved heads x [..., D] by rotation [..., D/2] (complex)."""
    # float32 (a no-op for float32 weights): complex bf16 does not exist on CUDA, and the
    # rotation is as exact as the position table
    return torch.view_as_real(torch.view_as_complex(x.unflatten(-1, (-1, 2)).float()) * rotation).flatten(-2)


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T, masked) v (q already scaled) with grouped KV heads; written out because
    for one query per row SDPA's CPU kernel is slower than two batched matmuls."""
    if k.shape[1] != q.shape[1]:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    scores = torch.matmul(q, k.transpose(-1, -2)).masked_fill_(~mask, float("-inf"))
    return torch.matmul(scores.softmax(-1), v)


class LlamaStepper:
    """Llama-layout decoding on the model's weights with a static KV cache of ``capacity``
    positions for ``batch`` rows. Build it per ``generate`` call (it snapshots the weights).

    The snapshot folds what is constant per call into the projections, to save tensor ops
    per decode step: the RMSNorm weights into the matmul that reads the norm (diag(w) W^T),
    the attention scale 1/sqrt(d) into the query rows, and the rotary pairs of q and k laid
    side by side (``interleaved_rows``) so the rotation is one complex multiply. The cached
    keys are in that layout too."""

    @staticmethod
    def supports(model: PreTrainedModel) -> bool:
        return LlamaStepper.unsupported_reason(model) is None

    @staticmethod
    def unsupported_reason(model: PreTrainedModel) -> str | None:
        """Why this decoder cannot run ``model`` exactly (None when it can)."""
        cfg = model.config
        inner = getattr(model, "model", None)
        if cfg.model_type not in _LLAMA_LAYOUT or inner is None:
            return f"model type {cfg.model_type!r} is not of the Llama layout"
        if getattr(cfg, "hidden_act", None) != "silu":
            return f"activation {getattr(cfg, 'hidden_act', None)!r} is not silu"
        if getattr(cfg, "pretraining_tp", 1) != 1 or getattr(cfg, "use_sliding_window", False) or (
                cfg.model_type == "mistral" and getattr(cfg, "sliding_window", None) is not None):
            return "sliding-window attention or tensor-parallel pretraining slices"
        if any(kind != "full_attention" for kind in getattr(cfg, "layer_types", None) or []):
            return "some layers are not full attention"
        rope = getattr(getattr(inner, "rotary_emb", None), "rope_type", None)
        if rope not in _TABLE_ROPE:
            return f"rope type {rope!r}"
        try:  # plain Linear layers only: adapters or quantised layers would be read wrongly
            norms = [inner.norm] + [n for layer in inner.layers
                                    for n in (layer.input_layernorm, layer.post_attention_layernorm)]
            linears = [getattr(part, name) for layer in inner.layers
                       for part, names in ((layer.self_attn, ("q_proj", "k_proj", "v_proj", "o_proj")),
                                           (layer.mlp, ("gate_proj", "up_proj", "down_proj")))
                       for name in names]
        except AttributeError:
            return "the layers are not named like Llama's"
        for lin in linears:
            reason = projection_reason(lin)
            if reason is not None:
                return reason
        if type(inner.embed_tokens) is not torch.nn.Embedding:
            return "the token embedding is not a plain Embedding (an adapter on it?)"
        if not all(type(n).__name__.endswith("RMSNorm") and hasattr(n, "variance_epsilon") for n in norms):
            return "a norm is not an RMSNorm"
        return None

    def __init__(self, model: PreTrainedModel, batch: int, capacity: int, max_rows: int | None = None,
                 storage: list[torch.Tensor] | None = None) -> None:
        cfg, inner = model.config, model.model
        self.heads = cfg.num_attention_heads
        self.kv_heads = getattr(cfg, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        self.eps = inner.norm.variance_epsilon
        self.embed = inner.embed_tokens.weight
        self.norm = inner.norm.weight
        self.head = model.lm_head  # a module: keeps whatever it is (bias, custom heads in tests)
        weight = self.embed
        qk_width = (self.heads + self.kv_heads) * self.head_dim
        rows = torch.cat([interleaved_rows(self.heads + self.kv_heads, self.head_dim),
                          torch.arange(qk_width, qk_width + self.kv_heads * self.head_dim)]).to(weight.device)
        row_scale = torch.ones(len(rows), dtype=weight.dtype, device=weight.device)
        row_scale[: self.heads * self.head_dim] = self.head_dim ** -0.5
        self.layers = []
        pack = packing_pays(weight)
        for layer in inner.layers:
            attn, mlp = layer.self_attn, layer.mlp
            qkv_b = fused_bias(attn.q_proj, attn.k_proj, attn.v_proj)
            qkv_w = torch.cat([effective_weight(attn.q_proj), effective_weight(attn.k_proj),
                               effective_weight(attn.v_proj)])
            self.layers.append(_Layer(
                qkv=Projection((qkv_w[rows] * row_scale[:, None]) * layer.input_layernorm.weight,
                               None if qkv_b is None else qkv_b[rows] * row_scale, pack, batch),
                o=Projection(effective_weight(attn.o_proj), fused_bias(attn.o_proj), pack, batch),
                gate_up=Projection(torch.cat([effective_weight(mlp.gate_proj), effective_weight(mlp.up_proj)])
                                   * layer.post_attention_layernorm.weight, fused_bias(mlp.gate_proj, mlp.up_proj),
                                   pack, batch),
                down=Projection(effective_weight(mlp.down_proj), fused_bias(mlp.down_proj), pack, batch),
            ))
        if pack and type(self.head) is torch.nn.Linear:  # the LM head: the largest matmul of a decode step
            self.head = Projection(self.head.weight, self.head.bias, pack, batch)
        cos, sin = inner.rotary_emb(weight, torch.arange(capacity, device=weight.device)[None])
        half = self.head_dim // 2
        self.rotation = torch.complex(cos[0, :, :half], sin[0, :, :half])  # [capacity, D/2]; HF repeats the halves
        # One [2 (keys, values), rows, kv heads, positions, head dim] buffer per layer for the
        # whole call (``max_rows``: the most rows ``keep`` will ask for; the live rows are its
        # first ones), reusing ``storage`` from an earlier call when it is large enough:
        # fresh buffers cost more in first-touch page faults than the copies into them.
        shape = (2, max(batch, max_rows or 0), self.kv_heads, capacity, self.head_dim)
        # under autocast the cache holds the compute dtype (bf16 keys and values: half the memory)
        device_type = weight.device.type
        dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else weight.dtype
        fits = storage is not None and len(storage) == len(self.layers) and all(
            s.dtype == dtype and s.device == weight.device and s.shape[2] == shape[2]
            and s.shape[4] == shape[4] and s.shape[1] >= shape[1] and s.shape[3] >= shape[3] for s in storage)
        self.storage = storage if fits else [weight.new_empty(shape, dtype=dtype) for _ in self.layers]
        self.buffers = [s[:, :shape[1], :, :capacity] for s in self.storage]
        self._view(batch)
        self.filled = 0

    def _forward(self, token_ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """token_ids, positions: [B, T] for cache columns filled..filled+T; mask: [B, 1, T, filled+T]
        (True = attend). Returns the last position's logits [B, V]."""
        batch, length = token_ids.shape
        start, end = self.filled, self.filled + length
        h = F.embedding(token_ids, self.embed)
        rotation = self.rotation[positions].unsqueeze(1)  # [B, 1, T, D/2]
        qk_heads = self.heads + self.kv_heads
        for layer, keys, values in zip(self.layers, self.keys, self.values):
            x = h * inverse_rms(h, self.eps)  # the norm's weight is folded into qkv_w
            qkv = layer.qkv(x).view(batch, length, qk_heads + self.kv_heads, self.head_dim)
            qkv = qkv.transpose(1, 2)  # [B, heads, T, D]
            qk = _rotate(qkv[:, :qk_heads], rotation)
            keys[:, :, start:end] = qk[:, self.heads:]
            values[:, :, start:end] = qkv[:, qk_heads:]
            attn = _attention(qk[:, :self.heads], keys[:, :, :end], values[:, :, :end], mask)
            attn = attn.transpose(1, 2).reshape(batch, length, self.heads * self.head_dim)
            h = h + layer.o(attn)
            x = h * inverse_rms(h, self.eps)
            gate, up = layer.gate_up(x).chunk(2, dim=-1)
            h = h + layer.down(F.silu(gate) * up)
        self.filled = end
        last = h[:, -1]
        return self.head(last * inverse_rms(last, self.eps) * self.norm)

    def prefill(self, input_ids: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """valid: [B, T] True where the (left-padded) prompt has a token."""
        length = input_ids.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=valid.device).tril()
        # padding queries attend to themselves only, so no softmax row is empty
        mask = causal & (valid[:, None, :] | torch.eye(length, dtype=torch.bool, device=valid.device))
        return self._forward(input_ids, positions, mask[:, None])

    def decode(self, token_ids: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """token_ids, positions: [B]; valid: [B, filled + 1]."""
        return self._forward(token_ids[:, None], positions[:, None], valid[:, None, None, :])

    def _view(self, rows: int) -> None:
        self.keys = [buffer[0, :rows] for buffer in self.buffers]
        self.values = [buffer[1, :rows] for buffer in self.buffers]

    def keep(self, rows: torch.Tensor) -> None:
        """Make row i of the cache what row ``rows[i]`` was: drop rows, repeat them, append
        copies (up to ``max_rows``). Only the filled columns are copied, and none of a
        leading run of rows that stay where they are (appending forks copies just those)."""
        capacity = self.buffers[0].shape[1]
        if len(rows) > capacity:
            raise ValueError(f"keep: {len(rows)} rows asked of a cache built for {capacity}")
        live = self.keys[0].shape[0]
        span = min(len(rows), live)
        unchanged = int((rows[:span] == torch.arange(span, device=rows.device)).long().cumprod(0).sum())
        if unchanged < len(rows):
            for cache in (c for buffer in self.buffers for c in buffer):  # keys, values
                cache[unchanged:len(rows), :, :self.filled] = cache[:live, :, :self.filled].index_select(
                    0, rows[unchanged:])
        self._view(len(rows))


def make_stepper(model: PreTrainedModel, batch: int, capacity: int, max_rows: int | None = None,
                 storage: list[torch.Tensor] | None = None) -> LlamaStepper | HFStepper:
    """The fastest stepper that supports ``model``: ``batch`` rows to prefill, ``capacity``
    positions, at most ``max_rows`` rows after a ``keep`` (default ``batch``), and an earlier
    ``LlamaStepper``'s ``storage`` to reuse for the KV cache if it is large enough."""
    reason = LlamaStepper.unsupported_reason(model)
    if reason is None:
        return LlamaStepper(model, batch, capacity, max_rows, storage)
    warn_fallback("the KV-cache decoder", reason)
    return HFStepper(model)


_FALLBACKS_SAID: set[tuple[str, str]] = set()


def warn_fallback(fast_path: str, reason: str) -> None:
    """Say once per process, fast path and reason that a fast path gave way to the model's own
    forward: the result is the same, only slower. (Python's own filter says it once per
    calling line, and the packed forward has several callers.)"""
    if (fast_path, reason) in _FALLBACKS_SAID:
        return
    _FALLBACKS_SAID.add((fast_path, reason))
    warnings.warn(f"rlvr: {fast_path} uses the model's own forward: {reason}", RuntimeWarning, stacklevel=3)
