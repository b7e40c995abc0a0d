"""Bad annotation records (issue #13 §2): each class of fault is a RecordError naming the file, the
JSONL line (or JSON list index), the record id and the field, or with skip_bad a skip counted by its
reason; good records are still served, in order, and none is replaced."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from ppllava.config import PPLLaVAConfig
from ppllava.data.conversation import clip_prompt_text
from ppllava.data.datamodules import SkipReport
from ppllava.data.dataset import Collator, LLaVADataset, RecordError, Sample, read_records
from ppllava.data.preference import PreferenceCollator, PreferenceDataset
from ppllava.data.tokenizer import build_world_tokenizer
from ppllava.data.world import write_video

CONFIG = PPLLaVAConfig.from_name("tiny")


def turns(question="what colour is the star ?", answer="red", token=""):
    return [{"from": "human", "value": f"{token}{question}"}, {"from": "gpt", "value": answer}]


def good(i):
    return {"id": f"good-{i}", "task": "colour", "conversations": turns()}


# (name, the bad JSONL line as bytes, reason, field it names, id it names: None when unreadable)
def _line(record):
    return json.dumps(record).encode()


FAULTS = [
    ("not an object", b'["a", "list"]', "not_object", None, None),
    ("invalid json", b'{"id": "cut", "conversations": [', "bad_json", None, None),
    ("non-utf8 bytes", b'{"id": "latin", "conversations": [{"from": "human", "value": "caf\xe9"}]}', "bad_encoding",
     None, "latin"),
    ("conversations a string", _line({"id": "str", "conversations": "what colour ? red"}), "bad_field",
     "conversations", "str"),
    ("no conversations", _line({"id": "none"}), "bad_field", "conversations", "none"),
    ("turn not an object", _line({"id": "turn", "conversations": ["what colour ?", "red"]}), "bad_field",
     "conversations[0]", "turn"),
    ("unknown speaker", _line({"id": "who", "conversations": [{"from": "user", "value": "hi"}, turns()[1]]}),
     "bad_field", "conversations[0].from", "who"),
    ("null answer", _line({"id": "null", "conversations": [turns()[0], {"from": "gpt", "value": None}]}), "bad_field",
     "conversations[1].value", "null"),
    ("gpt turn only", _line({"id": "gpt", "conversations": turns()[1:]}), "no_question", "conversations[0].from", "gpt"),
    ("gpt turn first", _line({"id": "gpt2", "conversations": turns()[::-1]}), "no_question", "conversations[0].from",
     "gpt2"),
    ("empty question", _line({"id": "hush", "conversations": turns(question=" ")}), "no_question",
     "conversations[0].value", "hush"),
    ("question only", _line({"id": "mute", "conversations": turns()[:1]}), "no_answer", "conversations[0]", "mute"),
    ("blank answer", _line({"id": "blank", "conversations": turns(answer="  ")}), "no_answer", "conversations[1]",
     "blank"),
    ("video null", _line({"id": "vnull", "video": None, "conversations": turns(token="<video>\n")}), "bad_field",
     "video", "vnull"),
    ("images empty", _line({"id": "empty", "images": [], "conversations": turns()}), "bad_field", "images", "empty"),
    ("images a string", _line({"id": "chars", "images": "a.png", "conversations": turns(token="<image>\n")}),
     "bad_field", "images", "chars"),
    ("images holds null", _line({"id": "hole", "images": ["a.png", None], "conversations": turns(token="<image><image>")}),
     "bad_field", "images[1]", "hole"),
    ("unknown media key", _line({"id": "vids", "videos": "v.mp4", "conversations": turns(token="<video>\n")}),
     "media_key", "videos", "vids"),
    ("media-like value", _line({"id": "clip", "clip": "v.mp4", "conversations": turns()}), "media_key", "clip", "clip"),
    ("two media keys", _line({"id": "both", "video": "v.mp4", "image": "a.png", "conversations": turns(token="<video>")}),
     "media_key", "image", "both"),
    ("placeholder without media", _line({"id": "orphan", "conversations": turns(token="<image>\n")}), "media_mismatch",
     "conversations", "orphan"),
    ("placeholders against images", _line({"id": "count", "images": ["a.png", "a.png"], "conversations": turns(token="<image>")}),
     "media_mismatch", "conversations", "count"),
]


@pytest.fixture(scope="module")
def tokenizer():
    return build_world_tokenizer()


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """A media root: a good image and video, a frame folder, and the same with a corrupt file."""
    root = tmp_path_factory.mktemp("media")
    frames = np.random.default_rng(0).integers(0, 255, (8, 64, 64, 3), dtype=np.uint8)
    Image.fromarray(frames[0]).save(root / "a.png")
    (root / "broken.png").write_bytes(b"not a png" * 20)
    write_video(root / "v.mp4", frames, 8)
    for folder in ("frames", "bad_frames"):
        (root / folder).mkdir()
        for t, frame in enumerate(frames):
            Image.fromarray(frame).save(root / folder / f"{t:04d}.png")
    (root / "bad_frames" / "0003.png").write_bytes(b"truncated")
    return root


def write_jsonl(path, lines):
    """Lines as given (bytes, or records as JSON), a blank line after the second, so that line
    numbers and record counts differ."""
    raw = [line if isinstance(line, bytes) else _line(line) for line in lines]
    path.write_bytes(b"\n".join(raw[:2] + [b""] + raw[2:]) + b"\n")
    return path


@pytest.mark.parametrize("name, line, reason, field, rid", FAULTS, ids=[f[0] for f in FAULTS])
def test_each_fault_names_file_line_and_id(tmp_path, tokenizer, media, name, line, reason, field, rid):
    path = write_jsonl(tmp_path / "train.jsonl", [good(0), good(1), line, good(2)])  # the bad record: line 4
    with pytest.raises(RecordError, match=r"train\.jsonl line 4\b") as info:
        LLaVADataset(path, CONFIG, tokenizer, media_root=media)
    err = info.value
    assert (err.file, err.line, err.reason, err.field, err.record_id) == (str(path), 4, reason, field, rid)
    if rid is not None:
        assert f"(id '{rid}')" in str(err)
    if field is not None:
        assert f"field '{field}'" in str(err)


@pytest.mark.parametrize("name, line, reason, field, rid", FAULTS, ids=[f[0] for f in FAULTS])
def test_skip_bad_counts_each_fault_and_keeps_the_good(tmp_path, tokenizer, media, name, line, reason, field, rid):
    path = write_jsonl(tmp_path / "train.jsonl", [good(0), good(1), line, good(2)])
    ds = LLaVADataset(path, CONFIG, tokenizer, media_root=media, skip_bad=True)
    assert ds.skipped_at_build() == {reason: 1} and ds.invalid[0].line == 4
    assert [ds[i].id for i in range(len(ds))] == ["good-0", "good-1", "good-2"]  # served, none replaced
    assert [w.line for w in ds.where] == [1, 2, 5]


def test_json_lists_name_the_list_index(tmp_path, tokenizer, media):
    path = tmp_path / "train.json"
    path.write_text(json.dumps([good(0), {"id": "gpt", "conversations": turns()[1:]}, good(1)], indent=1))
    with pytest.raises(RecordError, match=r"train\.json list index 1 \(id 'gpt'\), field 'conversations\[0\]\.from'"):
        LLaVADataset(path, CONFIG, tokenizer, media_root=media)
    with pytest.raises(RecordError, match=r"<records> list index 1 \(id 'gpt'\)"):
        LLaVADataset(json.loads(path.read_text()), CONFIG, tokenizer, media_root=media)


def test_line_numbers_hold_with_crlf_blank_lines_and_unicode_line_separators(tmp_path, tokenizer, media):
    # U+2028 inside a string is legal JSON on one line; str.splitlines() split the record there.
    text = json.dumps(good(0), ensure_ascii=False).replace("red", "red\u2028")
    lines = ["", text, "", json.dumps(good(1)), "   ", json.dumps({"id": "late", "conversations": turns()[:1]})]
    path = tmp_path / "train.jsonl"
    path.write_bytes("\r\n".join(lines).encode())
    with pytest.raises(RecordError, match=r"train\.jsonl line 6 \(id 'late'\)"):
        LLaVADataset(path, CONFIG, tokenizer, media_root=media)
    ds = LLaVADataset(path, CONFIG, tokenizer, media_root=media, skip_bad=True)
    assert [w.line for w in ds.where] == [2, 4] and ds.records[0]["conversations"][1]["value"] == "red\u2028"


def test_unreadable_json_files_name_the_line(tmp_path):
    bad_bytes = tmp_path / "latin.json"
    bad_bytes.write_bytes(b'[\n {"id": "a"},\n {"id": "caf\xe9"}\n]')
    with pytest.raises(RecordError, match=r"latin\.json line 3: not UTF-8 at byte offset 28") as info:
        read_records(bad_bytes)
    assert info.value.reason == "bad_encoding"
    broken = tmp_path / "broken.json"
    broken.write_text('[\n {"id": "a"},\n {"id": "b",}\n]')
    with pytest.raises(RecordError, match=r"broken\.json line 3: not valid JSON"):
        read_records(broken)
    mapping = tmp_path / "mapping.json"
    mapping.write_text('{"id": "a"}')
    with pytest.raises(RecordError, match=r"mapping\.json: expected a JSON list of records"):
        read_records(mapping)
    with pytest.raises(RecordError, match=r"lines\.jsonl line 2: a record must be a JSON object, got 7"):
        read_records(write_jsonl(tmp_path / "lines.jsonl", [good(0), b"7"]))


MEDIA_FAULTS = [  # (record, reader, the media path the message names)
    ({"id": "lost", "image": "nowhere.png", "conversations": turns(token="<image>\n")}, "decord", "nowhere.png"),
    ({"id": "broken", "image": "broken.png", "conversations": turns(token="<image>\n")}, "decord", "broken.png"),
    ({"id": "one-lost", "images": ["a.png", "gone.png"], "conversations": turns(token="<image><image>\n")}, "decord",
     "gone.png"),
    ({"id": "no-video", "video": "gone.mp4", "conversations": turns(token="<video>\n")}, "decord", "gone.mp4"),
    ({"id": "bad-frame", "video": "bad_frames", "conversations": turns(token="<video>\n")}, "frames", "bad_frames"),
    ({"id": "no-folder", "video": "no_frames", "conversations": turns(token="<video>\n")}, "frames", "no_frames"),
]


@pytest.mark.parametrize("record, reader, culprit", MEDIA_FAULTS, ids=[m[0]["id"] for m in MEDIA_FAULTS])
def test_media_faults_are_record_errors_or_counted_skips(tmp_path, tokenizer, media, record, reader, culprit):
    kind = "video" if "video" in record else "image"
    fine = {"id": "fine", **({"video": "frames" if reader == "frames" else "v.mp4"} if kind == "video" else {"image": "a.png"}),
            "conversations": turns(token=f"<{kind}>\n")}
    path = write_jsonl(tmp_path / "train.jsonl", [fine, good(0), record])
    ds = LLaVADataset(path, CONFIG, tokenizer, media_root=media, reader=reader)
    assert isinstance(ds[0], Sample)
    with pytest.raises(RecordError, match=rf"train\.jsonl line 4 \(id '{record['id']}'\).*{culprit}") as info:
        ds[2]
    assert info.value.reason == "media"
    skipping = LLaVADataset(path, CONFIG, tokenizer, media_root=media, reader=reader, skip_bad=True)
    batch = Collator(CONFIG, tokenizer.pad_token_id)([skipping[i] for i in range(len(skipping))])
    assert batch["ids"] == ["fine", "good-0"]
    assert batch["skip_reasons"] == ["media"] and culprit in batch["skipped"][0] and "line 4" in batch["skipped"][0]


def test_a_gpt_only_record_never_ends_the_epoch_early(tmp_path, tokenizer, media):
    path = write_jsonl(tmp_path / "train.jsonl", [good(0), {"id": "gpt", "conversations": turns()[1:]}, good(1), good(2)])
    with pytest.raises(RecordError, match=r"line 2 \(id 'gpt'\)"):
        LLaVADataset(path, CONFIG, tokenizer, media_root=media)
    ds = LLaVADataset(path, CONFIG, tokenizer, media_root=media, skip_bad=True)
    loader = DataLoader(ds, batch_size=1, collate_fn=Collator(CONFIG, tokenizer.pad_token_id))
    assert [b["ids"] for b in loader] == [["good-0"], ["good-1"], ["good-2"]]
    with pytest.raises(ValueError, match="no 'human' turn"):  # not a StopIteration
        clip_prompt_text(turns()[1:])
    # Whatever raises StopIteration while loading, the DataLoader sees an error, not the epoch's end.
    ds.load = lambda index: next(iter([]))
    with pytest.raises(RuntimeError, match=r"train\.jsonl line 1 \(id 'good-0'\).*StopIteration"):
        list(loader)


def test_words_outside_the_vocabulary_are_refused_not_trained_as_unk(tmp_path, tokenizer, media):
    zebra = {"id": "zebra", "conversations": turns(question="what colour is the zebra ?")}
    path = write_jsonl(tmp_path / "train.jsonl", [good(0), zebra])
    ds = LLaVADataset(path, CONFIG, tokenizer, media_root=media)
    with pytest.raises(RecordError, match=r"line 2 \(id 'zebra'\), field 'conversations'.*\['zebra'\]") as info:
        ds[1]
    assert info.value.reason == "unknown_words"
    assert LLaVADataset(path, CONFIG, tokenizer, media_root=media, skip_bad=True)[1]["reason"] == "unknown_words"


def test_too_long_records_are_refused_or_counted(tmp_path, tokenizer, media):
    long = {"id": "long", "conversations": turns(answer="red " * 80)}
    path = write_jsonl(tmp_path / "train.jsonl", [good(0), long])
    ds = LLaVADataset(path, CONFIG, tokenizer, media_root=media, max_length=60)
    assert len(ds[0].input_ids) <= 60
    with pytest.raises(RecordError, match=r"line 2 \(id 'long'\).*: \d+ tokens .*past max_length 60") as info:
        ds[1]
    assert info.value.reason == "too_long"
    assert LLaVADataset(path, CONFIG, tokenizer, media_root=media, max_length=60, skip_bad=True)[1]["reason"] == "too_long"
    # The default is the LLM's positions, which no max_length may pass.
    assert LLaVADataset(path, CONFIG, tokenizer, media_root=media).max_length == CONFIG.llm_max_positions
    over = CONFIG.llm_max_positions + 1
    with pytest.raises(ValueError, match=rf"max_length must be in \[1, {CONFIG.llm_max_positions}\].*got {over}"):
        LLaVADataset(path, CONFIG, tokenizer, media_root=media, max_length=over)


@pytest.mark.parametrize("kwargs, message", [
    ({"num_frames": 0}, "num_frames must be >= 1, got 0"),
    ({"num_frames": -2}, "num_frames must be >= 1, got -2"),
    ({"sampling": "fps"}, "sampling 'fps' needs fps > 0.*got fps=None"),
    ({"sampling": "fps", "fps": 0}, "got fps=0"),
    ({"sampling": "fps", "fps": float("nan")}, "got fps=nan"),
    ({"sampling": "often"}, "sampling must be one of .* got 'often'"),
    ({"template": "vicuna"}, "template must be one of .* got 'vicuna'"),
    ({"max_length": 0}, "max_length must be in .* got 0"),
])
def test_construction_arguments_are_checked(tmp_path, tokenizer, media, kwargs, message):
    path = write_jsonl(tmp_path / "train.jsonl", [good(0)])
    with pytest.raises(ValueError, match=message):
        LLaVADataset(path, CONFIG, tokenizer, media_root=media, **kwargs)


PAIR = {"id": "pair", "video": "v.mp4", "prompt": "what colour is the star ?", "chosen": "red", "rejected": "blue"}


@pytest.mark.parametrize("bad, reason, field", [
    ({**PAIR, "id": "p-chosen", "chosen": None}, "no_answer", "chosen"),
    ({k: v for k, v in PAIR.items() if k != "rejected"} | {"id": "p-rejected"}, "no_answer", "rejected"),
    ({**PAIR, "id": "p-prompt", "prompt": ""}, "no_question", "prompt"),
    ({k: v for k, v in PAIR.items() if k != "video"} | {"id": "p-videos", "videos": "v.mp4"}, "media_key", "videos"),
    ({k: v for k, v in PAIR.items() if k != "video"} | {"id": "p-none"}, "media_mismatch", "conversations"),
])
def test_preference_pairs_name_their_line(tmp_path, tokenizer, media, bad, reason, field):
    path = write_jsonl(tmp_path / "pairs.jsonl", [PAIR, {**PAIR, "id": "pair-2"}, bad])
    with pytest.raises(RecordError, match=rf"pairs\.jsonl line 4 \(id '{bad['id']}'\), field '{field}'"):
        PreferenceDataset(path, CONFIG, tokenizer, media_root=media)
    ds = PreferenceDataset(path, CONFIG, tokenizer, media_root=media, skip_bad=True)
    assert ds.skipped_at_build() == {reason: 1} and [ds[i]["chosen"].id for i in range(len(ds))] == ["pair", "pair-2"]


def test_a_too_long_rejected_answer_is_refused_or_counted(tmp_path, tokenizer, media):
    long = {**PAIR, "id": "long-no", "chosen": "red", "rejected": "blue " * 40}
    path = write_jsonl(tmp_path / "pairs.jsonl", [long])
    budget = len(PreferenceDataset(write_jsonl(tmp_path / "one.jsonl", [PAIR]), CONFIG, tokenizer,
                                   media_root=media)[0]["rejected"].input_ids) + 5
    with pytest.raises(RecordError, match=rf"line 1 \(id 'long-no'\), field 'rejected'.*past max_length {budget}"):
        PreferenceDataset(path, CONFIG, tokenizer, media_root=media, max_length=budget)[0]
    ds = PreferenceDataset(path, CONFIG, tokenizer, media_root=media, max_length=budget, skip_bad=True)
    batch = PreferenceCollator(Collator(CONFIG, tokenizer.pad_token_id))([ds[0]])
    assert batch["skip_reasons"] == ["too_long"] and batch["chosen"]["ids"] == []


def test_skip_report_counts_build_and_load_skips_by_reason(tmp_path, tokenizer, media, capsys):
    lines = [good(0), {"id": "mute", "conversations": turns()[:1]}, b"[1]",
             {"id": "lost", "image": "nowhere.png", "conversations": turns(token="<image>\n")},
             {"id": "long", "conversations": turns(answer="red " * 80)}]
    ds = LLaVADataset(write_jsonl(tmp_path / "train.jsonl", lines), CONFIG, tokenizer, media_root=media,
                      skip_bad=True, max_length=60)
    logged = {}
    module = SimpleNamespace(log=lambda name, value: logged.__setitem__(name, value))
    trainer = SimpleNamespace(current_epoch=0, datamodule=SimpleNamespace(datasets={"train": ds}))
    report = SkipReport()
    report.on_train_start(trainer, module)
    out = capsys.readouterr().out
    assert "train: skipped 2 bad records when building the dataset (no_answer 1, not_object 1)" in out
    assert "train.jsonl line 2 (id 'mute')" in out
    collate = Collator(CONFIG, tokenizer.pad_token_id)
    for i in range(len(ds)):
        report.on_train_batch_end(trainer, module, None, collate([ds[i]]), i)
    report.on_train_epoch_end(trainer, module)
    assert "epoch 0: skipped 2 bad samples (media 1, too_long 1)" in capsys.readouterr().out
    assert logged == {"data/skipped": 2.0, "data/skipped_at_build": 2.0}
    report.on_validation_batch_end(trainer, module, None, collate([ds[2]]), 0)
    report.on_validation_epoch_end(trainer, module)
    assert "epoch 0 (val): skipped 1 bad samples (too_long 1)" in capsys.readouterr().out
    assert logged["data/val_skipped"] == 1.0


def test_the_datamodule_passes_the_llm_positions_as_max_length(tmp_path, tokenizer, media):
    from ppllava.data.datamodules import SFTDataModule

    (tmp_path / "train.json").write_text(json.dumps([good(0), {"id": "mute", "conversations": turns()[:1]}]))
    module = SFTDataModule(tmp_path, CONFIG, tokenizer, batch_size=1, skip_bad=True)
    module.setup()
    ds = module.datasets["train"]
    assert ds.max_length == CONFIG.llm_max_positions and ds.skipped_at_build() == {"no_answer": 1}
    assert torch.is_tensor(next(iter(module.train_dataloader()))["input_ids"])
