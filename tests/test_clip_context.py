import copy
import warnings

import numpy as np
import open_clip
import pytest
import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg, CustomTextCLIP
from transformers import CLIPTextConfig, CLIPTextModel

from ppllava.ops import (
    ClipPromptTruncated,
    clip_context_length,
    extend_clip_positions,
    extend_clip_text_context,
    tokenize_clip_prompts,
)
from tests.reference import extend_positions_by_rows

TOKENIZER = open_clip.get_tokenizer("ViT-B-32")  # open_clip's bundled BPE works offline
LONG_PROMPT = " ".join(["the red star moves left then the blue square appears"] * 20)  # > 200 tokens


def test_extension_matches_the_formula_row_by_row():
    p = torch.randn(77, 16, dtype=torch.float64)
    q = extend_clip_positions(p)
    assert q.shape == (248, 16)
    torch.testing.assert_close(q, extend_positions_by_rows(p), rtol=0, atol=1e-12)
    torch.testing.assert_close(q[:20], p[:20], rtol=0, atol=0)
    # Every fourth row from 20 on is an original row; the last 4 extrapolate from P[76].
    torch.testing.assert_close(q[20:244:4], p[20:76], rtol=0, atol=0)
    torch.testing.assert_close(q[245] - q[244], (p[76] - p[75]) / 4)
    assert extend_clip_positions(torch.randn(10, 4), keep=3, factor=2).shape == (3 + 2 * 7, 4)


def tiny_open_clip(cls=CLIP):
    torch.manual_seed(0)
    return cls(
        embed_dim=32,
        vision_cfg=CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=16, image_size=32),
        text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=2),
    ).eval()


def tiny_hf_text():
    torch.manual_seed(0)
    config = CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=2, max_position_embeddings=77, eos_token_id=49407,
                            bos_token_id=49406, pad_token_id=0)
    return CLIPTextModel(config).eval()


@pytest.mark.parametrize("cls", [CLIP, CustomTextCLIP])
def test_open_clip_tower_encodes_a_200_token_prompt(cls):
    model = tiny_open_clip(cls)
    short = TOKENIZER(["a red star"])  # 77 positions
    with torch.no_grad():
        before = model.encode_text(short)
    extend_clip_text_context(model)
    assert clip_context_length(model) == 248 and model.context_length == 248
    ids = tokenize_clip_prompts([LONG_PROMPT, "a red star"], TOKENIZER, 248)
    assert (ids[0] != 0).sum() > 200
    with torch.no_grad():
        out = model.encode_text(ids)
    assert out.shape == (2, 32) and torch.isfinite(out).all()
    # The first 20 positions are untouched and attention is causal: a short prompt encodes as before.
    torch.testing.assert_close(out[1:], before)


def test_a_memo_of_prompt_ids_gives_the_same_ids_and_skips_repeats():
    prompts = ["a red star", LONG_PROMPT, "a red star", "what colour is the circle ?"]
    calls = []

    class Counting:  # open_clip's tokenizer, counting what it encodes
        sot_token_id, eot_token_id = TOKENIZER.sot_token_id, TOKENIZER.eot_token_id

        def encode(self, text):
            calls.append(text)
            return TOKENIZER.encode(text)

    memo = {}
    with pytest.warns(ClipPromptTruncated):
        first = tokenize_clip_prompts(prompts, Counting(), 77, memo)
    with pytest.warns(ClipPromptTruncated):  # a memo never hides a truncation
        second = tokenize_clip_prompts(prompts[::-1], Counting(), 77, memo)
    with pytest.warns(ClipPromptTruncated):
        plain = tokenize_clip_prompts(prompts, TOKENIZER, 77)
    assert torch.equal(first, plain) and torch.equal(second, plain.flip(0))
    assert sorted(calls) == sorted(set(prompts))  # each distinct prompt encoded once, over both calls


def test_open_clip_extension_trains_only_the_new_rows_and_copies():
    model = extend_clip_text_context(tiny_open_clip())
    ids = tokenize_clip_prompts([LONG_PROMPT], TOKENIZER, 248)
    model.encode_text(ids).sum().backward()
    table = model.positional_embedding_table
    assert not table.frozen.requires_grad and table.trainable.grad is not None
    assert table.trainable.grad[:100].abs().sum() > 0
    twin = copy.deepcopy(model)  # DPO's frozen reference is a copy
    torch.testing.assert_close(twin.encode_text(ids), model.encode_text(ids))
    assert list(model.state_dict()).count("positional_embedding_table.weight") == 1


