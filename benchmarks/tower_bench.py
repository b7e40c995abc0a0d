"""The vision tower's patch features: the whole tower's `hidden_states[-2]` (what transformers' LLaVA
computes, last layer included) against `PPLLaVA._tower_features` (the layers before it only), the
same weights and frames, side by side in one run; the features must be identical.

    python benchmarks/tower_bench.py                  # tiny preset, 256 frames (a needle video)
    python benchmarks/tower_bench.py --preset small --frames 64
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import time_ms  # noqa: E402

from ppllava.config import PRESETS, PPLLaVAConfig  # noqa: E402
from ppllava.model import PPLLaVA  # noqa: E402


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", choices=[p for p in PRESETS if p != "paper"])
    parser.add_argument("--frames", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = PPLLaVA(PPLLaVAConfig.from_name(args.preset)).eval()
    cfg = model.config
    pixels = torch.randn(args.frames, 3, cfg.image_size, cfg.image_size)

    def whole():
        return model.vision_tower(pixel_values=pixels, output_hidden_states=True).hidden_states[cfg.vision_feature_layer][:, 1:]

    def needed():
        return model._tower_features(pixels)

    with torch.no_grad():
        if not torch.equal(whole(), needed()):
            raise SystemExit("the two paths disagree: _tower_features is not the tower's hidden state")
        ms = {"whole tower": time_ms(whole, "cpu", args.repeats), "layers needed": time_ms(needed, "cpu", args.repeats)}
    result = {"preset": args.preset, "frames": args.frames, "tower layers": cfg.vision_layers,
              "vision_feature_layer": cfg.vision_feature_layer, "median ms": {k: round(v, 1) for k, v in ms.items()},
              "speed-up": round(ms["whole tower"] / ms["layers needed"], 2), "threads": torch.get_num_threads()}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
