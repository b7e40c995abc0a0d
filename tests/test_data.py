"""The procedural world as real files, read back through each reader, and the loaders' contracts."""
import json
import re
import shutil

import numpy as np
import pytest
import torch

from ppllava.config import PPLLaVAConfig
from ppllava.data.conversation import IGNORE, TEMPLATES, clip_prompt_text, encode_conversation
from ppllava.data.datamodules import DPODataModule, MediaBatchSampler, SFTDataModule, ClipPairsDataModule
from ppllava.data.dataset import Collator, LLaVADataset, media_kind, model_inputs
from ppllava.data.scenes import COLOURS, random_scene, render
from ppllava.data.tokenizer import SPECIAL_TOKENS, build_world_tokenizer, load_tokenizer
from ppllava.data.video import MediaError, get_reader, sample_indices
from ppllava.data.world import SPLIT_SEED_BASE, WorldSpec, WorldWriter, write_video, write_world

CONFIG = PPLLaVAConfig.from_name("tiny")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    write_world(root, WorldSpec(long_frames=(16, 32)), train=24, val=8, test=0, long_per_length=2, progress=False)
    return root


@pytest.fixture(scope="module")
def tokenizer():
    return build_world_tokenizer()


def test_world_files_and_annotations(world):
    meta = json.loads((world / "world.json").read_text())
    assert meta["counts"]["train"]["records"] == 24 and meta["counts"]["long"]["records"] == 4
    train = json.loads((world / "train.json").read_text())
    kinds = {next((k for k in ("video", "image", "images") if k in r), "text") for r in train}
    assert kinds == {"video", "image", "images", "text"}
    for r in train:
        assert r["conversations"][0]["from"] == "human" and r["conversations"][1]["from"] == "gpt"
        media = [r["video"]] if "video" in r else [r["image"]] if "image" in r else r.get("images", [])
        assert all((world / m).is_file() for m in media)
    dpo = [json.loads(line) for line in (world / "train_dpo.jsonl").read_text().splitlines()]
    assert dpo and all(d["chosen"] != d["rejected"] and d["prompt"] for d in dpo)


def test_text_records_are_option_lookups_with_their_answer_among_the_options(world, tokenizer):
    text = [r for r in json.loads((world / "train.json").read_text()) if r["task"] == "lookup"]
    assert text and all(media_kind(r) == "text" for r in text)
    for r in text:
        word, _, letter = r["conversations"][1]["value"].rpartition(" , so ")
        assert r["options"]["ABCD".index(letter)] == word and r["options"].count(word) == 1
        assert f"{letter} {word}" in r["conversations"][0]["value"]
    sample = LLaVADataset(world / "train.json", CONFIG, tokenizer)[next(i for i, r in enumerate(
        json.loads((world / "train.json").read_text())) if r["task"] == "lookup")]
    assert sample.kind == "text" and sample.pixels is None and tokenizer.unk_token_id not in sample.input_ids


def test_needle_world_has_one_length_and_a_short_visible_object(tmp_path):
    from ppllava.data.world import write_needle_world

    counts = write_needle_world(tmp_path / "needle", 16, train=3, val=1, test=2, progress=False)
    assert counts == {"train": {"records": 3}, "val": {"records": 1}, "test": {"records": 2}}
    records = json.loads((tmp_path / "needle" / "test.json").read_text())
    train_ids = {r["id"] for r in json.loads((tmp_path / "needle" / "train.json").read_text())}
    for r in records:
        assert r["frames"] == 16 and 1 <= len(r["needle_frames"]) <= 2 and r["id"] not in train_ids
        seen = [t for t, box in enumerate(r["boxes"]) if box is not None]
        assert seen == r["needle_frames"]


