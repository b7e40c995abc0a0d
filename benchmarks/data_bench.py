"""Is training bound by loading or by compute? Clips per second through decord (decode alone, and
the whole dataset pipeline: decode + CLIP transforms + tokens + collate) at 16 frames of 64 px
and 32 frames of 336 px, with 0 and 2 DataLoader workers, beside the tiny model's training step.

    python benchmarks/data_bench.py [--clips 24] [--batch 4]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import time_ms  # noqa: E402

from ppllava.config import PPLLaVAConfig  # noqa: E402
from ppllava.data.dataset import Collator, LLaVADataset, model_inputs  # noqa: E402
from ppllava.data.tokenizer import build_world_tokenizer  # noqa: E402
from ppllava.data.video import get_reader  # noqa: E402
from ppllava.data.world import WorldSpec, write_world  # noqa: E402
from ppllava.model import PPLLaVA  # noqa: E402


def video_only_world(root: Path, size: int, frames: int, clips: int) -> Path:
    write_world(root, WorldSpec(size=size, frames=frames, media_mix={"video": 1.0}), train=clips, val=0, test=0,
                long_per_length=0, progress=False)
    return root / "train.json"


def clips_per_second(loader, clips: int) -> float:
    start = time.perf_counter()
    seen = sum(len(batch["ids"]) for batch in loader)
    assert seen == clips, (seen, clips)
    return clips / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    tokenizer = build_world_tokenizer()
    print(f"{args.clips} clips, batch {args.batch}, {torch.get_num_threads()} torch threads")
    with tempfile.TemporaryDirectory() as tmp:
        for size, frames in ((64, 16), (336, 32)):
            annotations = video_only_world(Path(tmp) / f"w{size}", size, frames, args.clips)
            config = PPLLaVAConfig.from_name("tiny", image_size=size, num_frames=frames, **({} if size == 64 else dict(
                patch_size=14, video_kernel=(2, 3, 3), image_kernel=(1, 3, 3))))  # 336 px: the paper geometry
            dataset = LLaVADataset(annotations, config, tokenizer)
            reader = get_reader("decord")
            paths = [dataset.root / r["video"] for r in dataset.records]
            start = time.perf_counter()
            for p in paths:
                reader.read(p, list(range(frames)))
            decode = len(paths) / (time.perf_counter() - start)
            row = [f"{frames} frames x {size} px: decode only {decode:7.1f} clips/s"]
            for workers in (0, 2):
                loader = DataLoader(dataset, batch_size=args.batch, num_workers=workers,
                                    collate_fn=Collator(config, tokenizer.pad_token_id))
                row.append(f"pipeline, {workers} workers {clips_per_second(loader, args.clips):7.1f} clips/s")
            print("  " + "; ".join(row))
        # The tiny model's training step on a batch of 16-frame 64 px clips.
        config = PPLLaVAConfig.from_name("tiny", num_frames=16)
        dataset = LLaVADataset(Path(tmp) / "w64" / "train.json", config, tokenizer)
        batch = model_inputs(Collator(config, tokenizer.pad_token_id)([dataset[i] for i in range(args.batch)]))
        torch.manual_seed(0)
        model = PPLLaVA(config).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step():
            optimizer.zero_grad()
            model(**batch).loss.backward()
            optimizer.step()

        ms = time_ms(step, "cpu", repeats=5)
        print(f"  tiny model, one training step on {args.batch} clips of 16 x 64 px: {ms:.1f} ms "
              f"= {args.batch / ms * 1e3:.1f} clips/s")


if __name__ == "__main__":
    main()