def test_hf_tower_encodes_a_200_token_prompt_and_saves_in_the_standard_layout(tmp_path):
    model = tiny_hf_text()
    short = TOKENIZER(["a red star"])[:, :5]
    with torch.no_grad():
        before = model(input_ids=short).pooler_output
    extend_clip_text_context(model)
    assert clip_context_length(model) == 248
    ids = tokenize_clip_prompts([LONG_PROMPT], TOKENIZER, 248)
    with torch.no_grad():
        out = model(input_ids=ids).pooler_output
        torch.testing.assert_close(model(input_ids=short).pooler_output, before)
    assert out.shape == (1, 32) and torch.isfinite(out).all()
    position = model.embeddings.position_embedding
    assert not position.frozen.requires_grad and position.trainable.requires_grad
    # Saved as a plain 248-row CLIP: transformers loads it with no help from the kit.
    model.save_pretrained(tmp_path)
    plain = CLIPTextModel.from_pretrained(tmp_path).eval()
    assert plain.config.max_position_embeddings == 248
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=ids).pooler_output, out)
    # And the kit's extended module reloads from that standard layout.
    again = extend_clip_text_context(tiny_hf_text(), init="random")
    again.load_state_dict(plain.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids).pooler_output, out)


def test_random_init_keeps_the_frozen_rows():
    model = tiny_hf_text()
    old = model.embeddings.position_embedding.weight.detach().clone()
    extend_clip_text_context(model, init="random", generator=torch.Generator().manual_seed(0))
    new = model.embeddings.position_embedding.weight
    torch.testing.assert_close(new[:20], old[:20], rtol=0, atol=0)
    assert 0.005 < new[20:].std() < 0.02
    with pytest.raises(ValueError, match="init must be one of"):
        extend_clip_text_context(tiny_hf_text(), init="zeros")
    with pytest.raises(ValueError, match="context_length 250"):
        extend_clip_text_context(tiny_hf_text(), context_length=250)


def test_long_prompt_is_truncated_with_a_warning_that_counts():
    full = len(TOKENIZER.encode(LONG_PROMPT)) + 2
    with pytest.warns(ClipPromptTruncated, match=f"prompt 0 has {full} tokens.*dropped {full - 77} tokens"):
        ids = tokenize_clip_prompts([LONG_PROMPT], TOKENIZER, 77)
    assert ids.shape == (1, 77) and ids[0, -1] == TOKENIZER.eot_token_id
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ids = tokenize_clip_prompts(["a red star"], TOKENIZER, 248)
    # Same ids as open_clip's own tokenizer where nothing is cut.
    torch.testing.assert_close(ids, TOKENIZER(["a red star"], context_length=248))


def test_a_model_trained_at_77_positions_stretches_to_248_and_saves_so(tmp_path):
    import open_clip

    from ppllava.config import PPLLaVAConfig
    from ppllava.model import PPLLaVA, load_pretrained
    from ppllava.ops import tokenize_clip_prompts

    torch.manual_seed(0)
    model = PPLLaVA(PPLLaVAConfig.from_name("tiny", extend_clip_context=False)).eval()
    tok = open_clip.get_tokenizer("ViT-B-32")
    short = tokenize_clip_prompts(["a red star"], tok, 77)
    before = model.encode_prompts(short)
    model.extend_clip_context("interpolate")
    assert model.config.extend_clip_context and model.config.text_context_length == 248
    assert model.clip_text.embeddings.position_embedding.weight.shape[0] == 248
    torch.testing.assert_close(model.encode_prompts(short), before)  # the first 20 rows are kept as they were
    with pytest.raises(ValueError, match="already extended"):
        model.extend_clip_context()
    long = tokenize_clip_prompts([" ".join(["red"] * 150) + " a star"], tok, 248)
    model.save_pretrained(tmp_path / "m")
    torch.testing.assert_close(load_pretrained(tmp_path / "m").eval().encode_prompts(long), model.encode_prompts(long))


