"""One config for the whole kit, with named presets (`tiny`, `small`, `paper`).

    cfg = PPLLaVAConfig.from_name("tiny", pooling="adaptive")
    cfg.to_yaml("run.yaml"); PPLLaVAConfig.from_yaml("run.yaml") == cfg

Plain types only (str, int, float, bool, tuples of ints), so it serializes to YAML and back
and is never `eval`-ed; `__post_init__` validates and names the field at fault.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import yaml

from ppllava.ops.clip_context import EXTENSION_INITS
from ppllava.ops.compression import COMPRESSION_MODES, LLM_PRUNING_MODES
from ppllava.ops.geometry import window_geometry
from ppllava.ops.pooling import POOLING_MODES, WEIGHTINGS
from ppllava.validation import check_fields, read_yaml_mapping


def visionzip_contextual(budget: int) -> int:
    """VisionZip's contextual share of a budget: its README and paper split 64 tokens into 54 dominant + 10
    contextual, 128 into 108 + 20, 192 into 162 + 30 (its [CLS] token counts among the dominant ones);
    budget * 10 // 64 gives all three exactly (16 -> 2)."""
    return budget * 10 // 64


CHOICES = {
    "llm_family": ("llama", "qwen2"),
    "pooling": POOLING_MODES + COMPRESSION_MODES + LLM_PRUNING_MODES,
    "weighting": WEIGHTINGS,
    "clip_prompt": ("question", "conversation"),
    "pool_position": ("after_projector", "before_projector"),
    "extension_init": EXTENSION_INITS,
    "dtype": ("float32", "bfloat16", "float16"),
}


