"""FastV inside the LLM: pooling "fastv" (Chen et al., "An Image is Worth 1/2 Tokens After Layer 2",
ECCV 2024; issue #16, DESIGN.md section 5).

Every video token enters the LLM. Layers 0..K-1 (K = `fastv_layer`) run on the whole sequence; the
attention that the last prompt token pays each video token in layer K-1 (mean over heads) ranks each
video's tokens (`ops.fastv_keep`, the rule of `ops.fastv_select`); the hidden states of all but the top
`budget` are dropped, and layers K.. run on the shorter sequence, the kept tokens at their ORIGINAL
position ids (RoPE), with the attention mask shortened to match. In generation the KV cache holds the
whole sequence in layers < K and only the kept tokens from layer K on (`FastVCache`); new tokens take
position ids that continue from the full length, and each layer's mask is as long as its own cache.

How it runs: the kit runs the decoder layers itself (`prefill`, `decode`): one causal mask and one RoPE
table for layers < K, another pair for layers >= K, each mask made by transformers' `create_causal_mask`
against that group's own cache layer. `PPLLaVA.forward` calls `causal_lm_forward`; `PPLLaVA.generate`
installs `decoder_forward` as the decoder's forward for the call (`installed`), so transformers'
`generate` (greedy, sampling, stopping criteria, streamers) drives it. Llama and Qwen2 decoders both
work (their layers share one signature); Qwen2's sliding-window layers are refused.

Where the kit follows FastV's code (github.com/pkunlp-icler/FastV, `LlamaModel.fastv_forward` in
src/FastV/llava-hf/transformers/src/transformers/models/llama/modeling_llama.py, its KV-cache version):
- the ranking: layer K-1's attention, the last query's row, mean over heads, over the visual positions;
  kept tokens go on in their original order (FastV sorts `keep_indexs`), every text token is kept;
- the pruning: hidden states gathered before layer K, `position_ids = keep_indexs` (original positions),
  a causal mask rebuilt for the shorter sequence;
- the cache: layers >= K cache only the kept tokens (its `cache_position[:new_seq_length]`), and a
  decoding step's position continues from the full length (its `past_seen_tokens` reads layer 0's cache).
Where it departs:
- the budget: a count per video (`video_token_budget`, by default prompt pooling's count, the equal
  budget of issue #16) instead of round(L * (1 - R)) tokens of one image span at a fixed start index;
  each video of a sample ranks its own tokens, so every video keeps exactly its budget;
- the attention row is computed for the one query from layer K-1's own projections (equal to eager
  `output_attentions` to float tolerance: tests/test_fastv.py), so every layer keeps its attention
  implementation (sdpa) and the L x L map is never built; the row stays in float32 (FastV averages the
  model dtype's probabilities, where bf16 makes ties), and ties go to the lower index (topk's: unspecified);
- the query: each sample's last prompt token (its last non-padding position; with labels, the position
  before the first labelled token, where a generation's prompt ends, so training ranks as inference
  does and the answer does not choose the tokens), where FastV takes position -1 of a batch of one;
  batches with left or right padding work, each sample ranked at its own positions, and decoding masks
  each layer against its own cache (FastV reuses the full-length mask: a batch of one, no padding only);
- samples of one batch whose videos drop different numbers of tokens (one video beside two) are
  left-filled to one length with masked slots (`Pruned.valid`), as left padding is.
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Iterator, NamedTuple, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers.cache_utils import DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb  # Qwen2's is the same function

from ppllava.ops.compression import fastv_keep


class Plan(NamedTuple):
    """What the prefill reads besides the hidden states, one row per sample of the prompt.

    video (`torch.BoolTensor` of shape `(B, L)`): the video token positions.
    query (`torch.LongTensor` of shape `(B,)`): the position whose attention ranks (the last prompt token).
    tokens: each video's tokens in the input (T*g*g); budget: how many of them layers >= `layer` keep.
    """

    video: torch.Tensor
    query: torch.Tensor
    tokens: int
    budget: int
    layer: int

    def rows(self, batch: int) -> "Plan":
        """The plan for `batch` rows: `generate` repeats each prompt for num_return_sequences or beams."""
        have = self.video.shape[0]
        if batch == have:
            return self
        if batch % have:
            raise ValueError(f"fastv: {batch} rows for a plan of {have} prompts")
        return self._replace(video=self.video.repeat_interleave(batch // have, 0),
                             query=self.query.repeat_interleave(batch // have, 0))


def make_plan(input_ids: torch.Tensor, video_token_id: int, attention_mask: Optional[torch.Tensor],
              labels: Optional[torch.Tensor], tokens: int, budget: int, layer: int) -> Plan:
    """The plan of a batch: its query is each sample's last prompt token, the position before the first
    labelled token (labels[:, 1:] != -100) when the sample has labels, else its last non-padding position.
    A ValueError names the samples whose query is a video token (FastV ranks by a text token's attention)."""
    B, L = input_ids.shape
    positions = torch.arange(L, device=input_ids.device).expand(B, L)
    real = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    query = torch.where(real, positions, -1).amax(1)
    if labels is not None:
        answer = labels[:, 1:] != -100
        first = torch.where(answer, positions[:, : L - 1], L).amin(1)  # labels[:, j + 1] is predicted at j
        query = torch.where(answer.any(1), first, query)
    video = input_ids == video_token_id
    bad = (query < 0) | video.gather(1, query.clamp_min(0)[:, None])[:, 0]
    if bool(bad.any()):
        raise ValueError(f"pooling 'fastv' ranks video tokens by the attention of each sample's last prompt token, which "
                         f"is a video token (or padding) in sample(s) {bad.nonzero().flatten().tolist()}: end the prompt "
                         "with text")
    return Plan(video, query, tokens, budget, layer)


class Pruned(NamedTuple):
    """Which positions of a sequence of `length` layers >= K hold, row by row.

    index (`torch.LongTensor` of shape `(B, L')`): original positions, ascending, after filler slots on
        the left where a row keeps fewer than L' (its videos dropped more tokens than another row's).
    valid (`torch.BoolTensor` of shape `(B, L')`): False at the fillers, which every mask leaves out.
    """

    index: torch.Tensor
    valid: torch.Tensor
    length: int

    @property
    def kept(self) -> torch.Tensor:
        """(B, length) bool: the positions layers >= K hold."""
        B = self.index.shape[0]
        slot = torch.where(self.valid, self.index, self.length)  # fillers to a spare column, cut below
        out = torch.zeros(B, self.length + 1, dtype=torch.bool, device=self.index.device)
        return out.scatter(1, slot, self.valid)[:, : self.length]

    def rows(self, index: torch.Tensor) -> "Pruned":
        return self._replace(index=self.index[index.to(self.index.device)], valid=self.valid[index.to(self.valid.device)])


def pack(keep: torch.Tensor) -> Pruned:
    """keep (B, L) bool -> `Pruned`: each row's kept positions in order, left-filled to the longest row."""
    B, L = keep.shape
    count = keep.sum(1, keepdim=True)
    width = int(count.max())
    slot = torch.where(keep, width - count + keep.cumsum(1) - 1, width)  # dropped positions: spare column
    positions = torch.arange(L, device=keep.device).expand(B, L)
    index = torch.zeros(B, width + 1, dtype=torch.long, device=keep.device).scatter(1, slot, positions)[:, :width]
    valid = torch.zeros(B, width + 1, dtype=torch.bool, device=keep.device).scatter(1, slot, keep)[:, :width]
    return Pruned(index, valid, L)


def select(attention: torch.Tensor, video: torch.Tensor, tokens: int, budget: int) -> Pruned:
    """attention (B, L): the query's attention over the sequence; video (B, L) bool, each row's video
    tokens in runs of `tokens` per video -> the positions layers >= K keep: every non-video position and
    each video's `budget` tokens of highest attention."""
    counts = video.sum(1)
    if bool((counts % tokens).any()):
        raise ValueError(f"fastv: the video tokens per sample {counts.tolist()} are not whole videos of {tokens} tokens")
    keep = ~video
    if bool(video.any()):
        ranked = fastv_keep(attention[video].view(-1, tokens), budget)  # (videos, budget), row-major order
        chosen = torch.zeros(ranked.shape[0], tokens, dtype=torch.bool, device=video.device).scatter(1, ranked, True)
        keep = keep.masked_scatter(video, chosen)
    return pack(keep)


def query_attention(layer: nn.Module, hidden: torch.Tensor, rope: Tuple[torch.Tensor, torch.Tensor],
                    attention_mask: Optional[torch.Tensor], query: torch.Tensor) -> torch.Tensor:
    """The attention row of position `query` (B,) in decoder `layer`, whose input is hidden (B, L, D),
    mean over heads: (B, L) float32.

    From the layer's own projections, as transformers' eager attention computes it (scores in the
    model dtype, masked, softmax in float32): keys after `query` and padding (attention_mask 0) get no
    weight. Only the one query row: the L x L map is never built."""
    attn = layer.self_attn
    normed = layer.input_layernorm(hidden)
    B, L, _ = normed.shape
    rows = torch.arange(B, device=hidden.device)
    cos, sin = (t.expand(B, -1, -1) for t in rope)  # (B, L, hd)
    q = attn.q_proj(normed[rows, query]).view(B, 1, -1, attn.head_dim).transpose(1, 2)  # (B, h, 1, hd)
    k = attn.k_proj(normed).view(B, L, -1, attn.head_dim).transpose(1, 2)  # (B, hk, L, hd)
    q = apply_rotary_pos_emb(q, q, cos[rows, query][:, None], sin[rows, query][:, None])[0]
    k = apply_rotary_pos_emb(k, k, cos, sin)[1]
    if attn.num_key_value_groups > 1:  # transformers' repeat_kv: query head i reads key head i // groups
        k = k.repeat_interleave(attn.num_key_value_groups, dim=1)
    scores = torch.matmul(q, k.transpose(2, 3)) * attn.scaling  # (B, h, 1, L)
    allowed = torch.arange(L, device=hidden.device)[None] <= query[:, None]
    if attention_mask is not None:
        allowed = allowed & attention_mask[:, :L].bool()
    scores = scores.masked_fill(~allowed[:, None, None], torch.finfo(scores.dtype).min)
    return scores.softmax(-1, dtype=torch.float32).mean(1)[:, 0]


class FastVCache(DynamicCache):
    """A `DynamicCache` whose layers from `layer` (K) hold only the prompt positions the prefill kept
    (`pruned`, set by it) and the tokens generated since; layers below K hold the whole sequence. Its
    `get_seq_length()` (layer 0's) is the full length, from which new position ids continue."""

    def __init__(self, config, layer: int):
        super().__init__(config=config)
        self.layer = layer
        self.pruned: Optional[Pruned] = None

    def reorder_cache(self, beam_idx: torch.LongTensor):
        super().reorder_cache(beam_idx)
        if self.pruned is not None:
            self.pruned = self.pruned.rows(beam_idx)

    def batch_repeat_interleave(self, repeats: int):
        super().batch_repeat_interleave(repeats)
        if self.pruned is not None:
            self.pruned = self.pruned.rows(torch.arange(self.pruned.index.shape[0]).repeat_interleave(repeats))

    def batch_select_indices(self, indices: torch.Tensor):
        super().batch_select_indices(indices)
        if self.pruned is not None:
            self.pruned = self.pruned.rows(indices)


def _layers(decoder: nn.Module, layer: int) -> nn.ModuleList:
    layers = decoder.layers[: decoder.config.num_hidden_layers]
    if not 1 <= layer < len(layers):
        raise ValueError(f"fastv_layer {layer} must be in [1, {len(layers) - 1}] for an LLM of {len(layers)} layers")
    if any(kind != "full_attention" for kind in getattr(decoder.config, "layer_types", None) or ()):
        raise ValueError("pooling 'fastv' needs full attention in every LLM layer; this one has sliding-window layers")
    return layers


def _run(layers, hidden, mask, rope, position_ids, cache) -> torch.Tensor:
    for layer in layers:
        hidden = layer(hidden, attention_mask=mask, position_embeddings=rope, position_ids=position_ids, cache=cache,
                       use_cache=cache is not None)
    return hidden


def prefill(decoder: nn.Module, plan: Plan, hidden: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
            position_ids: Optional[torch.Tensor] = None,
            cache: Optional[FastVCache] = None) -> Tuple[torch.Tensor, Pruned]:
    """Decoder layers on inputs_embeds `hidden` (B, S, D), pruning before layer K: -> (hidden states after
    the last layer, before the final norm, (B, S', D) at `Pruned.index`; `Pruned`).

    S may exceed the plan's prompt length (a pruned forward recomputed over the prompt and the tokens
    generated so far, without a cache): the extra positions are text, always kept, and the query stays
    the plan's. `position_ids` default to 0..S-1, as the LLM's own forward counts them; `attention_mask`
    (B, S) is the 2D padding mask. With `cache` (empty), layers < K cache every position and layers >= K
    the kept ones."""
    B, S, _ = hidden.shape
    plan = plan.rows(B)
    if S < plan.video.shape[1]:
        raise ValueError(f"fastv: {S} positions for a plan of a {plan.video.shape[1]}-token prompt")
    layers, K = _layers(decoder, plan.layer), plan.layer
    video = F.pad(plan.video, (0, S - plan.video.shape[1]))
    if position_ids is None:
        position_ids = torch.arange(S, device=hidden.device)[None]
    config = decoder.config
    mask = create_causal_mask(config=config, inputs_embeds=hidden, attention_mask=attention_mask, cache=cache,
                              position_ids=position_ids)
    rope = decoder.rotary_emb(hidden, position_ids)
    hidden = _run(layers[: K - 1], hidden, mask, rope, position_ids, cache)
    with torch.no_grad():  # the choice carries no gradient, as in FastV (and every selection op of the kit)
        attention = query_attention(layers[K - 1], hidden, rope, attention_mask, plan.query)
    hidden = _run(layers[K - 1 : K], hidden, mask, rope, position_ids, cache)
    pruned = select(attention, video, plan.tokens, plan.budget)
    hidden = hidden.gather(1, pruned.index[..., None].expand(-1, -1, hidden.shape[-1]))
    position_ids = position_ids.expand(B, S).gather(1, pruned.index)  # the original positions
    short = pruned.valid if attention_mask is None else attention_mask.bool().gather(1, pruned.index) & pruned.valid
    # The shorter group's mask against its own cache layer. No position_ids: with neither mask nor cache,
    # transformers would read their jumps as packed sequences (and a 2D mask is always given here).
    mask = create_causal_mask(config=config, inputs_embeds=hidden, attention_mask=short, cache=cache, layer_idx=K)
    hidden = _run(layers[K:], hidden, mask, decoder.rotary_emb(hidden, position_ids), position_ids, cache)
    if cache is not None:
        cache.pruned = pruned
    return hidden, pruned


def decode(decoder: nn.Module, hidden: torch.Tensor, cache: FastVCache, attention_mask: Optional[torch.Tensor] = None,
           position_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Decoder layers on new tokens `hidden` (B, n, D) after a pruned prefill: layers < K attend to the whole
    cached sequence, layers >= K to the kept prompt positions and every generated token. `attention_mask`
    (B, full length + n) is generate's 2D mask over the whole sequence; position ids continue from the full
    length. -> (B, n, D), before the final norm."""
    B, n, _ = hidden.shape
    pruned, K = cache.pruned, cache.layer
    layers = _layers(decoder, K)
    past = cache.get_seq_length()  # layer 0: the full length
    if position_ids is None:
        position_ids = torch.arange(past, past + n, device=hidden.device)[None]
    if attention_mask is None:
        attention_mask = torch.ones(B, past + n, dtype=torch.bool, device=hidden.device)
    attention_mask = attention_mask.bool()
    config = decoder.config
    full = create_causal_mask(config=config, inputs_embeds=hidden, attention_mask=attention_mask, cache=cache,
                              position_ids=position_ids)
    short = torch.cat([attention_mask[:, : pruned.length].gather(1, pruned.index) & pruned.valid,
                       attention_mask[:, pruned.length :]], dim=1)
    short = create_causal_mask(config=config, inputs_embeds=hidden, attention_mask=short, cache=cache, layer_idx=K)
    rope = decoder.rotary_emb(hidden, position_ids)
    hidden = _run(layers[:K], hidden, full, rope, position_ids, cache)
    return _run(layers[K:], hidden, short, rope, position_ids, cache)


def _refuse(kwargs) -> None:
    asked = sorted(k for k in ("output_attentions", "output_hidden_states") if kwargs.get(k))
    if asked:
        raise ValueError(f"pooling 'fastv' runs the LLM's layers itself and returns no {asked}")


def decoder_forward(decoder: nn.Module, plan: Plan, input_ids=None, attention_mask=None, position_ids=None,
                    cache=None, inputs_embeds=None, use_cache=None, **kwargs) -> BaseModelOutputWithPast:
    """`decoder.forward` (a LlamaModel or Qwen2Model) under fastv, for `installed`: a prefill, or a
    decoding step once the cache holds a pruned prefill. Its last_hidden_state holds the kept positions
    only (B, S', D): `generate` reads the last one, which is always kept."""
    _refuse(kwargs)
    hidden = decoder.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
    use_cache = decoder.config.use_cache if use_cache is None else use_cache
    if cache is not None and not isinstance(cache, FastVCache):
        raise ValueError(f"pooling 'fastv' keeps its KV cache in a FastVCache, got a {type(cache).__name__}")
    if use_cache and cache is None:
        cache = FastVCache(decoder.config, plan.layer)
    if cache is not None and cache.pruned is not None:
        hidden = decode(decoder, hidden, cache, attention_mask, position_ids)
    else:
        hidden = prefill(decoder, plan, hidden, attention_mask, position_ids, cache)[0]
    return BaseModelOutputWithPast(last_hidden_state=decoder.norm(hidden), cache=cache if use_cache else None)


def base_model(language_model: nn.Module) -> nn.Module:
    """The causal LM itself (LlamaForCausalLM / Qwen2ForCausalLM), under peft's LoRA wrapper if any."""
    return language_model.get_base_model() if hasattr(language_model, "get_base_model") else language_model


@contextlib.contextmanager
def installed(language_model: nn.Module, plan: Plan) -> Iterator[None]:
    """Within the block, the LLM's decoder runs `decoder_forward` for `plan` (transformers' `generate`
    calls the decoder through its causal LM's forward). An instance attribute, removed on exit; one
    generation at a time per model."""
    decoder = base_model(language_model).model
    previous = decoder.__dict__.get("forward")
    decoder.forward = functools.partial(decoder_forward, decoder, plan)
    try:
        yield
    finally:
        if previous is None:
            del decoder.forward
        else:
            decoder.forward = previous


@dataclass
class FastVOutput(CausalLMOutputWithPast):
    """`CausalLMOutputWithPast` and `kept` (`torch.BoolTensor` of shape `(B, L)`): the positions layers
    >= K held. Logits stay (B, L, V), aligned with the input; a dropped position has none and reads 0
    (a uniform distribution), and no label is scored from it."""

    kept: Optional[torch.Tensor] = None


def causal_lm_forward(language_model: nn.Module, plan: Plan, inputs_embeds: torch.Tensor,
                      attention_mask: Optional[torch.Tensor] = None, labels: Optional[torch.Tensor] = None,
                      use_cache: Optional[bool] = None, **kwargs) -> FastVOutput:
    """The causal LM's forward under fastv (a prefill): logits (B, L, V) at every kept position, and the
    next-token loss of `labels` as the LM computes it, leaving out any label whose predecessor was dropped
    (none in the kit's templates: text follows every video)."""
    _refuse(kwargs)
    unknown = sorted(k for k in kwargs if k not in ("output_attentions", "output_hidden_states", "return_dict"))
    if unknown:
        raise ValueError(f"pooling 'fastv' takes no LLM arguments {unknown} (it runs the LLM's layers itself)")
    lm = base_model(language_model)
    decoder = lm.model
    use_cache = decoder.config.use_cache if use_cache is None else use_cache
    cache = FastVCache(decoder.config, plan.layer) if use_cache else None
    hidden, pruned = prefill(decoder, plan, inputs_embeds, attention_mask, None, cache)
    short = lm.lm_head(decoder.norm(hidden))  # (B, S', V)
    B, L = inputs_embeds.shape[:2]
    short = short * pruned.valid[..., None]  # a filler slot adds 0 (at position 0); kept positions are unique
    # In place into fresh zeros: an out-of-place scatter would hold a second (B, L, V) copy at the peak.
    logits = short.new_zeros(B, L, short.shape[-1]).scatter_add_(1, pruned.index[..., None].expand_as(short), short)
    kept = pruned.kept
    loss = None
    if labels is not None:
        labels = torch.cat([labels[:, :1], labels[:, 1:].masked_fill(~kept[:, :-1], -100)], dim=1)
        loss = lm.loss_function(logits=logits, labels=labels, vocab_size=lm.config.vocab_size)
    return FastVOutput(loss=loss, logits=logits, cache=cache, kept=kept)