def test_clip_pairs_can_put_dialogue_before_the_name():
    from ppllava.data.clip_pairs import DIALOGUE, ClipPairCollator, dialogue_filler

    assert dialogue_filler(0) == "" and dialogue_filler(len(DIALOGUE) + 2).split()[-2:] == DIALOGUE[:2]
    with pytest.raises(ValueError, match=">= 0"):
        dialogue_filler(-1)
    collate = ClipPairCollator(248, filler=(40, 40))
    assert collate._text("a red star") == dialogue_filler(40) + " a red star"
    with pytest.raises(ValueError, match="lo <= hi"):
        ClipPairCollator(77, filler=(5, 2))


def test_partial_names_make_positives_of_every_image_holding_such_a_thing():
    from ppllava.data.clip_pairs import ClipPairCollator

    def described(form):  # the first seed whose draw for "red star" is that form
        return next(d for d in (ClipPairCollator(77, partial=1.0, seed=s)._describe("red star") for s in range(50))
                    if d[0] == form)

    names = ("red star", "blue star", "red circle")
    assert [described("a star")[1](o) for o in names] == [True, True, False]
    assert [described("a red object")[1](o) for o in names] == [True, False, True]
    assert ClipPairCollator(77)._describe("red star")[0] == "a red star"  # partial=0: always the full name
    items = [{"pixel_values": torch.zeros(3, 4, 4), "mask": torch.zeros(2, 2, dtype=torch.bool),
              "object_mask": torch.zeros(2, 2, dtype=torch.bool), "text": f"a {n}",
              "name": n, "objects": objects}
             for n, objects in (("red star", ["red star", "blue circle"]), ("blue star", ["blue star"]),
                                ("red circle", ["red circle", "green square"]))]
    assert torch.equal(ClipPairCollator(77)(items)["positives"], torch.eye(3, dtype=torch.bool))
    for seed in range(5):  # whatever is drawn, each image is a positive of its own text
        assert ClipPairCollator(77, partial=1.0, seed=seed)(items)["positives"].diagonal().all()
    with pytest.raises(ValueError, match="partial"):
        ClipPairCollator(77, partial=1.5)


def test_questions_as_clip_prompts_make_positives_of_what_they_ask_about():
    from ppllava.data.clip_pairs import ClipPairCollator, question_names

    assert question_names("what colour is the star ? options : a . red b . blue") == {"star"}
    assert question_names("what shape is the red object ?") == {"red"}
    assert question_names("which appears first , the red star or the blue circle ?") == {"red", "star", "blue", "circle"}
    collate = ClipPairCollator(77, questions=1.0)
    text, match = collate._describe("red star", "what colour is the star ? options : a . red b . blue")
    assert text.startswith("what colour is the star") and [match(o) for o in ("blue star", "red circle")] == [True, False]
    text, match = collate._describe("red star", "what shape is the red object ?")
    assert [match(o) for o in ("blue star", "red circle")] == [False, True]
    # A question naming another object too (or none) falls back to the object's name.
    assert collate._describe("red star", "which appears first , the red star or the blue circle ?")[0] == "a red star"
    assert collate._describe("red star", "how many objects are there ?")[0] == "a red star"
    items = [{"pixel_values": torch.zeros(3, 4, 4), "mask": torch.zeros(2, 2, dtype=torch.bool),
              "object_mask": torch.zeros(2, 2, dtype=torch.bool), "name": n,
              "objects": objects, "question": q}
             for n, objects, q in (("red star", ["red star"], "what colour is the star ?"),
                                   ("blue star", ["blue star", "red circle"], "what shape is the blue object ?"),
                                   ("red circle", ["red circle"], "what colour is the circle ?"))]
    batch = collate(items)
    assert batch["positives"].tolist() == [[True, False, False], [True, True, True], [False, False, True]]
    with pytest.raises(ValueError, match="questions"):
        ClipPairCollator(77, questions=-0.1)