@dataclass
class PPLLaVAConfig:
    name: str = "tiny"

    # --- CLIP vision tower (transformers' CLIP; open_clip checkpoints convert on load) ---------
    image_size: int = 64  # square frames, pixels
    patch_size: int = 16  # patch grid is image_size // patch_size per side
    vision_width: int = 64
    vision_layers: int = 3
    vision_heads: int = 4
    vision_feature_layer: int = -2  # penultimate layer, CLS dropped (LLaVA)

    # --- CLIP text tower and joint space -------------------------------------------------
    text_width: int = 64
    text_layers: int = 2
    text_heads: int = 4
    clip_vocab_size: int = 49408  # open_clip's bundled BPE vocabulary works offline
    clip_embed_dim: int = 64  # Dc, the joint embedding size
    clip_context: int = 77  # text positions before extension
    extend_clip_context: bool = True
    clip_extended_context: int = 248
    clip_keep_positions: int = 20  # rows of the position table left frozen by the extension
    extension_init: str = "interpolate"  # interpolate | random
    clip_text_trainable: bool = False  # frozen | trainable text tower
    logit_scale_init: float = 2.659260036932778  # log(1 / 0.07), CLIP's start when trained from scratch

    # --- LLM ------------------------------------------------------------------------------
    llm_family: str = "llama"  # llama (Vicuna) | qwen2
    llm_hidden: int = 128
    llm_layers: int = 4  # 2 layers never learned the in-context option lookup behind a system prompt
    llm_heads: int = 4
    llm_kv_heads: int = 4
    llm_intermediate: int = 256
    llm_vocab_size: int = 512  # the tiny world's word-level vocabulary fits well under this
    llm_max_positions: int = 1024

    llm_rms_eps: float = 1e-5
    # Special tokens of the LLM vocabulary; placeholders are expanded to one id per visual token.
    pad_token_id: int = 0
    bos_token_id: int = 1
    eos_token_id: int = 2
    image_token_id: int = 3
    video_token_id: int = 4

    # --- media and pooling ----------------------------------------------------------------
    num_frames: int = 8
    pooling: str = "prompt"  # none | temporal_mean | adaptive | spatial | prompt | topk | random | merge | dominant | fastv
    video_kernel: Tuple[int, int, int] = (2, 2, 2)  # (T, H, W); stride = kernel unless set
    video_stride: Optional[Tuple[int, int, int]] = None
    video_output_size: Optional[Tuple[int, int, int]] = None  # for adaptive, or instead of kernel
    image_kernel: Tuple[int, int, int] = (1, 2, 2)
    pool_temperature: float = 0.01
    weighting: str = "softmax"  # softmax (released code) | normalized (paper text) | invariant, peak (one rule for all lengths)
    pool_margin: float = 3.0  # weightings "invariant", "peak": log-odds of the best patch over a window's mean one, beyond log K
    clip_prompt: str = "question"  # question | conversation (released training code)
    pool_position: str = "after_projector"  # after_projector (released code) | before_projector
    # The selection and merging modes (topk, random, merge, dominant; DESIGN.md section 5) keep a budget, not a grid.
    video_token_budget: Optional[int] = None  # tokens per video; None: prompt pooling's count (the equal budget)
    # fastv: every video token enters the LLM; layers fastv_layer.. keep the budget (1 <= fastv_layer < llm_layers).
    fastv_layer: int = 2  # K: FastV's "an image is worth 1/2 tokens after layer 2"
    contextual_tokens: Optional[int] = None  # dominant: merged tokens of the budget; None: VisionZip's budget * 10 // 64
    # Long videos: the tower, relevance and pooling read this many frames at a time (ppllava/model/chunked_video.py),
    # so memory stays bounded however long the video; None: every frame at once.
    video_chunk_frames: Optional[int] = None
    random_seed: int = 0  # random, in eval: seeds each video's draw with its pixels (ppllava/model/compress_tokens.py)
    image_grid_pinpoints: Tuple[Tuple[int, int], ...] = ((64, 64), (64, 128), (128, 64), (128, 128))

    # --- numerics -------------------------------------------------------------------------
    dtype: str = "float32"
    seed: int = 0
    check_finite: bool = True  # refuse NaN/Inf in visual tokens and relevance maps (cost: benchmarks/pooling_bench.py)

    def __post_init__(self) -> None:
        check_fields(self)  # every field's type against its annotation; YAML's lists become tuples
        for name in ("video_kernel", "video_stride", "video_output_size", "image_kernel"):
            value = getattr(self, name)
            if value is not None and min(value) < 1:
                raise ValueError(f"PPLLaVAConfig.{name} must be 3 positive ints (T, H, W), got {value!r}")
        for pinpoint in self.image_grid_pinpoints:
            if min(pinpoint) < 1:
                raise ValueError(f"PPLLaVAConfig.image_grid_pinpoints must hold positive (H, W) pairs, got {pinpoint!r}")
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"PPLLaVAConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("image_size", "patch_size", "vision_width", "vision_layers", "vision_heads", "text_width",
                     "text_layers", "text_heads", "clip_embed_dim", "llm_hidden", "llm_layers", "llm_heads",
                     "llm_kv_heads", "llm_intermediate", "llm_vocab_size", "num_frames", "clip_context",
                     "clip_vocab_size", "llm_max_positions"):
            if getattr(self, name) < 1:
                raise ValueError(f"PPLLaVAConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not -(self.vision_layers + 1) <= self.vision_feature_layer <= self.vision_layers:
            raise ValueError(f"PPLLaVAConfig.vision_feature_layer {self.vision_feature_layer} is not one of the "
                             f"{self.vision_layers + 1} hidden states of a {self.vision_layers}-layer tower "
                             f"(from {-(self.vision_layers + 1)} to {self.vision_layers})")
        if self.image_size % self.patch_size:
            raise ValueError(f"PPLLaVAConfig.image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")
        for width, heads, what in ((self.vision_width, self.vision_heads, "vision"), (self.text_width, self.text_heads, "text"),
                                   (self.llm_hidden, self.llm_heads, "llm")):
            if width % heads:
                raise ValueError(f"PPLLaVAConfig.{what}_heads {heads} must divide the {what} width {width}")
        ids = {n: getattr(self, n) for n in ("pad_token_id", "bos_token_id", "eos_token_id", "image_token_id", "video_token_id")}
        for n, v in ids.items():
            if not 0 <= v < self.llm_vocab_size:
                raise ValueError(f"PPLLaVAConfig.{n} {v} is outside the LLM vocabulary [0, {self.llm_vocab_size})")
        if self.image_token_id == self.video_token_id:
            raise ValueError("PPLLaVAConfig.image_token_id and video_token_id must differ")
        if self.llm_heads % self.llm_kv_heads:
            raise ValueError(f"PPLLaVAConfig.llm_kv_heads {self.llm_kv_heads} must divide llm_heads {self.llm_heads}")
        if self.extend_clip_context:
            span, rest = self.clip_context - self.clip_keep_positions, self.clip_extended_context - self.clip_keep_positions
            if not 1 <= self.clip_keep_positions <= self.clip_context - 2 or rest % span:
                raise ValueError(
                    f"PPLLaVAConfig.clip_extended_context {self.clip_extended_context} must be clip_keep_positions "
                    f"{self.clip_keep_positions} + an integer factor x (clip_context {self.clip_context} - keep)"
                )
        if not self.llm_rms_eps > 0:
            raise ValueError(f"PPLLaVAConfig.llm_rms_eps must be > 0, got {self.llm_rms_eps}")
        if not 0 < self.pool_temperature < float("inf"):
            raise ValueError(f"PPLLaVAConfig.pool_temperature must be finite and > 0, got {self.pool_temperature}")
        if not abs(self.pool_margin) < float("inf"):
            raise ValueError(f"PPLLaVAConfig.pool_margin must be finite, got {self.pool_margin}")
        if self.pooling == "adaptive" and self.video_output_size is None:
            raise ValueError("PPLLaVAConfig.video_output_size is required when pooling is 'adaptive'")
        grid = self.patch_grid
        for axis, (k, size) in enumerate(zip(self.video_kernel, (self.num_frames, grid, grid))):
            if k > size:
                raise ValueError(f"PPLLaVAConfig.video_kernel[{axis}] = {k} exceeds the input size {size} on axis {'THW'[axis]}")
        if self.pooling == "prompt" and self.video_output_size is None:  # the kernel's windows must cover the video
            try:
                window_geometry((self.num_frames, grid, grid), kernel=self.video_kernel, stride=self.video_stride)
            except ValueError as err:
                raise ValueError(f"PPLLaVAConfig.num_frames {self.num_frames} with video_kernel {self.video_kernel}, "
                                 f"video_stride {self.video_stride}: {err}") from err
        if self.video_token_budget is not None and self.video_token_budget < 1:
            raise ValueError(f"PPLLaVAConfig.video_token_budget must be >= 1 (or None: prompt pooling's count), "
                             f"got {self.video_token_budget}")
        if self.contextual_tokens is not None and self.contextual_tokens < 0:
            raise ValueError(f"PPLLaVAConfig.contextual_tokens must be >= 0 (or None: VisionZip's ratio), "
                             f"got {self.contextual_tokens}")
        if self.video_chunk_frames is not None:
            if self.video_chunk_frames < 1:
                raise ValueError(f"PPLLaVAConfig.video_chunk_frames must be >= 1 (or None: every frame at once), "
                                 f"got {self.video_chunk_frames}")
            if self.pooling not in POOLING_MODES:
                raise ValueError(f"PPLLaVAConfig.video_chunk_frames is for the pooling modes {POOLING_MODES}; pooling "
                                 f"{self.pooling!r} selects or prunes over the whole video at once")
        if self.fastv_layer < 1:
            raise ValueError(f"PPLLaVAConfig.fastv_layer must be >= 1 (layers 0..K-1 read every video token), "
                             f"got {self.fastv_layer}")
        if self.pooling in LLM_PRUNING_MODES and self.fastv_layer >= self.llm_layers:
            raise ValueError(f"PPLLaVAConfig.fastv_layer {self.fastv_layer} must be below llm_layers {self.llm_layers}: "
                             "pooling 'fastv' prunes before layer fastv_layer (0-indexed) of the LLM")
        if self.pooling in COMPRESSION_MODES + LLM_PRUNING_MODES:  # the budget must fit the configured video
            try:
                self.video_budget(self.num_frames)
            except ValueError as err:
                raise ValueError(f"PPLLaVAConfig.num_frames {self.num_frames} with pooling {self.pooling!r}: {err}") from err
        if self.pooling == "dominant" and self.vision_feature_layer % (self.vision_layers + 1) == 0:
            raise ValueError(f"PPLLaVAConfig.vision_feature_layer {self.vision_feature_layer} is the patch embeddings, "
                             "which no attention layer makes: pooling 'dominant' reads the [CLS] attention of the layer "
                             "that makes the features")

    # --- derived --------------------------------------------------------------------------
    @property
    def patch_grid(self) -> int:
        """Patches per side of one frame or image crop."""
        return self.image_size // self.patch_size

    @property
    def text_context_length(self) -> int:
        return self.clip_extended_context if self.extend_clip_context else self.clip_context

    def prompt_pool_geometry(self) -> dict:
        """The window arguments prompt pooling gives `window_geometry` for videos (an output size, when
        given, wins over the kernel)."""
        return dict(output_size=self.video_output_size, stride=self.video_stride,
                    kernel=None if self.video_output_size is not None else self.video_kernel)

    def video_budget(self, num_frames: int) -> int:
        """Tokens a selection or merging mode makes of a video of `num_frames` frames (under 'fastv', the
        tokens the LLM keeps from layer `fastv_layer` on): `video_token_budget`,
        or (None) what prompt pooling makes of the same video with this config's windows, so that every
        method meets the others at an equal budget (issue #16). A ValueError names the frames and tokens
        of a video the budget exceeds, or the axis prompt's windows leave uncovered; for 'dominant', a
        contextual count larger than the budget."""
        g = self.patch_grid
        tokens = num_frames * g * g
        if self.video_token_budget is None:
            try:
                out = window_geometry((num_frames, g, g), **self.prompt_pool_geometry())[0]
            except ValueError as err:
                raise ValueError(f"video_token_budget None takes prompt pooling's count, and {err}") from None
            budget = out[0] * out[1] * out[2]
        elif self.video_token_budget > tokens:
            raise ValueError(f"video_token_budget {self.video_token_budget} exceeds the {tokens} visual tokens of "
                             f"{num_frames} frames ({num_frames} x {g} x {g} patches)")
        else:
            budget = self.video_token_budget
        if self.pooling == "dominant" and self.contextual_count(budget) > budget:
            raise ValueError(f"contextual_tokens {self.contextual_tokens} exceeds the budget of {budget} tokens "
                             f"for {num_frames} frames")
        return budget

    def contextual_count(self, budget: int) -> int:
        """'dominant': how many of a video's `budget` tokens are contextual (merged), the rest dominant (kept).
        `contextual_tokens` counts in the video budget; an image crop, whose budget is the image kernel's
        (4 tokens in `tiny`), takes VisionZip's share of it (`visionzip_contextual`) whatever the field says."""
        return self.contextual_tokens if self.contextual_tokens is not None else visionzip_contextual(budget)

    # --- presets and serialization --------------------------------------------------------
    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> "PPLLaVAConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; presets are {tuple(PRESETS)}")
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown PPLLaVAConfig fields: {sorted(unknown)}")
        return cls(**{**PRESETS[name], "name": name, **overrides})

    def to_dict(self) -> Dict[str, Any]:
        def plain(v):
            return [plain(x) for x in v] if isinstance(v, tuple) else v
        return {k: plain(v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "PPLLaVAConfig":
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown PPLLaVAConfig fields: {sorted(unknown)}")
        return cls(**data)

    def to_yaml(self, path: Union[str, Path, None] = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_yaml(cls, path_or_text: Union[str, Path]) -> "PPLLaVAConfig":
        path = Path(path_or_text)
        is_file = "\n" not in str(path_or_text) and path.exists()
        if not is_file and str(path_or_text).endswith((".yaml", ".yml")):
            raise FileNotFoundError(f"{path_or_text}: no such file")
        source = str(path) if is_file else "YAML text"
        data = read_yaml_mapping(path.read_text() if is_file else str(path_or_text), source, "PPLLaVAConfig")
        try:
            return cls.from_dict(data)
        except ValueError as err:
            raise ValueError(f"{source}: {err}") from err


PRESETS: Dict[str, Dict[str, Any]] = {
    # CPU, seconds: 64 px frames with 16 px patches (4 x 4 grid), so each object spans several patches.
    "tiny": {},
    # CPU, minutes: finer grid, more frames, wider towers and LLM.
    "small": dict(
        image_size=96, vision_width=128, vision_layers=4, vision_heads=4, text_width=128, text_layers=3,
        text_heads=4, clip_embed_dim=128, llm_hidden=256, llm_layers=4, llm_heads=8, llm_kv_heads=8,
        llm_intermediate=512, llm_vocab_size=1024, llm_max_positions=2048, num_frames=16,
        video_kernel=(2, 3, 3), image_kernel=(1, 3, 3),
        image_grid_pinpoints=((96, 96), (96, 192), (192, 96), (192, 192)),
    ),
    # The published model: CLIP ViT-L/14-336 + Vicuna-7B LLaVA-NeXT, 32 frames, kernel (2, 3, 3), bf16.
    "paper": dict(
        image_size=336, patch_size=14, vision_width=1024, vision_layers=24, vision_heads=16,
        text_width=768, text_layers=12, text_heads=12, clip_embed_dim=768,
        llm_hidden=4096, llm_layers=32, llm_heads=32, llm_kv_heads=32, llm_intermediate=11008,
        llm_vocab_size=32064, llm_max_positions=4096, num_frames=32, video_kernel=(2, 3, 3),
        image_token_id=32000, video_token_id=32001,
        image_kernel=(1, 3, 3), dtype="bfloat16", logit_scale_init=4.605170185988092,  # log(100), OpenAI CLIP's tau
        image_grid_pinpoints=((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008)),
    ),
}
