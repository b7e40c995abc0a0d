"""Training several variants one after another in this process, or at once in processes of their own
(`ppllava.train.at_once`, what `Recipe.at_once` does), side by side in one run.

    python benchmarks/at_once_bench.py                       # 4 stage-2 variants x 200 steps, tiny preset
    python benchmarks/at_once_bench.py --variants 6 --steps 300 --out /tmp/bench   # keep the runs

The variants are notebook 03's kind: configs/tiny/sft2.yaml in a pooling mode each (prompt, none,
adaptive, temporal_mean, spatial, ...) from a random start, on a small world written first (not timed).
"one after another" trains them with `ppllava.train.run.run` here, with torch's threads as they are (the
cores); "at once" with `train_jobs`, `--at-once` at a time, the cores shared out. Both walls include
everything a notebook waits for: building the model and data, decoding, training, saving; "at once"
also each process's start (imports). Prints both walls and their ratio as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from ppllava.data.world import WorldSpec, write_world
from ppllava.train.at_once import Job, train_jobs
from ppllava.train.config import TrainConfig
from ppllava.train.run import run

SFT2 = Path(__file__).resolve().parent.parent / "configs" / "tiny" / "sft2.yaml"
MODES = [{}, {"pooling": "none"}, {"pooling": "adaptive", "video_output_size": [4, 2, 2]},
         {"pooling": "temporal_mean"}, {"pooling": "spatial"}, {"pooling": "merge"}]


def configs(world: Path, out: Path, variants: int, steps: int):
    """The tiny stage-2 config, one pooling mode per variant, no validation (it is not what is timed)."""
    return [TrainConfig.from_yaml(SFT2, data=str(world), run_dir=str(out / f"v{i}"), init_from=None,
                                  model=MODES[i % len(MODES)], max_steps=steps, val_every_n_epochs=1000, seed=i)
            for i in range(variants)]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", type=int, default=4)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--at-once", type=int, default=2)
    parser.add_argument("--train-records", type=int, default=1200)
    parser.add_argument("--out", type=Path, help="write the world and the runs here and keep them (default: a temporary directory)")
    args = parser.parse_args(argv)
    if not 1 <= args.variants <= len(MODES) * 4 or args.steps < 1 or args.at_once < 2:
        parser.error("--variants in [1, 24], --steps >= 1, --at-once >= 2")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = args.out or tmp
        world = Path(tmp) / "world"
        write_world(world, WorldSpec(), train=args.train_records, val=16, test=16, long_per_length=0, progress=False)
        start = time.perf_counter()
        for cfg in configs(world, Path(tmp) / "one", args.variants, args.steps):
            run(cfg)
        sequential = time.perf_counter() - start
        start = time.perf_counter()
        train_jobs([Job(Path(c.run_dir).name, c) for c in configs(world, Path(tmp) / "many", args.variants, args.steps)],
                   at_once=args.at_once)
        together = time.perf_counter() - start
    result = {"variants": args.variants, "steps": args.steps, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
              "one_after_another_s": round(sequential, 1), f"{args.at_once}_at_once_s": round(together, 1),
              "speed_up": round(sequential / together, 2)}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
