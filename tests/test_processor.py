"""PPLLaVAProcessor: transformers' LLaVA-NeXT processors where the layouts coincide, the model's own
token counts in every pooling mode, the dataset and evaluation unchanged by going through it, saving,
and bad input named."""
import copy
import json

import numpy as np
import pytest
import torch
from transformers import LlavaNextImageProcessor, LlavaNextProcessor, LlavaNextVideoProcessor, LlavaNextVideoVideoProcessor

from ppllava import PPLLaVAProcessor
from ppllava.config import PPLLaVAConfig
from ppllava.data.conversation import IGNORE, TEMPLATES, UnknownWords, clip_prompt_text, encode_conversation
from ppllava.data.dataset import LLaVADataset
from ppllava.data.media import read_image
from ppllava.data.tokenizer import build_world_tokenizer
from ppllava.data.video import get_reader, sample_indices
from ppllava.data.world import WorldSpec, write_world
from ppllava.model.ppllava import PPLLaVA
from ppllava.model.token_layout import TokenLayout
from ppllava.ops import POOLING_MODES, tokenize_clip_prompts
from ppllava.processor import MediaTokenError, ProcessedImage

CONFIG = PPLLaVAConfig.from_name("tiny")
QUESTION = "what colour is the star ?"


@pytest.fixture(scope="module")
def tokenizer():
    return build_world_tokenizer()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    write_world(root, WorldSpec(), train=16, val=0, test=0, long_per_length=0, progress=False)
    return root


def media(seed=0, frames=8, size=(48, 80)):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (frames, *size, 3), dtype=np.uint8),
            rng.integers(0, 256, (50, 120, 3), dtype=np.uint8))


def prompt(processor, placeholder, question=QUESTION):
    return processor.apply_chat_template([{"from": "human", "value": f"{placeholder}\n{question}"}])


def hf_processors(config, tokenizer):
    """transformers' processors configured as the kit's: CLIP transforms at the tower's size, the
    config's pinpoints, CLS dropped ('default', one additional token)."""
    size, crop = {"shortest_edge": config.image_size}, {"height": config.image_size, "width": config.image_size}
    images = LlavaNextImageProcessor(size=size, crop_size=crop,
                                     image_grid_pinpoints=[list(p) for p in config.image_grid_pinpoints])
    common = dict(tokenizer=tokenizer, patch_size=config.patch_size, vision_feature_select_strategy="default",
                  num_additional_image_tokens=1)
    video = LlavaNextVideoProcessor(video_processor=LlavaNextVideoVideoProcessor(size=size, crop_size=crop),
                                    image_processor=images, **common)
    return video, LlavaNextProcessor(image_processor=images, **common)


# --- (1) parity with transformers ------------------------------------------------------------------
def test_videos_equal_llava_next_video_processor_under_spatial_pooling(tokenizer):
    """LLaVA-NeXT-Video pools 2 x 2 per frame: the kit's 'spatial'. Two prompts of different
    lengths, left padded; the BOS the kit's prompts get is given to transformers as text."""
    config = PPLLaVAConfig.from_name("tiny", pooling="spatial")
    ours = PPLLaVAProcessor(tokenizer, config)
    hf_video, _ = hf_processors(config, tokenizer)
    (a, _), (b, _) = media(0), media(1, size=(64, 40))
    texts = [prompt(ours, "<video>"), prompt(ours, "<video>", "what moves left ?")]
    got = ours(texts, videos=[a, b])
    want = hf_video(text=[tokenizer.bos_token + t for t in texts], videos=[a, b], padding=True, padding_side="left",
                    return_tensors="pt")
    assert (got["input_ids"] == config.video_token_id).sum() == 2 * 8 * 4  # 8 frames x (4 x 4 grid pooled to 2 x 2)
    for key in ("input_ids", "attention_mask", "pixel_values_videos"):
        assert torch.equal(got[key], want[key]), key


