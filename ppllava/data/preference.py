"""DPO preference pairs in the LLaVA-Hound JSONL layout:
{"id", "video" (or "image"), "prompt", "chosen", "rejected"} -> the same media with two answers."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Sequence, Union

from torch.utils.data import Dataset

from ppllava.data.conversation import encode_conversation
from ppllava.data.dataset import Collator, LLaVADataset, Sample, read_records


def _conversation(record: dict, answer_key: str, source: str) -> dict:
    for key in ("prompt", answer_key):
        if not str(record.get(key, "")).strip():
            raise ValueError(f"{source}: preference record {record.get('id', '?')} has no {key!r}")
    token = "<video>" if "video" in record else "<image>"
    # The task rides along: how an answer is scored depends on it (a caption's clauses in any order).
    kept = {k: record[k] for k in ("video", "image", "task") if k in record}
    return {"id": record.get("id"), **kept, "conversations": [
        {"from": "human", "value": f"{token}\n{record['prompt']}"}, {"from": "gpt", "value": record[answer_key]}]}


class PreferenceDataset(Dataset):
    """Each item: {"chosen": Sample, "rejected": Sample}, decoding the media once."""

    def __init__(self, annotations: Union[str, Path], config, tokenizer, **dataset_kwargs):
        self.source = str(annotations)
        # The rejected turns ride in the chosen record, so they stay paired with it even when
        # skip_bad drops records from the base dataset.
        records = [{**_conversation(r, "chosen", self.source),
                    "rejected_conversations": _conversation(r, "rejected", self.source)["conversations"]}
                   for r in read_records(annotations)]
        self.base = LLaVADataset(records, config, tokenizer,
                                 media_root=dataset_kwargs.pop("media_root", Path(annotations).parent), **dataset_kwargs)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        chosen = self.base[index]
        if not isinstance(chosen, Sample):  # a counted skip
            return chosen
        ids, labels = encode_conversation(chosen.record["rejected_conversations"], self.base.tokenizer,
                                          self.base.template, chosen.id)
        frames = [chosen.pixels.shape[0]] if chosen.kind == "video" else []
        expanded = self.base.layout.expand_placeholders(ids, image_sizes=chosen.image_sizes,
                                                        image_crops=chosen.image_crops, video_frames=frames)
        rejected = replace(chosen, input_ids=expanded, labels=self.base._expand_labels(ids, labels, expanded))
        return {"chosen": chosen, "rejected": rejected}


class PreferenceCollator:
    """{"chosen": batch, "rejected": batch}, each as `Collator` makes it; skips counted once."""

    def __init__(self, collator: Collator):
        self.collator = collator

    def __call__(self, items: Sequence) -> Dict[str, object]:
        pairs = [item for item in items if "chosen" in item]
        chosen = self.collator([p["chosen"] for p in pairs])
        rejected = self.collator([p["rejected"] for p in pairs])
        return {"chosen": chosen, "rejected": rejected, "skipped": [i["skipped"] for i in items if "skipped" in i]}
