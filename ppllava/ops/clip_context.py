"""CLIP context extension, 77 -> 248 text positions (DESIGN.md §2, "Context extension").

`extend_clip_positions` is the formula on a bare table; `extend_clip_text_context` applies it
to a text tower of either library (open_clip `CLIP` / `CustomTextCLIP` / `TextTransformer`,
Hugging Face `CLIPModel` / `CLIPTextModel` / `CLIPTextTransformer`), with the first `keep` rows
frozen and the rest a trainable copy. `tokenize_clip_prompts` truncates over-long prompts with a
warning that says how many tokens were dropped.
"""
from __future__ import annotations

import warnings
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ppllava.ops.checks import check_finite

EXTENSION_INITS = ("interpolate", "random")


class ClipPromptTruncated(UserWarning):
    """A CLIP prompt was longer than the text tower's context and lost tokens."""


def extend_clip_positions(table: torch.Tensor, keep: int = 20, factor: int = 4) -> torch.Tensor:
    """Stretch a CLIP position table, LongCLIP-style.

    Rows 0..keep-1 are copied; each gap between P[keep-1+j] and P[keep+j] (j = 1..L-1-keep) is
    filled at 1/factor steps, Q[keep + factor*(j-1) + m] = ((factor-m) P[keep-1+j] + m P[keep+j]) / factor;
    the last `factor` rows extrapolate from P[L-1] by steps of (P[L-1] - P[L-2]) / factor.

    table (`torch.FloatTensor` of shape `(L, D)`) -> `(keep + factor * (L - keep), D)`: (77, D) -> (248, D).
    """
    if table.ndim != 2:
        raise ValueError(f"table must have shape (L, D), got {tuple(table.shape)}")
    length = table.shape[0]
    if not 1 <= keep <= length - 2:
        raise ValueError(f"keep must be in [1, L - 2] = [1, {length - 2}], got {keep}")
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    check_finite(table, "table (CLIP position table)")  # once per extension, never on a hot path
    dtype = torch.promote_types(table.dtype, torch.float32)
    p = table.to(dtype)
    m = torch.arange(factor, dtype=dtype, device=table.device) / factor  # (factor,)
    left, right = p[keep : length - 1], p[keep + 1 :]  # (L-1-keep, D) each
    between = left[:, None] * (1 - m[:, None]) + right[:, None] * m[:, None]  # (L-1-keep, factor, D)
    tail = p[-1] + m[:, None] * (p[-1] - p[-2])  # (factor, D)
    out = torch.cat([p[:keep], between.reshape(-1, p.shape[1]), tail])
    return out.to(table.dtype)


class ExtendedPositionEmbedding(nn.Module):
    """A position table whose first `keep` rows are a frozen buffer and the rest a parameter.

    It reads and writes state dicts as one `weight` of shape (L, D), like `nn.Embedding`, so an
    extended Hugging Face CLIP saves in the standard layout.
    """

    def __init__(self, table: torch.Tensor, keep: int):
        super().__init__()
        self.keep = keep
        self.register_buffer("frozen", table[:keep].detach().clone())
        self.trainable = nn.Parameter(table[keep:].detach().clone())
        self.register_state_dict_post_hook(ExtendedPositionEmbedding._save_as_weight)
        self.register_load_state_dict_pre_hook(ExtendedPositionEmbedding._load_from_weight)

    @property
    def weight(self) -> torch.Tensor:  # (L, D)
        return torch.cat([self.frozen, self.trainable])

    @property
    def num_embeddings(self) -> int:
        return self.keep + self.trainable.shape[0]

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(position_ids, self.weight)

    @staticmethod
    def _save_as_weight(module, state_dict, prefix, local_metadata):
        frozen, trainable = state_dict.pop(prefix + "frozen"), state_dict.pop(prefix + "trainable")
        state_dict[prefix + "weight"] = torch.cat([frozen, trainable.detach()])

    @staticmethod
    def _load_from_weight(module, state_dict, prefix, *args):
        if prefix + "weight" in state_dict:
            weight = state_dict.pop(prefix + "weight")
            if weight.shape[0] != module.num_embeddings:
                raise ValueError(
                    f"{prefix}weight has {weight.shape[0]} positions, the extended table {module.num_embeddings}"
                )
            state_dict[prefix + "frozen"] = weight[: module.keep]
            state_dict[prefix + "trainable"] = weight[module.keep :]


_EXTENDED_CLASSES: dict = {}


def _with_position_property(cls: type) -> type:
    """A subclass of an open_clip module whose `positional_embedding` reads the extended table.

    open_clip uses `self.positional_embedding` as a tensor; a property keeps its code unchanged."""
    if cls not in _EXTENDED_CLASSES:
        _EXTENDED_CLASSES[cls] = type(
            f"Extended{cls.__name__}",
            (cls,),
            {"positional_embedding": property(lambda self: self.positional_embedding_table.weight)},
        )
    return _EXTENDED_CLASSES[cls]


def _extended_table(table: torch.Tensor, context_length: int, keep: int, init: str,
                    generator: Optional[torch.Generator]) -> torch.Tensor:
    length = table.shape[0]
    if (context_length - keep) % (length - keep) != 0:
        raise ValueError(
            f"context_length {context_length} must be keep + factor * (L - keep) = {keep} + factor * {length - keep}"
        )
    factor = (context_length - keep) // (length - keep)
    extended = extend_clip_positions(table.detach(), keep=keep, factor=factor)
    if init == "random":
        # open_clip initialises its position table with std 0.01; the frozen rows stay pretrained.
        noise = torch.randn(extended[keep:].shape, generator=generator, dtype=torch.float32)
        extended[keep:] = (0.01 * noise).to(extended.dtype)
    elif init != "interpolate":
        raise ValueError(f"init must be one of {EXTENSION_INITS}, got {init!r}")
    return extended


