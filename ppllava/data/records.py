"""LLaVA-format annotation files read and checked record by record, before any media is touched.

Every fault is a `RecordError` naming the file, the JSONL line (or JSON list index), the record id
and the field, with a short `reason` that `skip_bad` counts by (see `ppllava.data.dataset`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Union

MEDIA_KEYS = ("video", "image", "images")
SPEAKERS = ("human", "gpt")
# A top-level key that is none of MEDIA_KEYS but looks like media (`videos`, `img`, `audio`, a value
# ending in .mp4) is an error: the record would train as text with its media ignored. Metadata keys
# (task, target, boxes, frames, scene, options, rejected, ...) pass.
_MEDIA_WORDS = ("video", "image", "img", "audio", "media", "photo", "picture", "movie")
_MEDIA_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif", ".png", ".jpg", ".jpeg", ".bmp", ".wav", ".mp3")
_TEXT_KEYS = ("id", "conversations", "rejected_conversations")  # free text: a file-like id is no media key


class RecordError(ValueError):
    """A bad annotation record: "train.jsonl line 7 (id 'v-3'), field 'video': must be a path, got null".

    reason, the key SkipReport counts by: bad_encoding (not UTF-8), bad_json, not_object, bad_field,
    no_question, no_answer, unknown_words (outside a word-level vocabulary), media_key (unknown or several), media_mismatch (placeholders against
    media), media (missing, corrupt or empty file), too_long.
    unit: "line" (JSONL, 1-based) or "list index" (a JSON list or records in memory, 0-based).
    Made from the message alone (as the DataLoader re-raises a worker's error), it is that message.
    """

    def __init__(self, problem: str, *, reason: str = "bad_record", file: Optional[str] = None, unit: str = "line",
                 line: Optional[int] = None, record_id: object = None, field: Optional[str] = None):
        self.problem, self.reason, self.file, self.unit = problem, reason, file, unit
        self.line, self.record_id, self.field = line, record_id, field
        super().__init__(problem if file is None else f"{self.where()}: {problem}")

    def where(self) -> str:
        place = self.file if self.line is None else f"{self.file} {self.unit} {self.line}"
        place += "" if self.record_id is None else f" (id {self.record_id!r})"
        return place + ("" if self.field is None else f", field {self.field!r}")

    def at(self, file: str, unit: str, line: Optional[int], record_id: object = None) -> "RecordError":
        """This fault placed in its file."""
        return RecordError(self.problem, reason=self.reason, file=file, unit=unit, line=line, record_id=record_id,
                           field=self.field)


def _show(value) -> str:
    """A JSON value as the file spells it (null, "a.png", []), cut short."""
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True)
class Entry:
    """One record of an annotation file and where it stands; `fault` (placed) when it cannot be read."""
    file: str
    unit: str  # "line" | "list index"
    line: int
    record: Optional[dict]
    fault: Optional[RecordError] = None

    def error(self, err: RecordError) -> RecordError:
        return err.at(self.file, self.unit, self.line, self.record.get("id") if self.record else None)


def record_entry(file: str, unit: str, line: int, value) -> Entry:
    if isinstance(value, dict):
        return Entry(file, unit, line, value)
    err = RecordError(f"a record must be a JSON object, got {_show(value)}", reason="not_object")
    return Entry(file, unit, line, None, err.at(file, unit, line))


def _jsonl_entry(file: str, line: int, raw: bytes) -> Entry:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        try:  # the id, read around the bad bytes, only to name the record
            guess = json.loads(raw.decode("utf-8", "replace"))
        except json.JSONDecodeError:
            guess = None
        rid = guess.get("id") if isinstance(guess, dict) else None
        bad = RecordError(f"not UTF-8 at byte {err.start} of the line ({raw[err.start:err.start + 4]!r})",
                          reason="bad_encoding")
        return Entry(file, "line", line, None, bad.at(file, "line", line, rid))
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        bad = RecordError(f"not valid JSON ({err.msg}, column {err.colno})", reason="bad_json")
        return Entry(file, "line", line, None, bad.at(file, "line", line))
    return record_entry(file, "line", line, value)


def read_entries(path: Union[str, Path]) -> List[Entry]:
    """A LLaVA annotation file, a JSON list or JSONL (one record per line), as entries that say where
    each record is. A fault of one JSONL line is that entry's `fault`; a JSON list that cannot be read
    is a RecordError (naming its line) for the whole file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such annotation file")
    file, data = str(path), path.read_bytes()
    if path.suffix == ".jsonl":
        # Split on newlines only (str.splitlines also splits inside strings, at U+2028 and friends),
        # numbering blank lines too, so the line number is the one an editor shows.
        return [_jsonl_entry(file, n, raw) for n, raw in enumerate(data.split(b"\n"), 1) if raw.strip()]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RecordError(f"not UTF-8 at byte offset {err.start} ({data[err.start:err.start + 4]!r})",
                          reason="bad_encoding", file=file, line=data.count(b"\n", 0, err.start) + 1) from err
    try:
        records = json.loads(text)
    except json.JSONDecodeError as err:
        raise RecordError(f"not valid JSON ({err.msg}, column {err.colno})", reason="bad_json", file=file,
                          line=err.lineno) from err
    if not isinstance(records, list):
        raise RecordError(f"expected a JSON list of records (or .jsonl, one per line), got a {type(records).__name__}",
                          reason="bad_json", file=file)
    return [record_entry(file, "list index", i, r) for i, r in enumerate(records)]


def read_records(path: Union[str, Path]) -> List[dict]:
    """The records of an annotation file; the first one that cannot be read is a RecordError."""
    entries = read_entries(path)
    for entry in entries:
        if entry.fault is not None:
            raise entry.fault
    return [entry.record for entry in entries]


def check_conversation(turns, key: str = "conversations") -> None:
    """A non-empty list of {"from": "human" | "gpt", "value": str} turns, opened by a question and
    closed by a non-empty answer; else a RecordError naming the field."""
    if not isinstance(turns, list) or not turns:
        raise RecordError(f"must be a non-empty list of turns, got {_show(turns)}", reason="bad_field", field=key)
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise RecordError(f"a turn must be an object with 'from' and 'value', got {_show(turn)}",
                              reason="bad_field", field=f"{key}[{i}]")
        if turn.get("from") not in SPEAKERS:
            raise RecordError(f"the speaker must be one of {SPEAKERS}, got {_show(turn.get('from'))}",
                              reason="bad_field", field=f"{key}[{i}].from")
        if not isinstance(turn.get("value"), str):
            raise RecordError(f"must be a string, got {_show(turn.get('value'))}", reason="bad_field",
                              field=f"{key}[{i}].value")
    if turns[0]["from"] != "human":
        raise RecordError(f"the conversation must open with a 'human' question, got a {turns[0]['from']!r} turn",
                          reason="no_question", field=f"{key}[0].from")
    empty = [i for i, turn in enumerate(turns) if turn["from"] == "human" and not turn["value"].strip()]
    if empty:
        raise RecordError("an empty question (a 'human' turn with no text)", reason="no_question",
                          field=f"{key}[{empty[0]}].value")
    if turns[-1]["from"] != "gpt" or not turns[-1]["value"].strip():
        raise RecordError("no answer: the last turn must be a non-empty 'gpt' turn", reason="no_answer",
                          field=f"{key}[{len(turns) - 1}]")


def _looks_like_media(key: str, value) -> bool:
    if key in MEDIA_KEYS or key in _TEXT_KEYS:
        return False
    values = value if isinstance(value, list) else [value]
    return any(w in key.lower() for w in _MEDIA_WORDS) or any(
        isinstance(v, str) and v.lower().endswith(_MEDIA_SUFFIXES) for v in values)


def media_kind(record: dict) -> str:
    """video | image | multi, or text for a text-only record (LLaVA's SFT mixes hold those too), of a
    record whose conversation passed `check_conversation`; a RecordError for a bad media key, value or
    placeholder count."""
    keys = [k for k in MEDIA_KEYS if k in record]
    text = " ".join(t["value"] for t in record["conversations"])
    placed = {"<video>": text.count("<video>"), "<image>": text.count("<image>")}
    unknown = [k for k in record if _looks_like_media(k, record[k])]
    if unknown:
        orphans = "; the text has media placeholders but no media key" if any(placed.values()) and not keys else ""
        raise RecordError(f"unknown media key {unknown[0]!r} (known: {', '.join(MEDIA_KEYS)}){orphans}",
                          reason="media_key", field=unknown[0])
    if len(keys) > 1:
        raise RecordError(f"several media keys {keys}: a record has one of {MEDIA_KEYS}", reason="media_key",
                          field=keys[1])
    if not keys:
        if any(placed.values()):
            raise RecordError(f"media placeholders but no media key of {MEDIA_KEYS}", reason="media_mismatch",
                              field="conversations")
        return "text"
    key, value = keys[0], record[keys[0]]
    if key == "images":
        if not isinstance(value, list) or not value:
            raise RecordError(f"must be a non-empty list of image paths, got {_show(value)}", reason="bad_field", field=key)
        for i, name in enumerate(value):
            if not isinstance(name, str) or not name.strip():
                raise RecordError(f"must be an image path, got {_show(name)}", reason="bad_field", field=f"images[{i}]")
    elif not isinstance(value, str) or not value.strip():
        what = "a video file or frame folder" if key == "video" else "an image file"
        raise RecordError(f"must be the path of {what}, got {_show(value)}", reason="bad_field", field=key)
    want = {"video": {"<video>": 1, "<image>": 0}, "image": {"<video>": 0, "<image>": 1},
            "images": {"<video>": 0, "<image>": len(value)}}[key]
    if placed != want:
        raise RecordError(f"the text has {placed['<image>']} <image> and {placed['<video>']} <video> placeholders, "
                          f"its {key!r} needs {want['<image>']} and {want['<video>']}", reason="media_mismatch",
                          field="conversations")
    return {"video": "video", "image": "image", "images": "multi"}[key]


def check_record(record: dict) -> str:
    """The whole structure of a record, checked once: its media kind, or a RecordError."""
    check_conversation(record.get("conversations"))
    return media_kind(record)
