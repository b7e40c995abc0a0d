"""How many visual tokens each medium becomes under a config: shared by the model (which checks
the counts) and the data processing (which expands the placeholders), with no model built.

The pooling modes lay their tokens out on a grid (T', H', W'); the selection and merging modes
(`COMPRESSION_MODES`: topk, random, merge, dominant) keep a budget of tokens in time order and have
no grid, so for them `video_geometry` refuses and `video_token_count` is the budget.

'fastv' (`LLM_PRUNING_MODES`) prunes inside the LLM: the input sequence holds every patch token, as
under 'none' (the grid (T, g, g), `video_token_count` = T*g*g, what placeholders expand to), and
`pruned_video_token_count` is what the LLM keeps of them from layer `fastv_layer` on (the budget).
Images pass as under 'none': FastV prunes image tokens by the same rule, but the kit's fastv is a
video method, compared with the others at a video budget (ppllava/model/fastv.py)."""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

from ppllava.config import PPLLaVAConfig
from ppllava.model import anyres
from ppllava.ops import COMPRESSION_MODES, LLM_PRUNING_MODES, window_geometry


class TokenLayout:
    def __init__(self, config: PPLLaVAConfig):
        self.config = config
        self.patch_grid = config.image_size // config.patch_size

    def video_pool_geometry(self) -> dict:
        """The geometry arguments `pool_visual_tokens` takes for videos under the configured mode
        (empty for the fixed-geometry modes)."""
        cfg = self.config
        if cfg.pooling == "adaptive":
            return dict(output_size=cfg.video_output_size)
        if cfg.pooling == "prompt":  # output size, when given, wins over the kernel
            return cfg.prompt_pool_geometry()
        return {}

    def video_geometry(self, num_frames: int) -> Tuple[int, int, int]:
        """Pooled (T', H', W') of a video of `num_frames` frames under the configured pooling. The
        selection and merging modes have no grid: a ValueError says so (their count is
        `video_token_count`); a grid made up for them, e.g. (1, 1, budget), would let a caller lay
        tokens out in a shape they do not have."""
        cfg, g = self.config, self.patch_grid
        if cfg.pooling in COMPRESSION_MODES:
            raise ValueError(f"pooling {cfg.pooling!r} selects or merges tokens and lays them out on no (T', H', W') "
                             "grid; video_token_count gives how many")
        grid = (num_frames, g, g)
        try:
            if cfg.pooling in ("none",) + LLM_PRUNING_MODES:
                return grid
            if cfg.pooling == "temporal_mean":
                return (1, g, g)
            if cfg.pooling == "spatial":  # LLaVA-NeXT-Video's 2 x 2 pool, floor mode on odd grids
                return (num_frames, max(1, g // 2), max(1, g // 2))
            return window_geometry(grid, **self.video_pool_geometry())[0]
        except ValueError as err:
            raise ValueError(f"a video of {num_frames} frames cannot be pooled as configured: {err}") from None

    def video_token_count(self, num_frames: int) -> int:
        """Visual tokens of a video of `num_frames` frames in the LLM's input (under 'fastv' all T*g*g; see
        `pruned_video_token_count`); a ValueError, before any compute, for a video the configured pooling
        cannot make (uncovered frames, a budget larger than the video)."""
        cfg = self.config
        if cfg.pooling in COMPRESSION_MODES + LLM_PRUNING_MODES:
            try:
                budget = cfg.video_budget(num_frames)
            except ValueError as err:
                raise ValueError(f"a video of {num_frames} frames cannot be pooled as configured: {err}") from None
            if cfg.pooling in COMPRESSION_MODES:
                return budget
        return math.prod(self.video_geometry(num_frames))

    def pruned_video_token_count(self, num_frames: int) -> int:
        """Visual tokens of a video that the LLM's layers from `fastv_layer` on hold (and their KV cache):
        the budget under 'fastv', which `video_token_count` tokens enter; under every other mode nothing
        is pruned inside the LLM and it equals `video_token_count`."""
        count = self.video_token_count(num_frames)  # its checks
        return self.config.video_budget(num_frames) if self.config.pooling in LLM_PRUNING_MODES else count

    def image_crop_grid(self) -> int:
        """Side of each image crop's pooled feature map. Every mode but `none` (and `fastv`, whose images
        pass as under `none`) makes each crop as many tokens as the image kernel's prompt pooling does
        (floor mode): the selection and merging modes keep `image_crop_grid() ** 2` tokens of each crop, so
        an image's token count is the same in every mode but those two. LLaVA-NeXT's packing (newline tokens,
        unpadding to the aspect ratio) then reads them, in time-then-raster order, as that square: for kept or
        merged tokens its rows are not rows of the image, and unpadding drops whichever tokens fall in the cut
        rows or columns."""
        g = self.patch_grid
        if self.config.pooling in ("none",) + LLM_PRUNING_MODES:
            return g
        # Floor mode, as `PPLLaVA._pool` pools image crops (the reference's behaviour there).
        return window_geometry((1, g, g), kernel=self.config.image_kernel, remainder="drop")[0][1]

    def image_crops(self, image_size) -> int:
        """Crops of an image of (H, W) pixels in LLaVA-NeXT's any-resolution layout."""
        return anyres.crop_count(image_size, self.config.image_grid_pinpoints, self.config.image_size)

    def image_token_count(self, image_size, num_crops: Optional[int] = None) -> int:
        """Visual tokens of one image; `num_crops=1` is the single-crop layout (multi-image sets)."""
        crops = self.image_crops(image_size) if num_crops is None else num_crops
        return anyres.image_token_count(image_size, crops, self.image_crop_grid(), self.config.image_grid_pinpoints,
                                        self.config.image_size)

    def expand_placeholders(self, ids: Sequence[int], *, image_sizes: Sequence = (),
                            image_crops: Optional[Sequence[int]] = None, video_frames: Sequence[int] = ()) -> List[int]:
        """Token ids with each single `<image>` / `<video>` placeholder id replaced by as many ids as
        its media item has visual tokens (images and videos each in order of appearance)."""
        cfg = self.config
        ids = list(ids)
        for token, what, given in ((cfg.image_token_id, "<image>", len(image_sizes)), (cfg.video_token_id, "<video>", len(video_frames))):
            if ids.count(token) != given:
                raise ValueError(f"{ids.count(token)} {what} placeholders in the text but {given} {what[1:-1]}s given")
        crops = list(image_crops) if image_crops is not None else [None] * len(image_sizes)
        images = iter([self.image_token_count(size, c) for size, c in zip(image_sizes, crops)])
        videos = iter([self.video_token_count(t) for t in video_frames])
        out = []
        for token in ids:
            if token == cfg.image_token_id:
                out += [token] * next(images)
            elif token == cfg.video_token_id:
                out += [token] * next(videos)
            else:
                out.append(token)
        return out