def _hf_text_transformer(model: nn.Module) -> Optional[nn.Module]:
    if hasattr(model, "text_model"):
        model = model.text_model
    embeddings = getattr(model, "embeddings", None)
    if embeddings is not None and hasattr(embeddings, "position_embedding"):
        return model
    return None


def _open_clip_text_owner(model: nn.Module) -> Optional[nn.Module]:
    for owner in (model, getattr(model, "text", None)):
        if owner is not None and hasattr(owner, "positional_embedding") and hasattr(owner, "attn_mask"):
            return owner
    return None


def clip_context_length(model: nn.Module) -> int:
    """Number of text positions the CLIP text tower (either library) accepts."""
    hf = _hf_text_transformer(model)
    if hf is not None:
        return hf.embeddings.position_embedding.weight.shape[0]
    owner = _open_clip_text_owner(model)
    if owner is not None:
        return owner.positional_embedding.shape[0]
    raise ValueError(f"{type(model).__name__} is not an open_clip or Hugging Face CLIP text tower")


def extend_clip_text_context(
    model: nn.Module,
    context_length: int = 248,
    keep: int = 20,
    init: str = "interpolate",
    generator: Optional[torch.Generator] = None,
) -> nn.Module:
    """Extend a CLIP text tower's position table in place and return the model.

    Works on open_clip `CLIP`, `CustomTextCLIP`, `TextTransformer` and Hugging Face `CLIPModel`,
    `CLIPTextModel`, `CLIPTextModelWithProjection`, `CLIPTextTransformer`. The first `keep`
    rows become a frozen buffer; the rest are trainable (their `requires_grad` can be switched
    off to freeze the text tower). `init`: "interpolate" (the formula) or "random" (std 0.01).
    """
    hf = _hf_text_transformer(model)
    if hf is not None:
        embeddings = hf.embeddings
        old = embeddings.position_embedding.weight
        table = _extended_table(old, context_length, keep, init, generator)
        embeddings.position_embedding = ExtendedPositionEmbedding(table, keep).to(old.device)
        embeddings.register_buffer(
            "position_ids", torch.arange(context_length, device=old.device).expand((1, -1)), persistent=False
        )
        for config in (getattr(hf, "config", None), getattr(getattr(model, "config", None), "text_config", None)):
            if config is not None:
                config.max_position_embeddings = context_length
        return model

    owner = _open_clip_text_owner(model)
    if owner is None:
        raise ValueError(f"{type(model).__name__} is not an open_clip or Hugging Face CLIP text tower")
    old = owner.positional_embedding
    table = _extended_table(old, context_length, keep, init, generator)
    del owner._parameters["positional_embedding"]
    owner.__class__ = _with_position_property(type(owner))
    owner.positional_embedding_table = ExtendedPositionEmbedding(table, keep).to(old.device)
    owner.context_length = context_length
    if hasattr(owner, "num_pos"):
        owner.num_pos = context_length
    if owner.attn_mask is not None:
        causal = torch.full((context_length, context_length), float("-inf"), device=old.device).triu_(1)
        owner.register_buffer("attn_mask", causal, persistent=False)
    if owner is not model and hasattr(model, "context_length"):
        model.context_length = context_length
    return model


def tokenize_clip_prompts(texts: Sequence[str], tokenizer, context_length: int,
                          memo: Optional[Dict[str, Tuple[int, ...]]] = None) -> torch.Tensor:
    """Token ids of CLIP prompts, (B, context_length), padded; over-long prompts are cut to the
    context (keeping the end-of-text token last, as open_clip does) with a `ClipPromptTruncated`
    warning naming the prompt and how many tokens were dropped.

    `tokenizer`: open_clip's `SimpleTokenizer` (offline, bundled vocabulary) or a Hugging Face
    CLIP tokenizer loaded from a local directory. `memo`: a dict the caller keeps across calls (the
    Collator does), text -> its ids: a world's questions repeat, and open_clip's text cleaning and BPE
    per prompt was a third of a tiny SFT batch's collation.
    """
    if isinstance(texts, str):
        texts = [texts]
    if hasattr(tokenizer, "sot_token_id"):  # open_clip SimpleTokenizer
        eot, pad = tokenizer.eot_token_id, 0
        encode = lambda batch: [(tokenizer.sot_token_id, *tokenizer.encode(t), eot) for t in batch]  # noqa: E731
    else:  # Hugging Face tokenizer: adds its own bos/eos
        eot = tokenizer.eos_token_id
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eot
        encode = lambda batch: [tuple(ids) for ids in tokenizer(batch)["input_ids"]]  # noqa: E731
    memo = {} if memo is None else memo
    new = list(dict.fromkeys(t for t in texts if t not in memo))
    if new:
        memo.update(zip(new, encode(new)))
    rows = [list(memo[t]) for t in texts]
    out = torch.full((len(rows), context_length), pad, dtype=torch.long)
    for i, ids in enumerate(rows):
        if len(ids) > context_length:
            warnings.warn(
                f"CLIP prompt {i} has {len(ids)} tokens but the text context holds {context_length}: "
                f"dropped {len(ids) - context_length} tokens from its end",
                ClipPromptTruncated,
                stacklevel=2,
            )
            ids = ids[: context_length - 1] + [eot]
        out[i, : len(ids)] = torch.tensor(ids)
    return out
