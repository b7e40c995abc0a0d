"""The tiny recipe from scratch, end to end on a CPU: write the world, CLIP post-pretraining (and
the global-loss ablation), SFT stage 1 and 2, DPO; then the held-out scores.

    python -m ppllava.train.recipe --out runs/tiny-recipe            # configs/tiny/*.yaml
    python -m ppllava.train.recipe --out /tmp/r --smoke              # minutes -> seconds

Writes results.json and results.md (the README's table) in --out.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Dict

from torch.utils.data import DataLoader

from ppllava.data.clip_pairs import ClipPairCollator, ClipPairDataset
from ppllava.data.dataset import LLaVADataset
from ppllava.data.preference import PreferenceDataset
from ppllava.data.tokenizer import build_world_tokenizer
from ppllava.data.world import WorldSpec, write_world
from ppllava.evaluate import accuracy_by_task, generate_answers, pointing, preference_scores
from ppllava.model import load_pretrained
from ppllava.train.config import TrainConfig
from ppllava.train.run import run

CONFIGS = Path(__file__).resolve().parent.parent.parent / "configs"


def _stage(name: str, preset: str, out: Path, smoke: bool, **overrides) -> TrainConfig:
    cfg = TrainConfig.from_yaml(CONFIGS / preset / f"{name}.yaml")
    fields = dict(data=str(out / "world"), run_dir=str(out / name), **overrides)
    if cfg.init_from is not None:
        fields["init_from"] = str(out / Path(cfg.init_from).parent.name / "model")
    if smoke:
        fields.update(max_steps=3, max_epochs=1, batch_size=min(cfg.batch_size, 8))
    return TrainConfig(**{**cfg.__dict__, **fields})


def main(argv=None) -> Dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--train", type=int, default=6000)
    parser.add_argument("--eval", type=int, default=300)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    out = args.out
    n_train, n_eval = (48, 16) if args.smoke else (args.train, args.eval)
    results: Dict[str, object] = {"seconds": {}}
    start = time.perf_counter()
    write_world(out / "world", WorldSpec(), train=n_train, val=n_eval, test=n_eval, long_per_length=0)
    results["seconds"]["world"] = time.perf_counter() - start

    for name, extra in (("clip", {}), ("clip_global", {"clip_loss": "global"}), ("sft1", {}), ("sft2", {}), ("dpo", {})):
        stage = "clip" if name == "clip_global" else name
        cfg = _stage(stage, args.preset, out, args.smoke, **extra)
        if name == "clip_global":
            cfg.run_dir = str(out / "clip_global")
        metrics = run(cfg)
        results["seconds"][name] = metrics["wall_seconds"]

    world = out / "world"
    tokenizer = build_world_tokenizer()
    pointing_scores = {}
    for name in ("clip", "clip_global"):
        model = load_pretrained(out / name / "model")
        pairs = ClipPairDataset(world / "test.json", model.config.image_size, model.config.patch_size)
        loader = DataLoader(pairs, batch_size=64, collate_fn=ClipPairCollator(model.config.clip_context))
        pointing_scores[name] = pointing(model, loader)
    results["pointing"] = pointing_scores

    sft = load_pretrained(out / "sft2" / "model")
    test = LLaVADataset(world / "test.json", sft.config, tokenizer)
    results["sft_accuracy"] = accuracy_by_task(generate_answers(sft, test))
    pairs = PreferenceDataset(world / "test_dpo.jsonl", sft.config, tokenizer)
    results["dpo_before"] = preference_scores(sft, pairs)
    dpo = load_pretrained(out / "dpo" / "model")
    results["dpo_after"] = preference_scores(dpo, pairs)
    results["dpo_accuracy"] = accuracy_by_task(generate_answers(dpo, test))
    results["seconds"]["total"] = time.perf_counter() - start
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(table(results))
    print(table(results))
    return results


def table(r: Dict[str, object]) -> str:
    s, acc = r["seconds"], r["sft_accuracy"]
    rows = [
        "| measure | value |", "| --- | --- |",
        *(f"| wall time, {k} | {v:.0f} s |" for k, v in s.items()),
        f"| pointing accuracy, fine-grained CLIP | {r['pointing']['clip']:.3f} |",
        f"| pointing accuracy, global CLIP (ablation) | {r['pointing']['clip_global']:.3f} |",
        *(f"| held-out accuracy after SFT, {k} | {v:.3f} |" for k, v in acc.items()),
        f"| DPO preference accuracy, before / after | {r['dpo_before']['preference_accuracy']:.3f} / "
        f"{r['dpo_after']['preference_accuracy']:.3f} |",
        f"| hallucination rate (wrong answers on the DPO questions), before / after | "
        f"{r['dpo_before']['hallucination_rate']:.3f} / {r['dpo_after']['hallucination_rate']:.3f} |",
    ]
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    main()
