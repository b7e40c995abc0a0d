"""The world's held-out splits as lmms-eval tasks, read from local files (no hub):

    python -m ppllava.eval.world_tasks --world data/tiny --out runs/lmms-tasks [--splits val test]
    python -m lmms_eval --model ppllava --model_args pretrained=... --include_path runs/lmms-tasks \\
        --tasks ppllava_world_test,ppllava_world_test_mc,ppllava_world_needle

Tasks written (each a YAML, its docs as JSON lines under data/, one shared utils.py):
  ppllava_world_<split>       the split's video records (short clips, every question kind)
  ppllava_world_<split>_mc    its multiple-choice records
  ppllava_world_needle_<N>    the `long` split's needle videos of N frames; group ppllava_world_needle
A doc is {"id", "video" (absolute path), "question", "answer", "task", "frames"}; the question is the
record's, its `<video>` placeholder left to the model (lmms-eval's tasks give the question alone).
Scoring is the kit's `answer_correct` (exact match after normalisation; captions in any clause
order), so the accuracy is the one `accuracy_by_task` gives on the same records.

The YAMLs hold absolute paths to the docs and the docs to the videos: export again after moving
the world or the tasks.
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

from ppllava.data.records import RecordError, check_record, read_entries
from ppllava.evaluate import answer_correct

PREFIX = "ppllava_world"
HELD_OUT = ("val", "test")
MANIFEST = "ppllava_tasks.json"  # what an export wrote, so the next one replaces exactly that
# The world's longest answer, a four-object caption, is 23 words: the kit's generate_answers default.
MAX_NEW_TOKENS = 32
UTILS = ("# The doc functions of the ppllava world tasks (written by ppllava.eval.world_tasks).\n"
         "from ppllava.eval.world_tasks import doc_to_text, doc_to_visual, process_results  # noqa: F401\n")


# --- what lmms-eval calls, through the tasks' utils.py ---------------------------------------------
def doc_to_visual(doc: dict, lmms_eval_specific_kwargs: Optional[dict] = None) -> List[str]:
    return [doc["video"]]


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: Optional[dict] = None) -> str:
    return doc["question"]


def process_results(doc: dict, results: Sequence[str]) -> Dict[str, float]:
    """The kit's exact-match rule on the one generated answer."""
    return {"accuracy": float(answer_correct(results[0], doc["answer"], doc["task"]))}


# --- the export ------------------------------------------------------------------------------------
def video_docs(path: Path) -> List[dict]:
    """The single-question video records of an annotation file as docs; a RecordError names the
    file, the place and the record for one that cannot be read or is not a single question."""
    docs = []
    for entry in read_entries(path):
        if entry.fault is not None:
            raise entry.fault
        record = entry.record
        try:
            if check_record(record) != "video":
                continue
            turns = record["conversations"]
            if len(turns) != 2:
                raise RecordError(f"{len(turns)} turns; a task doc is one question and its answer",
                                  reason="bad_field", field="conversations")
        except RecordError as err:
            raise entry.error(err) from None
        docs.append({"id": str(record["id"]), "video": str((path.parent / record["video"]).resolve()),
                     "question": " ".join(turns[0]["value"].replace("<video>", " ").split()),
                     "answer": turns[1]["value"], "task": str(record.get("task", "?")),
                     "frames": int(record.get("frames", 0))})
    return docs


def task_yaml(name: str, data: Path) -> str:
    """An lmms-eval task on a local JSON-lines file (datasets' packaged `json` builder, offline)."""
    return (f"# Written by ppllava.eval.world_tasks: the world's records, scored by ppllava.evaluate.answer_correct.\n"
            f"task: {name}\n"
            f"dataset_path: json\n"
            f"dataset_kwargs:\n  data_files:\n    test: {json.dumps(str(data))}\n"
            f"test_split: test\n"
            f"output_type: generate_until\n"
            f"doc_to_visual: !function utils.doc_to_visual\n"
            f"doc_to_text: !function utils.doc_to_text\n"
            f"doc_to_target: answer\n"
            f"generation_kwargs:\n  max_new_tokens: {MAX_NEW_TOKENS}\n  do_sample: false\n"
            f"  until: []  # none: the answer ends at the tokenizer's end of sequence, as in the kit's evaluation\n"
            f"process_results: !function utils.process_results\n"
            f"metric_list:\n  - metric: accuracy\n    aggregation: mean\n    higher_is_better: true\n"
            f"metadata:\n  version: 0.0\n")


