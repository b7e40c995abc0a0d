"""The PPLLaVA model: CLIP towers -> projector -> prompt-guided pooling -> causal LLM.

    model = PPLLaVA(PPLLaVAConfig.from_name("tiny"))
    out = model(input_ids, attention_mask, labels=labels, pixel_values_videos=video, clip_input_ids=prompt)
    new_tokens = model.generate(input_ids, attention_mask, pixel_values_videos=video,
                                clip_input_ids=prompt, max_new_tokens=16)

Media placeholders in `input_ids` are already expanded, one `image_token_id` / `video_token_id`
per visual token (`image_token_count` / `video_token_count` say how many); the model checks the
counts. Under pooling "fastv" every video token enters the LLM and its layers from `fastv_layer` on
keep `pruned_video_token_count` of them (ppllava/model/fastv.py). The module names follow LLaVA-NeXT
(`vision_tower`, `projector` = its `multi_modal_projector`, `image_newline`, `language_model`), so its
checkpoints load directly.
Constructors never read files: see `ppllava.model.loading`.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from transformers import AutoModelForCausalLM, CLIPTextModel, CLIPVisionModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from ppllava.config import PPLLaVAConfig
from ppllava.model import anyres, fastv, inputs
from ppllava.model.chunked_video import TensorFrames, chunked_video_tokens
from ppllava.model.compress_tokens import (PROMPT_MODES, TOWER_ATTENTION_MODES, Guide, compress, compress_crops,
                                           pixel_generators, tower_attention)
from ppllava.model.hf_configs import CLIP_BOS, CLIP_EOS, clip_text_config, llm_config, vision_config
from ppllava.model.token_layout import TokenLayout
from ppllava.ops import (COMPRESSION_MODES, LLM_PRUNING_MODES, check_finite, extend_clip_text_context,
                         pool_shared_tokens, pool_visual_tokens, prompt_guided_pool3d, prompt_relevance)


class Projector(nn.Module):
    """LLaVA's two-layer MLP from the vision width to the LLM width."""

    def __init__(self, vision_width: int, llm_width: int):
        super().__init__()
        self.linear_1 = nn.Linear(vision_width, llm_width)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(llm_width, llm_width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., Dv) -> (..., D)
        return self.linear_2(self.act(self.linear_1(x)))


def distinct_frames(patches: torch.Tensor, cells: int) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """(n, T*g*g, Dv) patch tokens of frozen features -> (distinct (U, g*g, Dv), inverse (n*T,)), with
    `distinct[inverse]` every frame again: each run of equal consecutive frames kept once. A still scene
    repeats its frame (a 256-frame needle video holds 4 % distinct frames), and what runs on each patch
    token alone (the projector, CLIP's projection) then runs once per distinct frame: the same values,
    the projector's weight gradient summed in another order. None when nothing repeats, or when the
    features carry gradients (a trainable tower: equal features need not be equal pixels)."""
    if patches.requires_grad:
        return None
    frames = patches.reshape(-1, cells, patches.shape[-1])
    repeats = (frames[1:] == frames[:-1]).flatten(1).all(1)
    if not bool(repeats.any()):
        return None
    starts = torch.cat([repeats.new_ones(1), ~repeats])
    return frames[starts], starts.cumsum(0) - 1


