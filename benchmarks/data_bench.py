"""Is training bound by loading or by compute? Clips per second through decord (decode alone, and
the whole dataset pipeline: decode + CLIP transforms + tokens + collate) at 16 frames of 64 px
and 32 frames of 336 px, with 0 and 2 DataLoader workers, beside the tiny model's training step.

And what sampling a long video costs: 16 frames of a 2,000-frame 336 px video read the old PyAV way
(every frame decoded and converted, twice: once to count, once to read) against the seeking reader
(count from metadata, seek to the keyframe before each sampled frame, convert only those), and
decord; time and peak extra memory (resident, in a fresh process), side by side, with ratios.

    python benchmarks/data_bench.py [--clips 24] [--batch 4] [--part all|pipeline|reader]
"""
from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import peak_extra_mib, time_ms  # noqa: E402

from ppllava.config import PPLLaVAConfig  # noqa: E402
from ppllava.data.dataset import Collator, LLaVADataset, model_inputs  # noqa: E402
from ppllava.data.tokenizer import build_world_tokenizer  # noqa: E402
from ppllava.data.video import get_reader, sample_indices  # noqa: E402
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


def write_long_video(path: Path, frames: int, size: int, gop: int) -> None:
    """A `frames`-frame size x size H.264 mp4 of moving gradients, encoded a frame at a time (never all in memory)."""
    import av

    y, x = np.mgrid[:size, :size]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt, stream.gop_size = size, size, "yuv420p", gop
        stream.options = {"crf": "23", "preset": "veryfast"}
        for t in range(frames):
            frame = np.stack([(x + 3 * t) % 256, (y + 5 * t) % 256, ((x + y) // 2 + t) % 256], -1).astype(np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def old_pyav_sample(path: Path, num: int) -> np.ndarray:
    """What the PyAV reader did before: decode and convert every frame to count them, then again up to the
    last sampled one, keeping every converted frame."""
    import av

    def frames(stop=None):
        kept = []
        with av.open(str(path)) as container:
            for frame in container.decode(video=0):
                kept.append(frame.to_ndarray(format="rgb24"))
                if stop is not None and len(kept) > stop:
                    break
        return kept

    indices, _ = sample_indices(len(frames()), num)
    kept = frames(stop=max(indices))
    return np.stack([kept[i] for i in indices])


def reader_sample(name: str, path: Path, num: int) -> np.ndarray:
    reader = get_reader(name)
    indices, _ = sample_indices(reader.frame_count(path), num)
    return reader.read(path, indices)


SAMPLERS = {"old pyav (full decode)": old_pyav_sample, "pyav (seeking)": functools.partial(reader_sample, "pyav"),
            "decord": functools.partial(reader_sample, "decord")}


def _sampler(name: str, path: Path, num: int):
    """peak_extra_mib's setup (module level, so it pickles): the libraries are imported here, outside the measure."""
    import av  # noqa: F401
    import decord  # noqa: F401

    return functools.partial(SAMPLERS[name], path, num)


def long_video_sampling(root: Path, frames: int = 2000, size: int = 336, num: int = 16, gop: int = 250) -> None:
    path = root / f"long-{frames}x{size}.mp4"
    start = time.perf_counter()
    write_long_video(path, frames, size, gop)
    print(f"{num} frames sampled from a {frames}-frame {size} px H.264 video (keyframe every {gop} frames, "
          f"{path.stat().st_size / 2**20:.1f} MiB; written in {time.perf_counter() - start:.0f} s)")
    reference = old_pyav_sample(path, num)
    rows = {}
    for name, sample in SAMPLERS.items():
        frames_read = sample(path, num)
        same = "equal to the full decode" if np.array_equal(frames_read, reference) else \
            f"max |diff| {np.abs(frames_read.astype(int) - reference).max()} from the full decode"
        ms = time_ms(functools.partial(sample, path, num), "cpu", repeats=3)
        mib = peak_extra_mib(functools.partial(_sampler, name, path, num), "cpu")
        rows[name] = (ms, mib)
        print(f"  {name:24s} {ms / 1e3:6.2f} s  peak extra memory {mib:7.1f} MiB  ({same})")
    (old_ms, old_mib), (new_ms, new_mib) = rows["old pyav (full decode)"], rows["pyav (seeking)"]
    print(f"  seeking vs full decode: {old_ms / new_ms:.1f}x faster, {old_mib / max(new_mib, 0.1):.1f}x less memory")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--part", choices=("all", "pipeline", "reader"), default="all")
    args = parser.parse_args()
    if args.part in ("all", "reader"):
        with tempfile.TemporaryDirectory() as tmp:
            long_video_sampling(Path(tmp))
        if args.part == "reader":
            return
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