def export_world_tasks(world: Union[str, Path], out: Union[str, Path],
                       splits: Sequence[str] = ("test",)) -> Dict[str, int]:
    """Write the tasks of `world`'s held-out `splits` (and its `long` split, when it has one) into
    `out`; returns {task: docs}. An empty task (no multiple choice in a split) is not written."""
    world, out = Path(world).resolve(), Path(out).resolve()
    if not (world / "world.json").is_file():
        raise FileNotFoundError(f"{world}: no world.json, not a world written by ppllava.data.world")
    unknown = [s for s in splits if s not in HELD_OUT]
    if unknown or not splits:
        raise ValueError(f"splits must be held-out splits among {HELD_OUT}, got {list(splits)}")
    tasks: Dict[str, List[dict]] = {}
    for split in splits:
        if not (world / f"{split}.json").is_file():
            raise FileNotFoundError(f"{world / f'{split}.json'}: the world has no {split} split")
        docs = video_docs(world / f"{split}.json")
        tasks[f"{PREFIX}_{split}"] = docs
        tasks[f"{PREFIX}_{split}_mc"] = [d for d in docs if d["task"] == "mc"]
    needles: Dict[int, List[dict]] = defaultdict(list)
    if (world / "long.json").is_file():
        for doc in video_docs(world / "long.json"):
            needles[doc["frames"]].append(doc)
    for frames in sorted(needles):
        tasks[f"{PREFIX}_needle_{frames}"] = needles[frames]
    tasks = {name: docs for name, docs in tasks.items() if docs}
    _clear(out)
    (out / "data").mkdir(parents=True, exist_ok=True)
    written = ["utils.py"]
    (out / "utils.py").write_text(UTILS)
    for name, docs in tasks.items():
        data = out / "data" / f"{name}.jsonl"
        data.write_text("".join(json.dumps(d) + "\n" for d in docs))
        (out / f"{name}.yaml").write_text(task_yaml(name, data))
        written += [f"data/{name}.jsonl", f"{name}.yaml"]
    if needles:
        group = "".join(f"  - {PREFIX}_needle_{n}\n" for n in sorted(needles))
        (out / f"{PREFIX}_needle.yaml").write_text(f"group: {PREFIX}_needle\ntask:\n{group}")
        written.append(f"{PREFIX}_needle.yaml")
    counts = {name: len(docs) for name, docs in tasks.items()}
    (out / MANIFEST).write_text(json.dumps({"world": str(world), "tasks": counts, "files": written}, indent=1))
    return counts


def _clear(out: Path) -> None:
    """Remove what an earlier export wrote into `out`; refuse a directory holding anything else."""
    manifest = out / MANIFEST
    if manifest.is_file():
        for name in json.loads(manifest.read_text())["files"]:
            (out / name).unlink(missing_ok=True)
        manifest.unlink()
    if out.exists() and any(p.is_file() for p in out.rglob("*")):
        raise FileExistsError(f"{out} holds files no earlier export wrote; give an empty or new directory")


def main(argv=None) -> Dict[str, int]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", type=Path, required=True, help="a world directory (ppllava.data.world)")
    parser.add_argument("--out", type=Path, required=True, help="the tasks directory, lmms-eval's --include_path")
    parser.add_argument("--splits", nargs="+", default=["test"], choices=HELD_OUT)
    args = parser.parse_args(argv)
    if not (args.world / "world.json").is_file():
        parser.error(f"--world {args.world}: no world.json, not a world written by ppllava.data.world")
    try:
        counts = export_world_tasks(args.world, args.out, args.splits)
    except (FileExistsError, FileNotFoundError, RecordError) as err:
        parser.error(str(err))
    print(json.dumps(counts))
    return counts


if __name__ == "__main__":
    main()