def test_images_equal_llava_next_processor_without_pooling(tokenizer):
    """LLaVA-NeXT's any-resolution images (base crop + grid, unpadded, a newline per row): the kit's
    pooling 'none'. Pictures of three aspect ratios, so the crops and the unpadding differ."""
    config = PPLLaVAConfig.from_name("tiny", pooling="none")
    ours = PPLLaVAProcessor(tokenizer, config)
    _, hf_image = hf_processors(config, tokenizer)
    rng = np.random.default_rng(2)
    pictures = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((50, 120, 3), (90, 40, 3), (64, 64, 3))]
    texts = [prompt(ours, "<image>", q) for q in (QUESTION, "what moves left ?", "how many objects are there ?")]
    got = ours(texts, images=pictures)
    want = hf_image(text=[tokenizer.bos_token + t for t in texts], images=pictures, padding=True, padding_side="left",
                    return_tensors="pt")
    for key in ("input_ids", "attention_mask", "pixel_values"):
        assert torch.equal(got[key], want[key]), key
    assert torch.equal(torch.tensor(got["image_sizes"]), want["image_sizes"])


# --- (2) the model's own counts ----------------------------------------------------------------
@pytest.mark.parametrize("pooling", POOLING_MODES)
def test_placeholders_are_the_models_token_counts_in_every_pooling_mode(tokenizer, pooling):
    extra = {"video_output_size": (2, 2, 2)} if pooling == "adaptive" else {}
    config = PPLLaVAConfig.from_name("tiny", pooling=pooling, **extra)
    processor, model = PPLLaVAProcessor(tokenizer, config), PPLLaVA(config).eval()
    frames, picture = media(3)
    texts = [prompt(processor, "<video>"), prompt(processor, "<image>"), prompt(processor, "<image> <image>")]
    inputs = processor(texts, images=[picture, picture[:30], picture[:, :30]], videos=frames)
    ids = inputs["input_ids"]
    assert int((ids[0] == config.video_token_id).sum()) == model.video_token_count(8)
    counts = [model.image_token_count([50, 120]), model.image_token_count([30, 120], 1), model.image_token_count([50, 30], 1)]
    assert inputs["image_crops"][1:] == [1, 1]  # several images in one text: one crop each
    assert [int((ids[1] == config.image_token_id).sum()), int((ids[2] == config.image_token_id).sum())] == \
           [counts[0], counts[1] + counts[2]]
    with torch.no_grad():  # the model places every visual token (it checks tokens against features)
        assert model(**inputs).logits.shape[:2] == ids.shape


# --- (3) the dataset and the evaluation unchanged ------------------------------------------------
def committed_sample(record, root, tokenizer, config):
    """The committed dataset's sample (before the processor), restated from its code: decord and
    uniform sampling, transformers' transforms, encode_conversation, TokenLayout expansion."""
    from transformers import CLIPImageProcessor

    size, crop = {"shortest_edge": config.image_size}, {"height": config.image_size, "width": config.image_size}
    layout, sizes, crops, pixels = TokenLayout(config), [], [], None
    if "video" in record:
        reader = get_reader("decord")
        indices, _ = sample_indices(reader.frame_count(root / record["video"]), config.num_frames)
        frames = reader.read(root / record["video"], indices)
        pixels = CLIPImageProcessor(size=size, crop_size=crop)(list(frames), return_tensors="pt",
                                                                input_data_format="channels_last")["pixel_values"]
    elif "image" in record or "images" in record:
        names = [record["image"]] if "image" in record else record["images"]
        anyres = LlavaNextImageProcessor(size=size, crop_size=crop,
                                         image_grid_pinpoints=[list(p) for p in config.image_grid_pinpoints])
        items = []
        for name in names:
            out = anyres([read_image(root / name)], return_tensors="pt", input_data_format="channels_last")
            p = out["pixel_values"][0][:1] if "images" in record else out["pixel_values"][0]
            items.append(p)
            sizes.append(out["image_sizes"][0].tolist())
            crops.append(p.shape[0])
        most = max(p.shape[0] for p in items)
        pixels = torch.stack([torch.cat([p, p.new_zeros(most - p.shape[0], *p.shape[1:])]) for p in items])
    ids, labels = encode_conversation(record["conversations"], tokenizer, "vicuna_v1")
    expanded = layout.expand_placeholders(ids, image_sizes=sizes, image_crops=crops,
                                          video_frames=[pixels.shape[0]] if "video" in record else [])
    out_labels, j = [], 0  # the committed LLaVADataset._expand_labels
    for token, label in zip(ids, labels):
        if token in (config.image_token_id, config.video_token_id):
            while j < len(expanded) and expanded[j] == token:
                out_labels.append(IGNORE)
                j += 1
        else:
            out_labels.append(label)
            j += 1
    return expanded, out_labels, pixels, sizes, crops, clip_prompt_text(record["conversations"])