class PPLLaVA(nn.Module):
    PARTS = ("vision_tower", "visual_layernorm", "visual_projection", "clip_text", "text_projection", "logit_scale",
             "projector", "image_newline", "language_model")

    def __init__(self, config: PPLLaVAConfig, *, vision_config_=None, clip_text_config_=None, llm_config_=None,
                 parts: Optional[Dict[str, nn.Module]] = None):
        """Build the model from `config` (the towers' Hugging Face configs derived from it unless
        given). `parts` hands in already-built modules by name (see `PARTS`), as the checkpoint
        loaders do; whatever is not handed in is built fresh."""
        super().__init__()
        parts = dict(parts or {})
        unknown = set(parts) - set(self.PARTS)
        if unknown:
            raise ValueError(f"unknown parts {sorted(unknown)}; parts are {self.PARTS}")
        self.config = config
        self.vision_config = vision_config_ or vision_config(config)
        self.clip_text_config = copy.deepcopy(clip_text_config_ or clip_text_config(config))  # before extension
        self.llm_config = llm_config_ or llm_config(config)
        vision_width, text_width = self.vision_config.hidden_size, self.clip_text_config.hidden_size
        embed_dim, llm_width = self.clip_text_config.projection_dim, self.llm_config.hidden_size

        def part(name, build):
            return parts[name] if name in parts else build()

        self.vision_tower = part("vision_tower", lambda: CLIPVisionModel(self.vision_config))
        # The alignment's own copy of CLIP's post-layernorm (the released code keeps CLIP's, apart from a
        # vision tower that LLaVA training may have changed); a fresh model starts from the tower's.
        self.visual_layernorm = part("visual_layernorm", lambda: copy.deepcopy(self.vision_tower.post_layernorm))
        self.visual_projection = part("visual_projection", lambda: nn.Linear(vision_width, embed_dim, bias=False))
        self.clip_text = part("clip_text", lambda: CLIPTextModel(copy.deepcopy(self.clip_text_config)))
        self.text_projection = part("text_projection", lambda: nn.Linear(text_width, embed_dim, bias=False))
        self.logit_scale = part("logit_scale", lambda: nn.Parameter(torch.tensor(config.logit_scale_init)))
        if config.extend_clip_context:
            extend_clip_text_context(self.clip_text, config.clip_extended_context, config.clip_keep_positions,
                                     config.extension_init)
        self.clip_text.requires_grad_(config.clip_text_trainable)
        self.projector = part("projector", lambda: Projector(vision_width, llm_width))
        self.image_newline = part("image_newline", lambda: nn.Parameter(torch.randn(llm_width) / math.sqrt(llm_width)))
        self.language_model = part("language_model", lambda: AutoModelForCausalLM.from_config(self.llm_config))

    # --- sizes (see TokenLayout) ---------------------------------------------------------------
    @property
    def layout(self) -> TokenLayout:
        return TokenLayout(self.config)  # cheap; follows config changes (e.g. a switched pooling mode)

    @property
    def patch_grid(self) -> int:
        return self.vision_config.image_size // self.vision_config.patch_size

    def video_geometry(self, num_frames: int) -> Tuple[int, int, int]:
        return self.layout.video_geometry(num_frames)

    def video_token_count(self, num_frames: int) -> int:
        return self.layout.video_token_count(num_frames)

    def pruned_video_token_count(self, num_frames: int) -> int:
        return self.layout.pruned_video_token_count(num_frames)

    def image_crops(self, image_size) -> int:
        return self.layout.image_crops(image_size)

    def image_token_count(self, image_size, num_crops: Optional[int] = None) -> int:
        return self.layout.image_token_count(image_size, num_crops)

    def expand_placeholders(self, ids: Sequence[int], **media) -> List[int]:
        return self.layout.expand_placeholders(ids, **media)

    # --- checkpoints (local paths only; see ppllava.model.loading) -----------------------------
    def save_pretrained(self, directory) -> None:
        from ppllava.model.loading import save_pretrained

        save_pretrained(self, directory)

    @classmethod
    def from_pretrained(cls, directory, **kwargs) -> "PPLLaVA":
        from ppllava.model.loading import load_pretrained

        return load_pretrained(directory, **kwargs)

    # --- CLIP alignment ------------------------------------------------------------------------
    def encode_prompts(self, clip_input_ids: torch.Tensor, groups: int = 1) -> torch.Tensor:
        """The prompts' CLIP text embeddings `c`, (B, L) -> (B, Dc).

        groups > 1: the prompts are sorted by length and encoded in that many batches, each only as long
        as its longest prompt (the same embeddings to float rounding: each prompt is encoded on its own
        positions either way). With lengths spread over the context, as the CLIP stage's dialogue filler
        makes them, most of one batch's positions were padding."""
        context = self.clip_text.embeddings.position_embedding.weight.shape[0]
        if clip_input_ids.shape[1] > context:
            raise ValueError(f"clip_input_ids has {clip_input_ids.shape[1]} positions but the CLIP text context "
                             f"holds {context}; tokenize with ppllava.ops.tokenize_clip_prompts, which truncates visibly")
        words = (clip_input_ids != 0) & (clip_input_ids != CLIP_BOS) & (clip_input_ids != CLIP_EOS)
        empty = (~words.any(1)).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"the CLIP prompt of sample(s) {empty} is empty: prompt-guided pooling needs a question")
        if isinstance(groups, bool) or not (isinstance(groups, int) and groups >= 1):
            raise ValueError(f"encode_prompts needs groups >= 1 (batches of prompts by length), got {groups!r}")
        # Attention is causal and the pooled output sits at EOS, so trailing padding changes nothing:
        # encode only up to the longest prompt instead of the whole 248-position context.
        ends = ((clip_input_ids != 0).long().cumsum(1) * (clip_input_ids != 0)).argmax(1) + 1  # (B,)
        if groups == 1:
            length = int(ends.max())
            return self.text_projection(self.clip_text(input_ids=clip_input_ids[:, :length]).pooler_output)
        order = ends.argsort()
        parts = [self.clip_text(input_ids=clip_input_ids[rows, : int(ends[rows].max())]).pooler_output
                 for rows in order.chunk(groups)]
        return self.text_projection(torch.cat(parts)[order.argsort()])  # back in the batch's order

    def _patch_features(self, pixels: torch.Tensor, attention: bool = False):
        """Penultimate-layer patch tokens, CLS dropped: (n, 3, S, S) -> (n, g*g, Dv); read from
        `feature_cache` (set by the stages that train with the tower frozen) for frames it has seen.
        With `attention` ('dominant'), (features, cls_attention (n, g*g) float32, keys (n, g*g, Dk)): see
        `_tower_features`; the cache keeps them beside the features, under their own key."""
        # The sum's fast path (ops.checks): an elementwise isfinite over 256-frame videos took a fifth of
        # notebook 07's needle training.
        check_finite(pixels, "pixel values")
        pixels = pixels.to(self.vision_tower.dtype)
        compute = functools.partial(self._tower_features, attention=attention)
        cache = getattr(self, "feature_cache", None)
        if cache is None:
            rows = compute(pixels)
        elif any(p.requires_grad for p in self.vision_tower.parameters()):
            raise ValueError("feature_cache is set but the vision tower is trainable: cached features would be stale")
        else:
            rows = cache.features(pixels, compute, kind="features+cls_attention+keys" if attention else "")
        if not attention:
            return rows
        width = self.vision_config.hidden_size
        dtype = self.vision_tower.dtype
        return rows[..., :width].to(dtype), rows[..., width], rows[..., width + 1 :].to(dtype)

    def _tower_features(self, pixels: torch.Tensor, attention: bool = False) -> torch.Tensor:
        """`hidden_states[vision_feature_layer]` of the tower, CLS dropped, running only the layers it
        needs: hidden state k is the input of layer k, so the layers from k on feed nothing the kit
        reads (LLaVA's -2 skips the last layer: a third of the tiny tower's forward, bit for bit the
        same features; tests/test_model_parity.py).

        With `attention`, each patch's row also holds the [CLS] attention it gets and its keys (mean
        over heads, `compress_tokens.tower_attention`) in the layer that makes the features: layer
        k - 1 for hidden state k, so at LLaVA's -2 the penultimate layer, `attentions[-2]` and
        `layers[-2]`, exactly the layer VisionZip reads beside `hidden_states[-2]`. Packed into one
        float32 row per patch, (n, g*g, Dv + 1 + Dk), so the feature cache stores them as it stores
        features."""
        tower = self.vision_tower
        depth = self.config.vision_feature_layer % (len(tower.encoder.layers) + 1)
        hidden = tower.pre_layrnorm(tower.embeddings(pixels))
        for i, layer in enumerate(tower.encoder.layers[:depth]):
            if attention and i == depth - 1:
                cls_attention, keys = tower_attention(layer, hidden)
            hidden = layer(hidden, None)
        if not attention:
            return hidden[:, 1:]
        dtype = torch.promote_types(hidden.dtype, torch.float32)
        return torch.cat([hidden[:, 1:].to(dtype), cls_attention[..., None].to(dtype), keys.to(dtype)], dim=-1)

    def _patch_embeds(self, patches: torch.Tensor) -> torch.Tensor:
        """Patch tokens into CLIP's joint space `e`: (..., Dv) -> (..., Dc)."""
        return self.visual_projection(self.visual_layernorm(patches))

    def video_features(self, pixel_values_videos: torch.Tensor) -> torch.Tensor:
        """Each video's patch tokens, (n, T, 3, S, S) -> (n, T*g*g, Dv). They depend on the pixels only,
        so a caller asking many questions of one video (the chat) computes them once and hands them back
        as `video_features` to `relevance_maps`, `video_tokens`, `forward` and `generate`."""
        inputs.check_pixels(pixel_values_videos, "pixel_values_videos", self.vision_config.image_size, "T")
        n, T = pixel_values_videos.shape[:2]
        return self._patch_features(pixel_values_videos.flatten(0, 1)).reshape(n, T * self.patch_grid ** 2, -1)

    def video_shape(self, pixel_values_videos: Optional[torch.Tensor], video_features: Optional[torch.Tensor]):
        """(n, T) of a batch's videos: from their pixels, or from their `video_features` (n, T*g*g, Dv) when
        those come alone (a stage that trains with the tower frozen reads them from a
        `ppllava.data.video_features.VideoFeatureStore` and never decodes the pixels); None for neither."""
        if pixel_values_videos is not None:
            inputs.check_pixels(pixel_values_videos, "pixel_values_videos", self.vision_config.image_size, "T")
            return tuple(pixel_values_videos.shape[:2])
        if video_features is None:
            return None
        cells, width = self.patch_grid ** 2, self.vision_config.hidden_size
        if (not isinstance(video_features, torch.Tensor) or video_features.ndim != 3 or video_features.shape[0] == 0
                or video_features.shape[1] == 0 or video_features.shape[1] % cells or video_features.shape[2] != width):
            got = tuple(video_features.shape) if isinstance(video_features, torch.Tensor) else type(video_features).__name__
            raise ValueError(f"video_features must have shape (n, T*g*g, Dv) with g*g = {cells} patches a frame and "
                             f"Dv = {width}, n and T >= 1, got {got}")
        return video_features.shape[0], video_features.shape[1] // cells

    def _video_patches(self, pixel_values_videos: Optional[torch.Tensor],
                       video_features: Optional[torch.Tensor]) -> torch.Tensor:
        """`video_features` when given (checked against the pixels, if any), else computed from the pixels."""
        if video_features is None:
            return self.video_features(pixel_values_videos)
        if pixel_values_videos is None:
            self.video_shape(None, video_features)
            return video_features
        n, T = pixel_values_videos.shape[:2]
        expected = (n, T * self.patch_grid ** 2, self.vision_config.hidden_size)
        if tuple(video_features.shape) != expected:
            raise ValueError(f"video_features must have shape (n, T*g*g, Dv) = {expected} for pixel_values_videos of "
                             f"shape {tuple(pixel_values_videos.shape)}, got {tuple(video_features.shape)}")
        return video_features

    def relevance_maps(self, pixel_values_videos: torch.Tensor, clip_input_ids: torch.Tensor,
                       video_features: Optional[torch.Tensor] = None):
        """(r, s) of DESIGN.md §2 for each video and its prompt, each (n, T, g, g) float32: what the
        alignment notebook draws, frame by frame."""
        inputs.check_pixels(pixel_values_videos, "pixel_values_videos", self.vision_config.image_size, "T")
        n, T = pixel_values_videos.shape[:2]
        inputs.check_clip_input_ids(clip_input_ids, n, "videos")
        g = self.patch_grid
        patches = self._video_patches(pixel_values_videos, video_features)
        e = self._patch_embeds(patches).view(n, T, g, g, -1)
        return prompt_relevance(e, self.encode_prompts(clip_input_ids), self.logit_scale,
                                check_finite=self.config.check_finite)

    def extend_clip_context(self, init: str = "interpolate", generator: Optional[torch.Generator] = None) -> "PPLLaVA":
        """Stretch a CLIP text tower trained at `clip_context` positions (77) to `clip_extended_context`
        (248) in place, rows initialised by `init` ("interpolate" | "random"), and record it in the
        config, so the model saves and loads at the new length."""
        cfg = self.config
        if cfg.extend_clip_context:
            raise ValueError(f"the CLIP text context is already extended to {cfg.text_context_length} positions")
        extend_clip_text_context(self.clip_text, cfg.clip_extended_context, cfg.clip_keep_positions, init, generator)
        self.clip_text.requires_grad_(cfg.clip_text_trainable)
        self.config = dataclasses.replace(cfg, extend_clip_context=True, extension_init=init)
        return self

    # --- visual tokens -------------------------------------------------------------------------
    def _pool(self, x: torch.Tensor, grid, guide: Guide, media: str) -> torch.Tensor:
        """(n, N, D) tokens over `grid` -> (n, N', D) by the configured mode; `guide` holds what it reads
        (the relevance of 'prompt' and 'topk'; see `compress_tokens.Guide`)."""
        cfg, relevance = self.config, guide.relevance
        mode = "none" if cfg.pooling in LLM_PRUNING_MODES else cfg.pooling  # fastv prunes inside the LLM
        if mode in COMPRESSION_MODES:
            if media == "image":  # each crop to the image kernel's count, as the pooling modes make it
                return compress_crops(x, grid[0], grid[1], cfg.pooling, self.layout.image_crop_grid() ** 2, guide,
                                      check_finite=cfg.check_finite)
            budget = self.layout.video_token_count(grid[0])
            return compress(x, grid, cfg.pooling, budget, guide, contextual=cfg.contextual_count(budget),
                            check_finite=cfg.check_finite)
        if media == "image":  # crops on the T axis; every mode but 'none' pools each crop with the image kernel
            if mode == "none":
                if cfg.check_finite:
                    check_finite(x, "image visual tokens")
                return x
            weights = relevance if cfg.pooling == "prompt" else None
            # Image crops keep floor mode where the kernel does not tile the grid, as the reference
            # does (issue #13); TokenLayout.image_crop_grid counts the same.
            return prompt_guided_pool3d(x, weights, grid, kernel=cfg.image_kernel, temperature=cfg.pool_temperature,
                                        weighting=cfg.weighting, margin=cfg.pool_margin, remainder="drop",
                                        check_finite=cfg.check_finite)[0]
        return pool_visual_tokens(x, grid, mode, relevance=relevance, temperature=cfg.pool_temperature,
                                  weighting=cfg.weighting, margin=cfg.pool_margin, check_finite=cfg.check_finite,
                                  **self.layout.video_pool_geometry())[0]

    def _tokens(self, patches: torch.Tensor, grid, guide: Guide, media: str,
                frames: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
        """(n, N, Dv) patch tokens -> (n, N', D) LLM tokens, pooling before or after the projector.
        `frames`: `distinct_frames(patches, g*g)`, so that the projector runs once per distinct frame and the
        modes that mix windows (`_window_mix`) pool from those rows (`pool_shared_tokens`)."""
        if self.config.pool_position == "before_projector":
            return self.projector(self._pool(patches, grid, guide, media))
        if frames is None:
            return self._pool(self.projector(patches), grid, guide, media)
        distinct, inverse = frames
        projected = self.projector(distinct)  # (U, g*g, D)
        mix = self._window_mix(grid) if media == "video" else None
        if mix is None:
            return self._pool(projected[inverse].reshape(*patches.shape[:2], -1), grid, guide, media)
        geometry, weighted = mix
        cfg, cells = self.config, projected.shape[1]
        index = (inverse.view(-1, 1) * cells + torch.arange(cells, device=inverse.device)).view(-1, *grid)
        return pool_shared_tokens(projected.flatten(0, 1), index, guide.relevance if weighted else None,
                                  temperature=cfg.pool_temperature, weighting=cfg.weighting, margin=cfg.pool_margin,
                                  check_finite=cfg.check_finite, **geometry)[0]

    def _window_mix(self, grid) -> Optional[Tuple[dict, bool]]:
        """(geometry, weighted by the relevance) of `pool_shared_tokens` when the video pooling mode mixes
        windows: 'prompt', 'temporal_mean', and 'adaptive' where its windows tile the grid (each axis a
        multiple of the output's: adaptive_avg_pool3d then averages equal blocks). None otherwise."""
        cfg = self.config
        if cfg.pooling == "prompt":
            return self.layout.video_pool_geometry(), True
        if cfg.pooling == "temporal_mean":
            return dict(kernel=(grid[0], 1, 1)), False
        if cfg.pooling == "adaptive":
            out = tuple(cfg.video_output_size)
            if all(o >= 1 and i % o == 0 for i, o in zip(grid, out)):
                return dict(kernel=tuple(i // o for i, o in zip(grid, out))), False
        return None

    def _generators(self, pixels: Optional[torch.Tensor]) -> Optional[List[torch.Generator]]:
        """'random' in eval: one generator per sample of `pixels`, seeded by `random_seed` and its pixels
        (`compress_tokens.pixel_generators` says why); None otherwise (training draws afresh)."""
        if self.config.pooling != "random" or self.training:
            return None
        if pixels is None:
            raise ValueError("pooling 'random' at inference draws by each video's pixels (a fixed choice per video): "
                             "pass pixel_values_videos, not video_features alone")
        return pixel_generators(pixels, self.config.random_seed)

    def _check_video_features_usable(self, video_features) -> None:
        if video_features is not None and self.config.pooling in TOWER_ATTENTION_MODES:
            raise ValueError(f"pooling {self.config.pooling!r} reads the vision tower's [CLS] attention and keys, which "
                             "video_features do not hold: pass the pixels alone")

    def video_tokens(self, pixel_values_videos: Optional[torch.Tensor], prompt_embeds: Optional[torch.Tensor] = None,
                     relevance: Optional[torch.Tensor] = None,
                     video_features: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(n, T, 3, S, S) videos -> (n, video_token_count(T), D). `prompt_embeds` (n, Dc), one per
        video, for 'prompt' pooling and 'topk' selection; or `relevance` (n, T, g, g) to pool or select
        by a given map (an oracle). `video_features`: the videos' `video_features`, already computed
        (not for 'dominant', which reads the tower's attention too), beside the pixels or alone
        (`pixel_values_videos` None). With `video_chunk_frames` set, a video longer than it is encoded
        that many frames at a time (`chunked_video.chunked_video_tokens`)."""
        mode = self.config.pooling
        shape = self.video_shape(pixel_values_videos, video_features)
        if shape is None:
            raise ValueError("video_tokens needs pixel_values_videos or video_features")
        n, T = shape
        g = self.patch_grid
        self.video_token_count(T)  # a clear error for frames the pooling does not cover, before any compute
        self._check_video_features_usable(video_features)
        if relevance is not None:
            if mode not in PROMPT_MODES:  # it would be ignored without a word
                raise ValueError(f"a relevance map weights pooling 'prompt' and ranks 'topk' only; "
                                 f"this model pools {mode!r}")
            inputs.check_relevance(relevance, n, T, g, self.config.check_finite)
        elif prompt_embeds is not None and (prompt_embeds.ndim != 2 or prompt_embeds.shape[0] != n):
            raise ValueError(f"prompt_embeds must have shape (n, Dc) with n = {n} videos, got {tuple(prompt_embeds.shape)}")
        elif mode in PROMPT_MODES and prompt_embeds is None:
            raise ValueError(f"pooling {mode!r} needs clip_input_ids (the CLIP prompt of each sample)")
        chunk = self.config.video_chunk_frames
        if chunk is not None and T > chunk and video_features is None:  # a long video, a chunk of frames at a time
            return chunked_video_tokens(self, TensorFrames(pixel_values_videos), chunk, prompt_embeds=prompt_embeds,
                                        relevance=relevance)
        cls_attention = keys = None
        if mode in TOWER_ATTENTION_MODES:  # the pixels themselves: features alone were refused above
            patches, cls_attention, keys = self._patch_features(pixel_values_videos.flatten(0, 1), attention=True)
            patches, cls_attention, keys = (t.reshape(n, T * g * g, *t.shape[2:])  # frames back into their videos
                                            for t in (patches, cls_attention, keys))
        else:
            patches = self._video_patches(pixel_values_videos, video_features)
        frames = distinct_frames(patches, g * g)
        if mode in PROMPT_MODES and relevance is None:
            embeds = self._patch_embeds(patches) if frames is None else self._patch_embeds(frames[0])[frames[1]]
            relevance = prompt_relevance(embeds.view(n, T, g, g, -1), prompt_embeds, self.logit_scale,
                                         check_finite=self.config.check_finite)[1]
        guide = Guide(relevance, patches, cls_attention, keys, self._generators(pixel_values_videos))
        return self._tokens(patches, (T, g, g), guide, "video", frames)

    def image_tokens(self, pixel_values: torch.Tensor, image_sizes, image_crops: Sequence[int],
                     prompt_embeds: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
        """Images in LLaVA-NeXT's layout, (n, max_crops, 3, S, S) -> a list of (tokens_i, D)."""
        g, mode = self.patch_grid, self.config.pooling
        crops = torch.cat([p[:c] for p, c in zip(pixel_values, image_crops)])
        cls_attention = keys = None
        if mode in TOWER_ATTENTION_MODES:
            patches, cls_attention, keys = self._patch_features(crops, attention=True)
        else:
            patches = self._patch_features(crops)  # (sum crops, g*g, Dv)
        out, start = [], 0
        crop_grid = self.layout.image_crop_grid()
        for i, (size, c) in enumerate(zip(image_sizes, image_crops)):
            x = patches[start : start + c].reshape(1, c * g * g, -1)
            mine = slice(start, start + c)
            start += c
            relevance = None
            if mode in PROMPT_MODES:
                if prompt_embeds is None:
                    raise ValueError(f"pooling {mode!r} needs clip_input_ids (the CLIP prompt of each sample)")
                relevance = prompt_relevance(self._patch_embeds(x).view(1, c, g, g, -1), prompt_embeds[i : i + 1],
                                             self.logit_scale, check_finite=self.config.check_finite)[1]
            guide = Guide(relevance, x, None if cls_attention is None else cls_attention[mine].reshape(1, -1),
                          None if keys is None else keys[mine].reshape(1, c * g * g, -1), self._generators(crops[mine]))
            tokens = self._tokens(x, (c, g, g), guide, "image")[0]  # (c * crop_grid^2, D)
            out.append(anyres.pack_image_tokens(tokens.view(c, crop_grid * crop_grid, -1), crop_grid, size,
                                                self.config.image_grid_pinpoints, self.vision_config.image_size,
                                                self.image_newline))
        return out

    # --- the LLM side --------------------------------------------------------------------------
    @staticmethod
    def _owners(mask: torch.Tensor, counts: List[int], what: str) -> List[int]:
        """Which sample each media item belongs to, from where its tokens sit (row-major order)."""
        found, needed = int(mask.sum()), sum(counts)
        if found != needed:
            raise ValueError(f"{what} tokens and features do not match, tokens: {found}, features: {needed}")
        per_row = mask.sum(1).tolist()
        owners, row, used = [], 0, 0
        for i, count in enumerate(counts):
            while used == per_row[row]:
                row, used = row + 1, 0
            if used + count > per_row[row]:
                raise ValueError(f"{what} {i} needs {count} tokens but sample {row} has {per_row[row] - used} left")
            owners.append(row)
            used += count
        return owners

    def _check_batch(self, input_ids, pixel_values, image_sizes, image_crops, pixel_values_videos, clip_input_ids,
                     video_relevance, video_features=None) -> None:
        """Every batch fault named before any compute (see `ppllava.model.inputs`)."""
        cfg, size = self.config, self.vision_config.image_size
        batch = inputs.check_input_ids(input_ids)
        if clip_input_ids is not None:
            inputs.check_clip_input_ids(clip_input_ids, batch, "samples (input_ids rows)")
        if pixel_values is not None:
            inputs.check_images(pixel_values, image_sizes, image_crops, size)
        videos = self.video_shape(pixel_values_videos, video_features)
        if videos is not None:
            self.video_token_count(videos[1])  # frames the pooling does not cover
            if video_relevance is not None:
                inputs.check_relevance(video_relevance, *videos, self.patch_grid, cfg.check_finite)
        elif video_relevance is not None:
            raise ValueError("video_relevance was given without pixel_values_videos or video_features")
        if video_relevance is not None and cfg.pooling not in PROMPT_MODES:  # it would be ignored without a word
            raise ValueError(f"video_relevance weights pooling 'prompt' and ranks 'topk' only; this model pools "
                             f"{cfg.pooling!r}")
        needs_prompt = pixel_values is not None or (videos is not None and video_relevance is None)
        if cfg.pooling in PROMPT_MODES and needs_prompt and clip_input_ids is None:
            raise ValueError(f"pooling {cfg.pooling!r} needs clip_input_ids (the CLIP prompt of each sample)")

    def _check_video_embeds(self, video_embeds, pixel_values_videos, video_features, video_relevance) -> None:
        if pixel_values_videos is not None or video_features is not None or video_relevance is not None:
            raise ValueError("video_embeds are the videos' visual tokens already made: pass them without "
                             "pixel_values_videos, video_features or video_relevance")
        if self.config.pooling in LLM_PRUNING_MODES:
            raise ValueError("pooling 'fastv' prunes inside the LLM from every video token and its frames: pass "
                             "pixel_values_videos, not video_embeds")
        width = self.llm_config.hidden_size
        if not isinstance(video_embeds, torch.Tensor) or video_embeds.ndim != 3 or video_embeds.shape[-1] != width:
            got = tuple(video_embeds.shape) if isinstance(video_embeds, torch.Tensor) else type(video_embeds).__name__
            raise ValueError(f"video_embeds must have shape (n, tokens, {width}), got {got}")

    def long_video_tokens(self, frames, clip_input_ids: Optional[torch.Tensor] = None,
                          relevance: Optional[torch.Tensor] = None, chunk_frames: Optional[int] = None) -> torch.Tensor:
        """A long video's visual tokens (n, video_token_count(T), D) from a `chunked_video.FrameSource`, its
        pixels read `chunk_frames` (default `video_chunk_frames`) at a time, so that neither they nor the
        patch features are ever all in memory; hand the result to `forward` / `generate` as `video_embeds`."""
        chunk = chunk_frames if chunk_frames is not None else self.config.video_chunk_frames  # 0: refused below
        if chunk is None:
            raise ValueError("long_video_tokens needs chunk_frames or config.video_chunk_frames")
        prompts = None
        if self.config.pooling == "prompt" and relevance is None:
            if clip_input_ids is None:
                raise ValueError("pooling 'prompt' needs clip_input_ids (the CLIP prompt of each video)")
            inputs.check_clip_input_ids(clip_input_ids, frames.num_videos, "videos")
            prompts = self.encode_prompts(clip_input_ids)
        return chunked_video_tokens(self, frames, chunk, prompt_embeds=prompts, relevance=relevance)

    def embed_inputs(self, input_ids: torch.Tensor, *, pixel_values: Optional[torch.Tensor] = None,
                     image_sizes=None, image_crops: Optional[Sequence[int]] = None,
                     pixel_values_videos: Optional[torch.Tensor] = None, clip_input_ids: Optional[torch.Tensor] = None,
                     video_relevance: Optional[torch.Tensor] = None,
                     video_features: Optional[torch.Tensor] = None,
                     video_embeds: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Token embeddings with the visual tokens scattered into their placeholders: (B, L, D).
        `video_embeds` (n, N', D): the videos' visual tokens already made, e.g. by `long_video_tokens` from
        frames read a chunk at a time; they take the place of `pixel_values_videos`."""
        cfg = self.config
        if video_embeds is not None:
            self._check_video_embeds(video_embeds, pixel_values_videos, video_features, video_relevance)
        self._check_batch(input_ids, pixel_values, image_sizes, image_crops, pixel_values_videos, clip_input_ids,
                          video_relevance, video_features)
        self._check_video_features_usable(video_features)
        videos = self.video_shape(pixel_values_videos, video_features)
        embeds = self.language_model.get_input_embeddings()(input_ids)
        image_mask, video_mask = input_ids == cfg.image_token_id, input_ids == cfg.video_token_id
        prompts = None
        if cfg.pooling in PROMPT_MODES and clip_input_ids is not None and (pixel_values is not None or videos is not None):
            prompts = self.encode_prompts(clip_input_ids)
        if pixel_values is not None:
            if image_sizes is None:
                raise ValueError("pixel_values need image_sizes (H, W) per image")
            crops = list(image_crops) if image_crops is not None else [self.image_crops(s) for s in image_sizes]
            counts = [self.image_token_count(s, c) for s, c in zip(image_sizes, crops)]
            owners = self._owners(image_mask, counts, "image")
            tokens = self.image_tokens(pixel_values, image_sizes, crops, None if prompts is None else prompts[owners])
            embeds = embeds.masked_scatter(image_mask[..., None], torch.cat(tokens).to(embeds.dtype))
        elif image_mask.any():
            raise ValueError(f"input_ids hold {int(image_mask.sum())} image tokens but no pixel_values were given")
        if videos is not None:
            count = self.video_token_count(videos[1])
            owners = self._owners(video_mask, [count] * videos[0], "video")
            tokens = self.video_tokens(pixel_values_videos, None if prompts is None else prompts[owners], video_relevance,
                                       video_features)
            embeds = embeds.masked_scatter(video_mask[..., None], tokens.to(embeds.dtype))
        elif video_embeds is not None:
            self._owners(video_mask, [video_embeds.shape[1]] * video_embeds.shape[0], "video")
            embeds = embeds.masked_scatter(video_mask[..., None], video_embeds.to(embeds.dtype))
        elif video_mask.any():
            raise ValueError(f"input_ids hold {int(video_mask.sum())} video tokens but no pixel_values_videos were given")
        return embeds

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None, *, pixel_values=None, image_sizes=None, image_crops=None,
                pixel_values_videos=None, clip_input_ids=None, video_relevance=None, video_features=None,
                video_embeds=None, **lm_kwargs) -> CausalLMOutputWithPast:
        """Logits, and the next-token loss when `labels` are given (visual positions never count)."""
        embeds = self.embed_inputs(input_ids, pixel_values=pixel_values, image_sizes=image_sizes, image_crops=image_crops,
                                   pixel_values_videos=pixel_values_videos, clip_input_ids=clip_input_ids,
                                   video_relevance=video_relevance, video_features=video_features,
                                   video_embeds=video_embeds)
        if labels is not None:
            visual = (input_ids == self.config.image_token_id) | (input_ids == self.config.video_token_id)
            labels = labels.masked_fill(visual, -100)
        plan = self._fastv_plan(input_ids, attention_mask, labels, pixel_values_videos, video_features)
        if plan is not None:  # logits stay (B, L, V); `kept` says which positions the layers from K held
            return fastv.causal_lm_forward(self.language_model, plan, embeds, attention_mask, labels, **lm_kwargs)
        return self.language_model(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels, **lm_kwargs)

    def _fastv_plan(self, input_ids, attention_mask, labels, pixel_values_videos,
                    video_features=None) -> Optional[fastv.Plan]:
        """Under pooling 'fastv', with videos: what the LLM's prefill prunes by (`fastv.make_plan`); else None
        (a batch without videos runs the LLM as 'none' does)."""
        cfg = self.config
        videos = self.video_shape(pixel_values_videos, video_features)
        if cfg.pooling not in LLM_PRUNING_MODES or videos is None:
            return None
        frames = videos[1]
        return fastv.make_plan(input_ids, cfg.video_token_id, attention_mask, labels, self.video_token_count(frames),
                               self.pruned_video_token_count(frames), cfg.fastv_layer)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None, *, pixel_values=None,
                 image_sizes=None, image_crops=None, pixel_values_videos=None, clip_input_ids=None,
                 video_relevance=None, video_features=None, video_embeds=None, **generate_kwargs) -> torch.Tensor:
        """New tokens only, (B, new): transformers' `generate` (KV cache, greedy or sampling, stopping
        criteria) on the merged embeddings. Pad prompts on the left. Under 'fastv' the LLM's decoder runs
        the kit's pruned prefill and decoding steps for the call, its KV cache a `fastv.FastVCache`."""
        if self.config.pooling in LLM_PRUNING_MODES and "cache" in generate_kwargs:
            raise ValueError("pooling 'fastv' makes its own KV cache (a fastv.FastVCache); pass no cache")
        embeds = self.embed_inputs(input_ids, pixel_values=pixel_values, image_sizes=image_sizes, image_crops=image_crops,
                                   pixel_values_videos=pixel_values_videos, clip_input_ids=clip_input_ids,
                                   video_relevance=video_relevance, video_features=video_features,
                                   video_embeds=video_embeds)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        generate_kwargs.setdefault("pad_token_id", self.config.pad_token_id)
        plan = self._fastv_plan(input_ids, attention_mask, None, pixel_values_videos, video_features)
        if plan is None:
            return self.language_model.generate(inputs_embeds=embeds, attention_mask=attention_mask, **generate_kwargs)
        cache = fastv.FastVCache(fastv.base_model(self.language_model).model.config, plan.layer)
        with fastv.installed(self.language_model, plan):
            return self.language_model.generate(inputs_embeds=embeds, attention_mask=attention_mask, cache=cache,
                                                **generate_kwargs)

    def gradient_checkpointing_enable(self, **kwargs) -> None:
        for module in (self.vision_tower, self.clip_text, self.language_model):
            # transformers 5 renamed it; older releases only have the first name.
            enable = getattr(module, "activation_checkpointing_enable", None) or module.gradient_checkpointing_enable
            enable(**kwargs)

    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    @property
    def dtype(self) -> torch.dtype:
        return self.language_model.dtype
