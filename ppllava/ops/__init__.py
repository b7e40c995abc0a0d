"""The method's operations as pure functions (DESIGN.md §2)."""
from ppllava.ops.clip_context import (
    ClipPromptTruncated,
    ExtendedPositionEmbedding,
    clip_context_length,
    extend_clip_positions,
    extend_clip_text_context,
    tokenize_clip_prompts,
)
from ppllava.ops.checks import check_finite
from ppllava.ops.compression import (
    COMPRESSION_MODES,
    LLM_PRUNING_MODES,
    Compressed,
    dominant_merge,
    fastv_keep,
    fastv_select,
    first_inputs,
    frames,
    random_select,
    sources,
    topk_select,
)
from ppllava.ops.geometry import window_geometry
from ppllava.ops.pooling import (
    POOLING_MODES,
    WEIGHTINGS,
    adaptive_pool3d,
    pool_shared_tokens,
    pool_visual_tokens,
    prompt_guided_pool3d,
    window_weights,
)
from ppllava.ops.relevance import prompt_relevance
from ppllava.ops.token_merging import tome_merge

__all__ = [
    "COMPRESSION_MODES", "ClipPromptTruncated", "Compressed", "ExtendedPositionEmbedding", "LLM_PRUNING_MODES",
    "POOLING_MODES", "WEIGHTINGS",
    "adaptive_pool3d", "check_finite", "clip_context_length", "dominant_merge", "extend_clip_positions",
    "extend_clip_text_context", "fastv_keep", "fastv_select", "first_inputs", "frames", "pool_shared_tokens",
    "pool_visual_tokens", "prompt_guided_pool3d", "prompt_relevance", "random_select", "sources", "tokenize_clip_prompts",
    "tome_merge", "topk_select", "window_geometry", "window_weights",
]