def test_dataset_samples_are_the_committed_ones(world, tokenizer):
    records = json.loads((world / "train.json").read_text())
    ds = LLaVADataset(world / "train.json", CONFIG, tokenizer)
    assert {s.kind for s in map(ds.load, range(len(ds)))} == {"video", "image", "multi", "text"}
    for i, record in enumerate(records):
        sample = ds.load(i)
        ids, labels, pixels, sizes, crops, clip_text = committed_sample(record, world, tokenizer, CONFIG)
        assert sample.input_ids == ids and sample.labels == labels and sample.clip_text == clip_text, record["id"]
        assert sample.image_sizes == sizes and sample.image_crops == crops, record["id"]
        assert (pixels is None and sample.pixels is None) or torch.equal(sample.pixels, pixels), record["id"]


def test_files_go_the_datasets_way_through_the_processor(world, tokenizer):
    """A record's video and picture, given as paths: read, sampled and transformed as the dataset
    does, the question's ids the training ids up to the answer."""
    records = json.loads((world / "train.json").read_text())
    ds, processor = LLaVADataset(world / "train.json", CONFIG, tokenizer), PPLLaVAProcessor(tokenizer, CONFIG)
    for kind in ("video", "image"):
        i = next(i for i, r in enumerate(records) if kind in r)
        sample, turns = ds.load(i), records[i]["conversations"]
        text = processor.apply_chat_template(turns[:-1])
        inputs = processor(text, **{f"{kind}s": world / records[i][kind]})
        assert set(inputs) <= set(processor.model_input_names)
        start = next(k for k, label in enumerate(sample.labels) if label != IGNORE)
        assert inputs["input_ids"][0].tolist() == sample.input_ids[:start]
        pixels = inputs["pixel_values_videos" if kind == "video" else "pixel_values"][0]
        assert torch.equal(pixels, sample.pixels if kind == "video" else sample.pixels[0])
        if kind == "video":
            frames = processor.load_video(world / records[i]["video"])
            assert frames.shape == (CONFIG.num_frames, 64, 64, 3) and frames.dtype == np.uint8
            assert processor.load_video(frames) is frames


def test_generate_answers_gives_the_model_the_committed_prompts(world, tokenizer, monkeypatch):
    """generate_answers builds its inputs through the processor; they equal the committed path's
    (each record's ids up to its answer, left padded, with its media and CLIP prompt)."""
    from ppllava.evaluate import generate_answers

    records = json.loads((world / "train.json").read_text())
    ds, model = LLaVADataset(world / "train.json", CONFIG, tokenizer), PPLLaVA(CONFIG).eval()
    seen = []

    def spy(**inputs):
        seen.append(inputs)
        return torch.full((inputs["input_ids"].shape[0], 1), tokenizer.eos_token_id)

    monkeypatch.setattr(model, "generate", spy)
    answers = generate_answers(model, ds, batch_size=4)
    assert len(answers) == len(records)
    by_id = {r["id"]: r for r in records}
    clip = None
    for inputs, batch in zip(seen, _batches(answers, len(seen))):
        rows = []
        for a in batch:
            ids, labels, *_ = committed_sample(by_id[a["id"]], world, tokenizer, CONFIG)
            rows.append(ids[: next(k for k, label in enumerate(labels) if label != IGNORE)])
        length = max(map(len, rows))
        want = torch.tensor([[0] * (length - len(r)) + r for r in rows])
        assert torch.equal(inputs["input_ids"], want)
        assert torch.equal(inputs["attention_mask"], (torch.arange(length) >= length - torch.tensor([len(r) for r in rows])[:, None]).long())
        clip = clip or __import__("open_clip").get_tokenizer("ViT-B-32")
        texts = [clip_prompt_text(by_id[a["id"]]["conversations"]) for a in batch]
        assert torch.equal(inputs["clip_input_ids"], tokenize_clip_prompts(texts, clip, CONFIG.text_context_length))