def test_prompts_that_say_where_make_positives_only_of_pictures_with_the_object_there():
    from ppllava.data.clip_pairs import ClipPairCollator, object_regions, region

    assert [region(x, y, 64) for x, y in ((5, 5), (32, 32), (60, 40), (0, 63.9))] == [
        "top left", "middle centre", "middle right", "bottom left"]
    record = {"scene": {"size": 64, "num_frames": 8, "objects": [
        {"shape": "star", "colour": "red", "radius": 8.0, "start": [10.0, 10.0], "velocity": [6.0, 0.0], "appear": 0, "vanish": 8},
        {"shape": "circle", "colour": "blue", "radius": 8.0, "start": [50.0, 50.0], "velocity": [0.0, 0.0], "appear": 4, "vanish": 8}]}}
    assert object_regions(record, 0) == {"red star": "top left"}  # the circle is not there yet
    assert object_regions(record, 7) == {"red star": "top right", "blue circle": "bottom right"}  # 10 + 6 * 7 = 52
    assert object_regions({"objects": ["red star"]}, 0) == {}  # a record without a scene says nothing of where
    text, match = ClipPairCollator(77, positions=1.0)._describe("red star", None, {"red star": "top left"})
    assert text == "a red star at the top left"
    assert [match(*o) for o in (("red star", "top left"), ("red star", "top right"), ("blue star", "top left"))] == [
        True, False, False]
    item = lambda name, regions: {"pixel_values": torch.zeros(3, 4, 4), "mask": torch.zeros(2, 2, dtype=torch.bool),  # noqa: E731
                                  "object_mask": torch.zeros(2, 2, dtype=torch.bool), "name": name,
                                  "objects": list(regions), "regions": regions}
    items = [item("red star", {"red star": "top left"}), item("red star", {"red star": "bottom right"}),
             item("blue circle", {"blue circle": "top left", "red star": "top left"})]
    positives = ClipPairCollator(77, positions=1.0)(items)["positives"]
    # "a red star at the top left" fits pictures 0 and 2, not 1, where the red star is bottom right.
    assert positives.tolist() == [[True, False, False], [False, True, False], [True, False, True]]
    assert torch.equal(ClipPairCollator(77)(items)["positives"][:2, :2], torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="'red star' has no region"):  # never a silent fall-back to the bare name
        ClipPairCollator(77, positions=1.0)._describe("red star", None, {})
    with pytest.raises(ValueError, match="positions"):
        ClipPairCollator(77, positions=-0.1)


def test_positives_by_set_lookup_equal_the_plain_loop_over_every_object():
    """The collator's positives (one set of keys per image) against any(...) over each image's objects,
    the plain formulation, on random batches of names, regions and prompt forms."""
    from ppllava.data.clip_pairs import ClipPairCollator
    from ppllava.data.scenes import COLOURS, SHAPES

    def fits(named, name, where):  # what a prompt names, read off the object's name word by word
        colour, shape = name.split()
        hit = {"name": name, "shape": shape, "colour": colour}[named.kind] == named.value
        return hit and (named.region is None or where == named.region)

    rng = np.random.default_rng(0)
    names = [f"{c} {s}" for c in COLOURS for s in SHAPES]
    regions_all = [f"{v} {h}" for v in ("top", "middle", "bottom") for h in ("left", "centre", "right")]
    for seed in range(20):
        items = []
        for _ in range(24):
            objects = list(rng.choice(names, size=int(rng.integers(1, 5)), replace=False))
            regions = {o: str(rng.choice(regions_all)) for o in objects if rng.random() < 0.8}
            name = objects[0] if objects[0] in regions else next(iter(regions), objects[0])
            regions.setdefault(name, str(rng.choice(regions_all)))
            items.append({"pixel_values": torch.zeros(3, 4, 4), "mask": torch.zeros(2, 2, dtype=torch.bool),
                          "object_mask": torch.zeros(2, 2, dtype=torch.bool), "name": name, "objects": objects,
                          "regions": regions, "question": f"what colour is the {name.split()[1]} ?"})
        collate = ClipPairCollator(77, seed=seed, partial=0.4, questions=0.3, positions=0.5)
        replay = ClipPairCollator(77, seed=seed, partial=0.4, questions=0.3, positions=0.5)  # the same draws
        named = [replay._describe(i["name"], i["question"], i["regions"])[1] for i in items]
        plain = [[any(fits(n, o, i["regions"].get(o)) for o in i["objects"]) for n in named] for i in items]
        assert collate(items)["positives"].tolist() == plain