def test_videos_read_back_with_the_colours_in_their_boxes(world):
    reader = get_reader("decord")
    records = [r for r in json.loads((world / "train.json").read_text()) if "video" in r and r["boxes"]]
    assert records
    for r in records:
        frames = reader.read(world / r["video"], list(range(r["frames"])))
        assert frames.shape == (r["frames"], 64, 64, 3)
        colour = np.array(COLOURS[r["target"]["colour"]])
        for t, box in enumerate(r["boxes"]):
            if box is None:
                continue
            x0, y0, x1, y1 = box
            centre = frames[t, (y0 + y1) // 2, (x0 + x1) // 2].astype(int)
            # H.264 at crf 10 with 4:2:0 chroma keeps a flat colour close; the box centre lies inside
            # every shape the world draws (convex or star-shaped about its centre).
            assert np.abs(centre - colour).max() < 40, (r["id"], t, centre, colour)


def test_needle_videos_show_the_target_only_in_its_frames(world):
    long = json.loads((world / "long.json").read_text())
    assert sorted({r["frames"] for r in long}) == [16, 32]
    for r in long:
        seen = [t for t, b in enumerate(r["boxes"]) if b is not None]
        assert seen == r["needle_frames"] and 1 <= len(seen) <= 2 and r["task"] == "needle"


def test_scenes_render_masks_that_match_the_pixels():
    scene = random_scene(np.random.default_rng(3), 64, 4, 3)
    frames, masks = render(scene)
    for k, obj in enumerate(scene.objects):
        for t in range(4):
            pixels = frames[t][masks[t, k]]
            if len(pixels):
                assert (pixels == np.array(COLOURS[obj.colour], dtype=np.uint8)).all()


def test_deterministic_per_seed_and_splits_never_share_one(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        write_world(root, WorldSpec(), train=6, val=3, test=0, long_per_length=0, progress=False)
    assert (a / "train.json").read_text() == (b / "train.json").read_text()
    # Byte for byte, not only frame by frame: x264's mbtree once made 1 video in 12 differ between writes.
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert [f for f in files if (a / f).read_bytes() != (b / f).read_bytes()] == []
    writer = WorldWriter(tmp_path / "c", WorldSpec())
    ranges = {split: {writer._seed(split, i) for i in range(1000)} for split in SPLIT_SEED_BASE}
    splits = list(ranges)
    assert all(not (ranges[x] & ranges[y]) for i, x in enumerate(splits) for y in splits[i + 1 :])


def test_every_reader_gives_the_same_frames(world, tmp_path):
    record = next(r for r in json.loads((world / "train.json").read_text()) if "video" in r)
    path = world / record["video"]
    decord_frames = get_reader("decord").read(path, [0, 3, 7])
    pyav_frames = get_reader("pyav").read(path, [0, 3, 7])
    assert np.abs(decord_frames.astype(int) - pyav_frames.astype(int)).max() <= 2
    folder = tmp_path / "frames"
    folder.mkdir()
    from PIL import Image

    for i, frame in enumerate(get_reader("pyav").read(path, list(range(8)))):
        Image.fromarray(frame).save(folder / f"{i:04d}.png")
    assert np.array_equal(get_reader("frames").read(folder, [0, 3, 7]), pyav_frames)
    assert get_reader("frames").frame_count(folder) == get_reader("decord").frame_count(path) == 8


def test_sampling_modes():
    assert sample_indices(32, 4, "uniform") == ([4, 12, 20, 28], 0)
    assert sample_indices(32, 4, "middle") == ([14, 15, 16, 17], 0)
    idx, _ = sample_indices(32, 4, "random", rng=np.random.default_rng(0))
    assert all(8 * i <= j < 8 * (i + 1) for i, j in enumerate(idx))
    assert sample_indices(32, 4, "fps", video_fps=8, fps=1) == ([0, 8, 16, 24], 0)  # one frame a second
    assert sample_indices(64, 4, "fps", video_fps=8, fps=1) == ([8, 24, 40, 56], 0)  # 8 seconds: uniform among them
    assert sample_indices(16, 4, "fps", video_fps=8, fps=1) == ([0, 0, 8, 8], 2)  # too short at 1 fps: repeats
    # Fewer frames than asked: repeated in order, and the repeats are counted, not hidden.
    assert sample_indices(3, 6, "uniform") == ([0, 0, 1, 1, 2, 2], 3)
    with pytest.raises(MediaError, match="no frames"):
        sample_indices(0, 4)
    with pytest.raises(ValueError, match="needs an rng"):
        sample_indices(10, 4, "random")


def test_tokenizer_round_trip_and_special_ids(tokenizer, tmp_path):
    assert [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS[:5]] == [
        CONFIG.pad_token_id, CONFIG.bos_token_id, CONFIG.eos_token_id, CONFIG.image_token_id, CONFIG.video_token_id]
    assert len(tokenizer) <= CONFIG.llm_vocab_size
    tokenizer.save_pretrained(tmp_path / "tok")
    again = load_tokenizer(tmp_path / "tok")
    text = "<video>\nwhich way does the red star move ?"
    assert again(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert tokenizer.unk_token_id not in tokenizer(text)["input_ids"]
    assert again.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False).startswith("<s>USER")


@pytest.mark.parametrize("template", list(TEMPLATES))
def test_labels_cover_answers_only(tokenizer, template):
    turns = [{"from": "human", "value": "<video>\nwhat colour is the star ?"}, {"from": "gpt", "value": "red"},
             {"from": "human", "value": "which way does the red star move ?"}, {"from": "gpt", "value": "left"}]
    ids, labels = encode_conversation(turns, tokenizer, template)
    learned = [i for i, l in zip(ids, labels) if l != IGNORE]
    assert tokenizer.decode(learned, skip_special_tokens=True).split()[:1] == ["red"]
    assert "left" in tokenizer.decode(learned) and "colour" not in tokenizer.decode(learned)
    assert all(l in (IGNORE, i) for i, l in zip(ids, labels))
    assert tokenizer.unk_token_id not in ids
    assert clip_prompt_text(turns) == "what colour is the star ?"
    assert clip_prompt_text(turns, "conversation").endswith("move ? left")


def test_hand_written_records_of_each_media_type(world, tokenizer, tmp_path):
    """A LLaVA-format file written by hand, one record per media type, through the loader and the model."""
    from ppllava.model import PPLLaVA

    train = json.loads((world / "train.json").read_text())
    video = next(r["video"] for r in train if "video" in r)
    image = next(r["image"] for r in train if "image" in r)
    records = [
        {"id": "v", "video": video, "conversations": [{"from": "human", "value": "<video>\nwhat colour is the star ?"},
                                                      {"from": "gpt", "value": "red"}]},
        {"id": "i", "image": image, "conversations": [{"from": "human", "value": "<image>\nhow many objects are there ?"},
                                                      {"from": "gpt", "value": "two"}]},
        {"id": "m", "images": [image, image], "conversations": [
            {"from": "human", "value": "<image> <image>\nwhich image shows the red star ?"}, {"from": "gpt", "value": "image one"}]},
    ]
    path = tmp_path / "hand.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    ds = LLaVADataset(path, CONFIG, tokenizer, media_root=world)
    assert ds.kinds == ["video", "image", "multi"]
    samples = [ds[i] for i in range(3)]
    assert samples[0].pixels.shape == (8, 3, 64, 64) and samples[2].image_crops == [1, 1]
    for s in samples:
        visual = [t in (CONFIG.image_token_id, CONFIG.video_token_id) for t in s.input_ids]
        assert all(l == IGNORE for l, v in zip(s.labels, visual) if v)
    batch = Collator(CONFIG, tokenizer.pad_token_id)(samples)
    torch.manual_seed(0)
    out = PPLLaVA(CONFIG)(**model_inputs(batch))
    assert torch.isfinite(out.loss) and out.logits.shape[:2] == batch["input_ids"].shape


def _bad_world(world, tmp_path):
    root = tmp_path / "bad"
    shutil.copytree(world, root)
    train = json.loads((root / "train.json").read_text())
    video = next(r for r in train if "video" in r)
    (root / "videos" / "corrupt.mp4").write_bytes(b"not a video at all" * 100)
    write_video(root / "videos" / "empty.mp4", np.zeros((0, 64, 64, 3), dtype=np.uint8), 8)
    turns = video["conversations"]
    return root, [
        ("missing", {**video, "id": "missing", "video": "videos/nowhere.mp4"}, "nowhere.mp4"),
        ("corrupt", {**video, "id": "corrupt", "video": "videos/corrupt.mp4"}, "corrupt.mp4"),
        ("empty", {**video, "id": "empty", "video": "videos/empty.mp4"}, "empty.mp4"),
        ("unknown key", {"id": "audio", "audio": "a.wav", "conversations": turns}, "media placeholders but no media key"),
        ("no answer", {**video, "id": "mute", "conversations": turns[:1]}, "no answer"),
        ("too long", {**video, "id": "long", "conversations": [turns[0], {"from": "gpt", "value": "red " * 3000}]}, "past max_length"),
    ]


def test_bad_input_is_an_error_naming_file_and_record(world, tokenizer, tmp_path):
    root, cases = _bad_world(world, tmp_path)
    for name, record, expected in cases:
        path = root / f"{name.replace(' ', '_')}.json"
        path.write_text(json.dumps([record]))
        with pytest.raises(ValueError, match=expected) as info:
            ds = LLaVADataset(path, CONFIG, tokenizer)
            ds[0]
        assert str(path) in str(info.value) and (record["id"] in str(info.value)), (name, str(info.value))


def test_skip_bad_counts_skips_and_never_substitutes(world, tokenizer, tmp_path):
    root, cases = _bad_world(world, tmp_path)
    good = [r for r in json.loads((root / "train.json").read_text()) if "video" in r][:2]
    path = root / "mixed.json"
    path.write_text(json.dumps(good + [record for _, record, _ in cases]))
    ds = LLaVADataset(path, CONFIG, tokenizer, skip_bad=True)
    assert len(ds.invalid) == 2  # unknown media key and no answer: dropped at construction, counted
    batch = Collator(CONFIG, tokenizer.pad_token_id)([ds[i] for i in range(len(ds))])
    assert batch["ids"] == [r["id"] for r in good]  # the bad ones are gone, not replaced
    assert len(batch["skipped"]) == 4 and any("corrupt.mp4" in s for s in batch["skipped"])


def test_fewer_frames_than_asked_repeat_visibly(world, tokenizer):
    ds = LLaVADataset(world / "train.json", PPLLaVAConfig.from_name("tiny", num_frames=12), tokenizer)
    sample = ds[ds.kinds.index("video")]
    assert sample.pixels.shape[0] == 12 and sample.repeated_frames == 4


def test_datamodules(world, tokenizer):
    sft = SFTDataModule(world, CONFIG, tokenizer, batch_size=2, mix={"video": 1.0, "image": 0.0, "multi": 0.0})
    sft.setup()
    kinds = [b["kinds"] for b in sft.train_dataloader()]
    assert kinds and all(k == ["video", "video"] for k in kinds)
    mixed = MediaBatchSampler(["video"] * 50 + ["image"] * 50, 5, {"video": 0.8, "image": 0.2}, seed=1)
    counts = [sum(1 for b in mixed if b[0] < 50), sum(1 for b in mixed if b[0] >= 50)]
    assert counts == [16, 4]
    assert len(list(sft.val_dataloader())) == len(MediaBatchSampler(sft.datasets["val"].kinds, 2, shuffle=False))
    dpo = DPODataModule(world, CONFIG, tokenizer, batch_size=2)
    dpo.setup()
    pair = next(iter(dpo.train_dataloader()))
    c, r = pair["chosen"], pair["rejected"]
    assert torch.equal(c["pixel_values_videos"], r["pixel_values_videos"]) and not torch.equal(c["labels"], r["labels"])
    clip = ClipPairsDataModule(world, CONFIG, batch_size=4)
    clip.setup()
    batch = next(iter(clip.train_dataloader()))
    assert batch["positives"].diagonal().all() and batch["masks"].shape == (4, 4, 4)
    assert all(m.any() for m in batch["masks"])
    # Object pointing's hits: the patches showing the named object more than any other (ppllava.data.oracle.shown_patches).
    assert batch["object_masks"].shape == (4, 4, 4) and all(m.any() for m in batch["object_masks"])
    from ppllava.evaluate import batch_pointing, batch_pointing_by_rule
    with pytest.raises(ValueError, match=r"pointing rule must be one of \['object', 'patches'\], got 'centre'"):
        batch_pointing(None, batch, "centre")
    from ppllava.model import PPLLaVA
    torch.manual_seed(0)
    model = PPLLaVA(CONFIG).eval()
    both = batch_pointing_by_rule(model, batch, ("patches", "object"))  # one relevance map for both rules
    assert both == {rule: batch_pointing(model, batch, rule) for rule in ("patches", "object")}


def test_skip_report_counts_per_epoch(capsys):
    from types import SimpleNamespace

    from ppllava.data.datamodules import SkipReport

    logged = {}
    module = SimpleNamespace(log=lambda name, value: logged.__setitem__(name, value))
    trainer = SimpleNamespace(current_epoch=3)
    report = SkipReport()
    report.on_train_batch_end(trainer, module, None, {"skipped": ["a.json: record 7: x.mp4: no such video file"]}, 0)
    report.on_train_batch_end(trainer, module, None, {"skipped": []}, 1)
    report.on_train_batch_end(trainer, module, None, {"skipped": ["b"]}, 2)
    report.on_train_epoch_end(trainer, module)
    assert "epoch 3: skipped 2 bad samples" in capsys.readouterr().out and logged == {"data/skipped": 2.0}
    report.on_train_epoch_end(trainer, module)  # a clean epoch reports nothing
    assert capsys.readouterr().out == ""


def test_task_weights_skew_the_mix_and_default_to_uniform(tmp_path):
    def share(root, **spec):
        write_world(root, WorldSpec(**spec), train=120, val=0, test=0, long_per_length=0, progress=False)
        records = json.loads((root / "train.json").read_text())
        return sum(r["task"] == "mc" for r in records) / len(records)

    plain, weighted = share(tmp_path / "plain"), share(tmp_path / "mc", task_weights={"mc": 20.0})
    assert weighted > 0.5 > 0.25 > plain
    with pytest.raises(ValueError, match=r"task_weights\['mc'\] must be >= 0"):
        WorldSpec(task_weights={"mc": -1.0})
    with pytest.raises(ValueError, match="unknown task 'poetry'"):
        WorldSpec(task_weights={"poetry": 1.0})


def test_preference_pairs_stay_paired_when_bad_records_are_skipped(world, tokenizer, tmp_path):
    from ppllava.data.preference import PreferenceDataset

    pairs = [json.loads(line) for line in (world / "train_dpo.jsonl").read_text().splitlines()][:2]
    no_media = {"id": "no-media", "prompt": "what colour is the star ?", "chosen": "red", "rejected": "blue"}
    path = world / "mixed_dpo.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [pairs[0], no_media, pairs[1]]))
    ds = PreferenceDataset(path, CONFIG, tokenizer, skip_bad=True)
    assert len(ds) == 2 and len(ds.base.invalid) == 1
    item = ds[1]
    assert item["chosen"].id == pairs[1]["id"]
    rejected = tokenizer.decode([t for t, l in zip(item["rejected"].input_ids, item["rejected"].labels) if l != IGNORE],
                                skip_special_tokens=True)
    assert rejected.split() == pairs[1]["rejected"].split()


def test_media_cache_gives_the_same_samples_without_reading_again(world, tokenizer):
    plain = LLaVADataset(world / "train.json", CONFIG, tokenizer)
    cached = LLaVADataset(world / "train.json", CONFIG, tokenizer, cache_mb=64)
    reads = []
    read = cached.reader.read
    cached.reader.read = lambda path, indices: reads.append(path) or read(path, indices)
    first = [cached[i] for i in range(len(cached))]
    videos = len(reads)
    again = [cached[i] for i in range(len(cached))]
    assert videos == cached.kinds.count("video") > 0 and len(reads) == videos  # the second pass read no file
    for a, b, c in zip(first, again, (plain[i] for i in range(len(plain)))):
        assert a.input_ids == b.input_ids == c.input_ids and a.image_sizes == c.image_sizes
        assert (a.pixels is None and c.pixels is None) or torch.equal(b.pixels, c.pixels)
    # A cache too small for one video keeps none of them; a negative size is refused.
    small = LLaVADataset(world / "train.json", CONFIG, tokenizer, cache_mb=0.1)
    small[small.kinds.index("video")]
    assert small.kinds.index("video") not in small.cache
    with pytest.raises(ValueError, match="cache_mb"):
        LLaVADataset(world / "train.json", CONFIG, tokenizer, cache_mb=-1)


def test_conversations_are_tokenized_once_per_record_and_field(world, tokenizer):
    data = LLaVADataset(world / "train.json", CONFIG, tokenizer)
    calls = []
    encode = data.processor.encode_training
    data.processor.encode_training = lambda turns, **kw: calls.append(kw["record_id"]) or encode(turns, **kw)
    first = [data[i] for i in range(len(data))]
    again = [data[i] for i in range(len(data))]
    assert len(calls) == len(data)  # the second epoch tokenized nothing
    fresh = LLaVADataset(world / "train.json", CONFIG, tokenizer)
    for a, b, c in zip(first, again, (fresh[i] for i in range(len(fresh)))):
        assert a.input_ids == b.input_ids == c.input_ids and a.labels == b.labels == c.labels
    b.input_ids.append(0)  # a caller's change to a sample's ids never reaches the next epoch's
    assert data[len(data) - 1].input_ids == c.input_ids
    # A preference pair's two answers are two fields of one record: each keeps its own ids.
    from ppllava.data.preference import PreferenceDataset

    prefs = PreferenceDataset(world / "train_dpo.jsonl", CONFIG, tokenizer)
    assert len(prefs) > 0
    for i in range(len(prefs)):
        for _ in range(2):
            pair = prefs[i]
            assert pair["chosen"].input_ids != pair["rejected"].input_ids


def test_dpo_pairs_can_come_from_videos_of_their_own(tmp_path):
    counts = write_world(tmp_path, WorldSpec(), train=6, val=0, test=0, long_per_length=0, progress=False,
                         dpo_videos={"train": 5, "test": 3})
    assert counts["train"]["dpo"] == 5 and counts["test"] == {"dpo": 3}
    sft_videos = {r["video"] for r in json.loads((tmp_path / "train.json").read_text()) if "video" in r}
    for split, n in (("train", 5), ("test", 3)):
        pairs = [json.loads(line) for line in (tmp_path / f"{split}_dpo.jsonl").read_text().splitlines()]
        assert len(pairs) == n and all((tmp_path / p["video"]).is_file() and p["video"] not in sft_videos for p in pairs)
        assert all(p["chosen"] != p["rejected"] and p["task"] for p in pairs)
    with pytest.raises(ValueError, match="dpo_videos"):
        write_world(tmp_path / "x", WorldSpec(), train=1, val=0, test=0, long_per_length=0, dpo_videos={"dev": 2})


@pytest.mark.parametrize("sizes, named", [({"train": -1}, "train"), ({"val": 2.5}, "val"), ({"test": True}, "test"),
                                          ({"dpo_videos": {"train": -3}}, "dpo_videos['train']")])
def test_write_world_refuses_bad_split_sizes_before_writing(tmp_path, sizes, named):
    with pytest.raises(ValueError, match=re.escape(named)):
        write_world(tmp_path / "w", WorldSpec(), **{"train": 2, "val": 0, "test": 0, "long_per_length": 0, **sizes})
    assert not (tmp_path / "w").exists()


def test_words_added_later_leave_every_earlier_word_its_id():
    from ppllava.data.tokenizer import LATER_WORDS, world_words

    words = world_words()
    earlier = [w for w in words if w not in LATER_WORDS]
    assert earlier == sorted(earlier) and words[len(earlier):] == [w for w in LATER_WORDS if w in words]
    assert "six" in words  # the free layout counts up to six
    # Ids as the tokenizer gave them before "six" (95 entries then): models trained since still read right.
    vocab = build_world_tokenizer().get_vocab()
    assert {w: vocab[w] for w in ("square", "star", "the", "triangle", "what", "yellow")} == \
        {"square": 74, "star": 75, "the": 80, "triangle": 84, "what": 90, "yellow": 92}
    assert vocab["six"] == 95


@pytest.mark.parametrize("layout", ["quadrants", "free"])
def test_a_depth_balanced_needle_test_split_fills_every_depth_bin_equally(tmp_path, layout):
    from ppllava.data.world import WorldSpec, needle_depth_range, write_needle_world
    from ppllava.evaluate import counts_by_depth

    write_needle_world(tmp_path / "n", 8, WorldSpec(layout=layout), train=0, val=0, test=10, test_depth_bins=5,
                       progress=False)
    records = json.loads((tmp_path / "n" / "test.json").read_text())
    every_right = [{"id": r["id"], "predicted": r["conversations"][1]["value"], "answer": r["conversations"][1]["value"],
                    "task": r["task"]} for r in records]
    assert [n for _, n in counts_by_depth(every_right, records)] == [2, 2, 2, 2, 2]
    # at 8 frames the last bin holds first frame 7 only: a 2-frame needle cannot start there, a 1-frame one can
    assert needle_depth_range(4, 5, 8, 2) is None and needle_depth_range(4, 5, 8, 1) == (7, 7)
    assert all(len(r["needle_frames"]) == 1 for r in records[4::5])
    assert json.loads((tmp_path / "n" / "world.json").read_text())["test_depth_bins"] == 5


def test_depth_ranges_are_the_bins_counts_by_depth_reads():
    from ppllava.data.world import needle_depth_range

    for frames in (16, 64, 256):
        for needle in (1, 2):
            covered = []
            for b in range(5):
                lo, hi = needle_depth_range(b, 5, frames, needle)
                assert all(min(4, int(5 * t / frames)) == b for t in range(lo, hi + 1))
                covered += range(lo, hi + 1)
            assert covered == list(range(frames - needle + 1))  # every start, each in exactly one bin
    with pytest.raises(ValueError, match="depth_bin"):
        needle_depth_range(5, 5, 16, 1)


def test_a_depth_bin_no_needle_length_can_start_in_is_named(tmp_path):
    from ppllava.data.world import WorldSpec, write_needle_world

    with pytest.raises(ValueError, match="depth bin 4 of 5 in a 8-frame video"):
        write_needle_world(tmp_path / "n", 8, WorldSpec(needle_frames=(2,)), train=0, val=0, test=5, test_depth_bins=5,
                           progress=False)