def _batches(answers, n):
    """The answers regrouped as generate_answers batched them (in order, by kind, up to 4)."""
    groups, current = [], []
    for a in answers:
        if current and (len(current) == 4 or current[-1]["kind"] != a["kind"]):
            groups.append(current)
            current = []
        current.append(a)
    groups.append(current)
    assert len(groups) == n
    return groups


# --- chat templates --------------------------------------------------------------------------
@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_prompt_ids_are_the_training_ids_up_to_the_answer(tokenizer, template):
    """What the model is asked at inference is what it was trained on, turn for turn (multi-turn too)."""
    processor = PPLLaVAProcessor(tokenizer, CONFIG, template=template)
    turns = [{"from": "human", "value": f"<video>\n{QUESTION}"}, {"from": "gpt", "value": "red"},
             {"from": "human", "value": "what moves left ?"}, {"from": "gpt", "value": "the circle"}]
    ids, labels = encode_conversation(turns, tokenizer, template)
    last_answer = max(k for k, label in enumerate(labels) if label == IGNORE) + 1
    assert processor.apply_chat_template(turns[:3], tokenize=True) == ids[:last_answer]
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": QUESTION}]},
                {"role": "assistant", "content": "red"}, {"role": "user", "content": "what moves left ?"}]
    assert processor.apply_chat_template(messages) == processor.apply_chat_template(turns[:3])


def test_the_tokenizers_own_template_and_one_bos(tokenizer):
    processor = PPLLaVAProcessor(tokenizer, CONFIG, template="tokenizer")
    text = processor.apply_chat_template([{"role": "user", "content": f"<video>\n{QUESTION}"}])
    assert text.startswith(tokenizer.bos_token)  # the world's chat template says its BOS itself
    ids = processor.tokenize(text)
    assert ids.count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id
    assert processor.clip_text(text) == QUESTION


# LLaVA-NeXT-Video's template on the Hub (llava-hf), in short: contents are parts, media first.
LLAVA_HF_TEMPLATE = (
    "{% for message in messages %}{{ message['role'].upper() + ': ' }}"
    "{% for part in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>\n' }}{% endfor %}"
    "{% for part in message['content'] | selectattr('type', 'equalto', 'text') %}{{ part['text'] + ' ' }}{% endfor %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")


def test_a_llava_hf_template_its_prompt_and_clip_prompt(tokenizer):
    hf_like = copy.deepcopy(tokenizer)
    hf_like.chat_template = LLAVA_HF_TEMPLATE
    processor = PPLLaVAProcessor(hf_like, CONFIG, template="tokenizer")
    text = processor.apply_chat_template([
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": QUESTION}]},
        {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
        {"role": "user", "content": [{"type": "text", "text": "what moves left ?"}]}])
    assert text == f"USER: <video>\n{QUESTION} ASSISTANT: red USER: what moves left ? ASSISTANT:"
    assert processor.clip_text(text) == "what moves left ?"
    frames, _ = media(6)
    inputs = processor(text, videos=frames)
    assert inputs["input_ids"][0, 0] == tokenizer.bos_token_id  # one BOS, which the template leaves out
    assert torch.equal(inputs["clip_input_ids"], processor.tokenize_clip(["what moves left ?"]))


def test_the_clip_prompt_is_the_latest_question_or_the_conversation(tokenizer):
    turns = [{"from": "human", "value": f"<video>\n{QUESTION}"}, {"from": "gpt", "value": "red"},
             {"from": "human", "value": "what moves left ?"}]
    text = PPLLaVAProcessor(tokenizer, CONFIG).apply_chat_template(turns)
    assert PPLLaVAProcessor(tokenizer, CONFIG).clip_text(text) == "what moves left ?"
    whole = PPLLaVAProcessor(tokenizer, PPLLaVAConfig.from_name("tiny", clip_prompt="conversation")).clip_text(text)
    assert whole == clip_prompt_text(turns, "conversation")


# --- (4) saving ------------------------------------------------------------------------------
def test_save_and_load_beside_the_model_give_the_same_inputs(tmp_path, tokenizer):
    config = PPLLaVAConfig.from_name("tiny", num_frames=4)
    processor = PPLLaVAProcessor(tokenizer, config, template="chatml", num_frames=4)
    PPLLaVA(config).save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = PPLLaVAProcessor.from_pretrained(tmp_path)
    assert (loaded.template, loaded.num_frames, loaded.config) == ("chatml", 4, config)
    frames, picture = media(4, frames=4)
    texts = [prompt(processor, "<video>"), prompt(processor, "<image>")]
    a, b = processor(texts, images=picture, videos=frames), loaded(texts, images=picture, videos=frames)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]) if isinstance(a[key], torch.Tensor) else a[key] == b[key], key
    with pytest.raises(ValueError, match=r"differs from this processor's config in \['num_frames'\]"):
        PPLLaVAProcessor(tokenizer, CONFIG).save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="processor_config.json is missing"):
        PPLLaVAProcessor.from_pretrained(tmp_path / "elsewhere")


