"""Parameter and visual-token counts of a preset, built on the meta device (no weights, no memory).

    python -m ppllava.describe paper
    python -m ppllava.describe tiny --set pooling=none
"""
from __future__ import annotations

import argparse
from typing import Dict

import torch

from ppllava.config import PRESETS, PPLLaVAConfig
from ppllava.validation import parse_overrides


def describe(config: PPLLaVAConfig) -> Dict[str, object]:
    """Parameters per part of the model and visual tokens per media type, for `config`."""
    from ppllava.model import PPLLaVA

    with torch.device("meta"):
        model = PPLLaVA(config)
    parts = {name: sum(p.numel() for p in getattr(model, name).parameters())
             if isinstance(getattr(model, name), torch.nn.Module) else getattr(model, name).numel()
             for name in PPLLaVA.PARTS}
    side = config.image_size
    frames = config.num_frames
    tokens = {
        f"video, {frames} frames": model.video_token_count(frames),
        f"video, {frames} frames, no pooling": frames * model.patch_grid ** 2,
        f"image {side}x{side}, single crop": model.image_token_count((side, side), 1),
        f"image {side}x{2 * side}, any-resolution": model.image_token_count((side, 2 * side)),
    }
    if model.pruned_video_token_count(frames) != model.video_token_count(frames):  # fastv
        tokens[f"video, {frames} frames, after LLM layer {config.fastv_layer}"] = \
            model.pruned_video_token_count(frames)
    return {
        "parameters": {**parts, "total": sum(p.numel() for p in model.parameters())},
        "patch_grid": model.patch_grid,
        "visual_tokens": tokens,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("preset", choices=list(PRESETS))
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="config overrides, values in YAML syntax (e.g. video_kernel=[4,3,3])")
    args = parser.parse_args(argv)
    try:
        config = PPLLaVAConfig.from_name(args.preset, **parse_overrides(parser, args.set))
    except ValueError as err:
        parser.error(str(err))
    info = describe(config)
    print(f"preset {args.preset}: patch grid {info['patch_grid']} x {info['patch_grid']}")
    for name, count in info["parameters"].items():
        print(f"  {name:<18s} {count / 1e6:12.2f} M parameters")
    for name, count in info["visual_tokens"].items():
        print(f"  {name:<40s} {count:8d} visual tokens")


if __name__ == "__main__":
    main()
