"""Image-text pairs for CLIP post-pretraining, with the patch cells the named object covers (for
pointing accuracy) and every object of the picture (for multi-positive contrastive targets)."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from ppllava.data.conversation import clip_prompt_text
from ppllava.data.dataset import read_records
from ppllava.data.oracle import object_patches, scene_coverage, shows_most
from ppllava.data.scenes import COLOURS, SHAPES, Scene
from ppllava.data.video import MediaError, get_reader, read_image


class ClipPairDataset(Dataset):
    """One (frame, "a {colour} {shape}") pair per record that names a target: the image itself, or
    the first video frame where the target is visible; its mask marks the patches that hold the
    object's pixels (`ppllava.data.oracle.object_patches`), what pointing accuracy counts as a hit,
    and its object mask the patches that show it more than any other object
    (`ppllava.data.oracle.shown_patches`), what object-level pointing counts."""

    def __init__(self, annotations: Union[str, Path], image_size: int, patch_size: int, *, reader: str = "decord"):
        from transformers import CLIPImageProcessor

        self.source, self.root = str(annotations), Path(annotations).parent
        self.image_size, self.patch_size = image_size, patch_size
        self.reader = get_reader(reader)
        self.processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                            crop_size={"height": image_size, "width": image_size})
        self.items, self._cache = [], {}
        for record in read_records(annotations):
            target, boxes = record.get("target"), record.get("boxes")
            if not target or not boxes or "objects" not in record or "images" in record:
                continue
            frame = next((t for t, b in enumerate(boxes) if b is not None), None)
            if frame is not None:
                self.items.append((record, frame))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Dict[str, object]:
        # Contrastive training revisits every pair many times: decode and transform each once.
        if index not in self._cache:
            self._cache[index] = self._load(index)
        return self._cache[index]

    def _load(self, index: int) -> Dict[str, object]:
        record, frame = self.items[index]
        try:  # the readers' MediaError names the file; this adds the record
            if "video" in record:
                pixels = self.reader.read(self.root / record["video"], [frame])[0]
            else:
                pixels = read_image(self.root / record["image"])
        except MediaError as err:
            raise MediaError(f"{self.source}: record {record.get('id')}: {err}") from err
        name = f"{record['target']['colour']} {record['target']['shape']}"
        # channels_last: a frame 1, 3 or 4 pixels tall would otherwise be taken as channels-first
        pixel_values = self.processor([pixels], return_tensors="pt", input_data_format="channels_last")
        pixel_values = pixel_values["pixel_values"][0]
        coverage, k = scene_coverage(record, [frame], self.image_size, self.patch_size)  # one drawing for both masks
        return {"pixel_values": pixel_values, "text": f"a {name}",
                "name": name, "objects": list(record["objects"]), "question": clip_prompt_text(record["conversations"]),
                "mask": object_patches(coverage[:, k])[0], "object_mask": shows_most(coverage, k)[0],
                "regions": object_regions(record, frame)}


VERTICAL, HORIZONTAL = ("top", "middle", "bottom"), ("left", "centre", "right")


def region(x: float, y: float, size: float) -> str:
    """Where a point of a size x size frame lies, in thirds: "top left" ... "bottom right"."""
    third = lambda v: min(2, max(0, int(3 * v / size)))  # noqa: E731
    return f"{VERTICAL[third(y)]} {HORIZONTAL[third(x)]}"


def object_regions(record: dict, frame: int) -> Dict[str, str]:
    """{name: region of its centre} for the objects of the record's scene visible at `frame`
    (empty for a record without a scene: real data sets say nothing of where things are)."""
    if "scene" not in record:
        return {}
    scene = Scene.from_dict(record["scene"])
    return {o.name: region(*o.centre(frame), scene.size) for o in scene.objects if o.visible(frame)}


# Earlier dialogue that names no object: what sits before the question in a long CLIP prompt
# (PPLLaVA's released training feeds CLIP the whole conversation, system prompt included).
DIALOGUE = ("a chat between a curious human and an artificial intelligence assistant . the assistant gives helpful , "
            "detailed , and polite answers to the human's questions . user : describe the video . assistant : "
            "there are a few objects . user : how many objects are there ? assistant : three . user :").split()


def dialogue_filler(words: int) -> str:
    """`words` words of object-free dialogue (the DIALOGUE text, repeated as needed)."""
    if words < 0:
        raise ValueError(f"filler words must be >= 0, got {words}")
    return " ".join(DIALOGUE[i % len(DIALOGUE)] for i in range(words))


def question_names(question: str) -> set:
    """The colour and shape words a question asks about; a multiple-choice question's option list
    names colours it does not ask about, so only the text before "options" counts."""
    return {w for w in question.split(" options :")[0].split() if w in COLOURS or w in SHAPES}


class Named(NamedTuple):
    """What a CLIP prompt names: an object by its full name, shape or colour (`kind`, `value`), and for a
    prompt that says where, the region it is in. Called with an object's name (and its region), it says
    whether the prompt fits that object."""

    kind: str  # "name" | "shape" | "colour"
    value: str
    region: Optional[str] = None

    def __call__(self, name: str, where: Optional[str] = None) -> bool:
        return self.key in Named.keys_of([name], {} if where is None else {name: where})

    @property
    def key(self) -> Tuple[str, ...]:
        return (self.kind, self.value) if self.region is None else (self.kind, self.value, self.region)

    @staticmethod
    def keys_of(objects: Sequence[str], regions: Dict[str, str]) -> set:
        """Every `key` of a prompt that fits one of `objects` ({name: region} for those whose region is known)."""
        keys = set()
        for name in objects:
            colour, shape = name.split()
            keys.update((("name", name), ("shape", shape), ("colour", colour)))
            if name in regions:
                keys.add(("name", name, regions[name]))
        return keys


class ClipPairCollator:
    """Stacks pixels and masks, tokenizes texts for CLIP, and marks every (image, text) pair whose
    text names an object in the image (`positives`, (B, B) bool) for multi-positive InfoNCE, and
    every item whose prompt fits its target alone (`grounded`, (B,) bool: `grounding_loss`'s pairs).

    `filler` (lo, hi): put lo..hi words of object-free dialogue before each name (drawn per item
    from `seed`), so the name sits deep in a long prompt, as in a multi-turn conversation.
    `partial`: the share of prompts that name only the shape ("a star") or only the colour ("a red
    object"), as questions do ("what colour is the star ?"); positives follow what the prompt names.
    `form` ("full", "shape" or "colour") names every item that one way instead (pointing by form).
    `questions`: the share of prompts that are the record's own question (what CLIP scores at SFT
    and inference: "what colour is the star ?"), where it names the target and nothing else.
    `positions`: the share of full-name prompts that also say where the object is, in thirds of the
    frame ("a red star at the top left"); their positives are the pictures with that object there.
    Why: the fine-grained loss alone asks nothing of where a patch is, and a tower trained on it from
    scratch forgets (a linear probe reads a patch's column from the tiny-p8 tower's features with
    R^2 0.04, from its input 0.86), so an LLM reading every token cannot tell which way an object
    moves; real CLIP learns where from captions that say so. Measured so far (docs/world.md, issue
    #14): 800 more steps with every full-name prompt saying where raised that R^2 only to 0.09."""

    FORMS = ("full", "shape", "colour")

    def __init__(self, context_length: int = 77, clip_tokenizer=None, filler: Sequence[int] = (0, 0), seed: int = 0,
                 partial: float = 0.0, form: Optional[str] = None, questions: float = 0.0, positions: float = 0.0):
        if clip_tokenizer is None:
            import open_clip

            clip_tokenizer = open_clip.get_tokenizer("ViT-B-32")
        if len(filler) != 2 or not 0 <= filler[0] <= filler[1]:
            raise ValueError(f"filler must be (lo, hi) with 0 <= lo <= hi, got {tuple(filler)}")
        self.tokenizer, self.context = clip_tokenizer, context_length
        # prompt -> its ids, kept across batches (tokenize_clip_prompts); not with filler, whose prompts of
        # every length would be kept for few repeats
        self.clip_ids: Optional[dict] = {} if tuple(filler) == (0, 0) else None
        if not 0 <= partial <= 1:
            raise ValueError(f"partial must be in [0, 1], got {partial}")
        if not 0 <= questions <= 1:
            raise ValueError(f"questions must be in [0, 1], got {questions}")
        if not 0 <= positions <= 1:
            raise ValueError(f"positions must be in [0, 1], got {positions}")
        self.questions, self.positions = questions, positions
        if form is not None and form not in self.FORMS:
            raise ValueError(f"form must be one of {self.FORMS} or None, got {form!r}")
        self.form = form
        self.filler, self.rng, self.partial = tuple(filler), np.random.default_rng(seed), partial

    def _describe(self, name: str, question: Optional[str] = None, regions: Optional[Dict[str, str]] = None):
        """(text, named) for one item: the prompt and what it names (`Named`: called with an object name,
        and its region for a prompt that says where, it says whether the prompt fits that object);
        `regions` the item's {name: region}."""
        colour, shape = name.split()
        if question and self.form is None and self.questions > 0 and self.rng.random() < self.questions:
            named = question_names(question)
            if named == {colour, shape}:
                return question, Named("name", name)
            if named == {shape}:
                return question, Named("shape", shape)
            if named == {colour}:
                return question, Named("colour", colour)
        form = self.form or ("full" if self.rng.random() >= self.partial else ("shape", "colour")[int(self.rng.integers(2))])
        if form == "shape":
            return f"a {shape}", Named("shape", shape)
        if form == "colour":
            return f"a {colour} object", Named("colour", colour)
        if self.positions > 0 and self.rng.random() < self.positions:
            regions = regions or {}
            if name not in regions:
                raise ValueError(f"ClipPairCollator(positions={self.positions}): the item naming {name!r} has no region "
                                 "for it (its record carries no scene, or the object is not visible in its frame)")
            there = regions[name]
            return f"a {name} at the {there}", Named("name", name, there)
        return f"a {name}", Named("name", name)

    def _text(self, text: str) -> str:
        lo, hi = self.filler
        words = lo if lo == hi else int(self.rng.integers(lo, hi + 1))
        return f"{dialogue_filler(words)} {text}".strip()

    def __call__(self, items: Sequence[Dict[str, object]]) -> Dict[str, object]:
        from ppllava.ops import tokenize_clip_prompts

        texts, named = zip(*(self._describe(i["name"], i.get("question"), i.get("regions")) for i in items))
        # positives[i, j]: text j names something in image i (where it is, when it says where). Each image's
        # objects become one set of the keys that name them: B x B set lookups instead of calling each
        # prompt's test on every object of every image (the same positives: tests/test_clip_context.py).
        keys = [Named.keys_of(item["objects"], item.get("regions") or {}) for item in items]
        wanted = [n.key for n in named]
        positives = torch.tensor([[w in k for w in wanted] for k in keys])
        # grounded[i]: prompt i fits one object of image i, its target, whose mask the item carries; a prompt
        # that fits two objects ("a triangle" with two triangles on screen) has no one mask to ground to
        grounded = torch.tensor([sum(w in Named.keys_of([o], item.get("regions") or {}) for o in item["objects"]) == 1
                                 for w, item in zip(wanted, items)])
        return {"pixel_values": torch.stack([i["pixel_values"] for i in items]),
                "clip_input_ids": tokenize_clip_prompts([self._text(t) for t in texts], self.tokenizer, self.context,
                                                         self.clip_ids),
                "masks": torch.stack([i["mask"] for i in items]),
                "object_masks": torch.stack([i["object_mask"] for i in items]), "positives": positives,
                "grounded": grounded,
                "names": [i["name"] for i in items]}