# --- (5) bad input named -----------------------------------------------------------------------
def test_bad_inputs_are_named(tokenizer):
    processor = PPLLaVAProcessor(tokenizer, CONFIG)
    frames, picture = media(5)
    text = prompt(processor, "<video>")
    with pytest.raises(MediaTokenError, match="1 <video> placeholders in the text.s. but 2 videos given"):
        processor(text, videos=[frames, frames])
    with pytest.raises(MediaTokenError, match="1 <video> placeholders in the text.s. but 0 videos given"):
        processor(text)
    with pytest.raises(MediaTokenError, match="0 <image> placeholders in the text.s. but 1 images given"):
        processor(text, images=picture, videos=frames)
    with pytest.raises(MediaTokenError, match="text 1 has 1 <video> placeholders but 0 videos were given for it"):
        processor([text, text], videos=[[frames], []])
    with pytest.raises(ValueError, match=r"video frames must be uint8 RGB \(T, H, W, 3\), got float32"):
        processor(text, videos=frames.astype(np.float32))
    with pytest.raises(ValueError, match=r"video frames must be uint8 RGB \(T, H, W, 3\), got uint8 of shape \(8, 3, 48, 80\)"):
        processor(text, videos=frames.transpose(0, 3, 1, 2))
    with pytest.raises(ValueError, match=r"processed video pixels must have shape \(T, 3, 64, 64\), got \(8, 3, 32, 32\)"):
        processor(text, videos=torch.zeros(8, 3, 32, 32))
    with pytest.raises(ValueError, match=r"ProcessedImage needs pixels \(crops, 3, 64, 64\)"):
        processor(prompt(processor, "<image>"), images=ProcessedImage(torch.zeros(2, 3, 64, 64), [64, 64], 3))
    with pytest.raises(ValueError, match="clip_text must be one string per text: 2 text.s., got 1"):
        processor([text, text], videos=[frames, frames], clip_text=[QUESTION])
    with pytest.raises(UnknownWords, match=r"\['zebra'\]"):
        processor(prompt(processor, "<video>", "what colour is the zebra ?"), videos=frames)
    with pytest.raises(ValueError, match="return_tensors must be 'pt'"):
        processor(text, videos=frames, return_tensors="np")
    with pytest.raises(ValueError, match="cannot be pooled as configured"):
        processor(text, videos=frames[:1])  # one frame under the (2, 2, 2) kernel
    with pytest.raises(ValueError, match="template must be one of"):
        PPLLaVAProcessor(tokenizer, CONFIG, template="llama9")
    with pytest.raises(ValueError, match="system turn"):
        processor.apply_chat_template([{"role": "system", "content": "be brief"}, {"role": "user", "content": QUESTION}])
