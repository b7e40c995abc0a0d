"""One path from raw media to model inputs: a reader, the processor, the model.

    processor = PPLLaVAProcessor(tokenizer, model.config)
    prompt = processor.apply_chat_template([{"from": "human", "value": "<video>\\nwhat colour is the star ?"}])
    inputs = processor(prompt, videos="clip.mp4")                     # a BatchFeature
    answer = processor.batch_decode(model.generate(**inputs, max_new_tokens=16), skip_special_tokens=True)

As transformers' `LlavaNextVideoProcessor`: each `<image>` / `<video>` placeholder in the text becomes
as many placeholder ids as the medium has visual tokens (`TokenLayout`, which the model checks),
pixels are the vision tower's own transforms (`MediaProcessor`), prompts are padded left or right.
Ours in addition: `clip_input_ids`, the CLIP prompt each sample's visual tokens are pooled by, and
`image_crops`, the kit's single-crop layout for the images of a multi-image text.
The dataset (`LLaVADataset`, training ids with answer-only labels: `encode_training`), the
evaluation (`generate_answers`) and the chat build their inputs here.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from transformers import BatchFeature

from ppllava.config import PPLLaVAConfig
from ppllava.data.conversation import TEMPLATES, check_known_words, encode_conversation
from ppllava.data.media import MediaError, image_to_rgb, read_image
from ppllava.data.video import SAMPLING, get_reader, sample_indices
from ppllava.data.transforms import (MediaProcessor, MediaTokenError, ProcessedImage, check_rgb,  # noqa: F401
                                     expand_labels, pad_ids, stack_images, stack_videos)
from ppllava.model.token_layout import TokenLayout
from ppllava.ops import tokenize_clip_prompts

PathLike = Union[str, Path]
# Every key the model's forward / generate takes from a processed batch (labels come from encode_training).
MODEL_INPUTS = ("input_ids", "attention_mask", "clip_input_ids", "pixel_values", "image_sizes", "image_crops",
                "pixel_values_videos")
PROCESSOR_CONFIG, CLIP_TOKENIZER_DIR = "processor_config.json", "clip_tokenizer"
PLACEHOLDERS = ("<image>", "<video>")


class PPLLaVAProcessor:
    """Text with `<image>` / `<video>` placeholders plus media -> the model's keyword inputs.

    tokenizer: any Hugging Face tokenizer whose `<image>` / `<video>` tokens are the config's
    image_token_id / video_token_id (the world's, or a real checkpoint's). clip_tokenizer: open_clip's
    bundled BPE (default, offline) or a Hugging Face CLIP tokenizer. template: one of the kit's
    conversation templates (`ppllava.data.conversation.TEMPLATES`) or "tokenizer" for the tokenizer's
    own `chat_template`. reader, sampling, num_frames, fps, seed: how a video file becomes frames
    (`ppllava.data.video`; `seed` fixes 'random' sampling).
    """

    model_input_names = MODEL_INPUTS

    def __init__(self, tokenizer, config: PPLLaVAConfig, clip_tokenizer=None, *, template: str = "vicuna_v1",
                 reader: str = "decord", sampling: str = "uniform", num_frames: Optional[int] = None,
                 fps: Optional[float] = None, seed: int = 0):
        if template != "tokenizer" and template not in TEMPLATES:
            raise ValueError(f"template must be one of {(*TEMPLATES, 'tokenizer')}, got {template!r}")
        if template == "tokenizer" and not getattr(tokenizer, "chat_template", None):
            raise ValueError("template 'tokenizer' needs a tokenizer with a chat_template; this one has none")
        if sampling not in SAMPLING:
            raise ValueError(f"sampling must be one of {SAMPLING}, got {sampling!r}")
        if num_frames is not None and not num_frames >= 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        if sampling == "fps" and not (fps is not None and fps > 0):
            raise ValueError(f"sampling 'fps' needs fps > 0 (frames per second to sample), got fps={fps}")
        self.tokenizer, self.config, self._clip_tokenizer = tokenizer, config, clip_tokenizer
        self.template, self.reader_name, self.sampling, self.fps, self.seed = template, reader, sampling, fps, seed
        self.reader = get_reader(reader)
        self.num_frames = config.num_frames if num_frames is None else num_frames
        self.layout, self.media = TokenLayout(config), MediaProcessor(config)
        self.media_ids = {config.image_token_id, config.video_token_id}
        self._markers: Optional[Tuple[str, str, str]] = None

    @property
    def clip_tokenizer(self):
        if self._clip_tokenizer is None:  # built on first use: the dataset never needs it
            import open_clip

            self._clip_tokenizer = open_clip.get_tokenizer("ViT-B-32")  # the bundled BPE vocabulary, offline
        return self._clip_tokenizer

    @property
    def pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return self.config.pad_token_id if pad is None else pad

    # --- media ------------------------------------------------------------------------------
    def read_video(self, path: PathLike, rng: Optional[np.random.Generator] = None) -> Tuple[np.ndarray, int]:
        """(frames (T, H, W, 3) uint8, repeated frames) of a video file, sampled as configured; a
        MediaError names the file. 'random' sampling draws with `rng` (default: seeded by `seed`)."""
        path = Path(path)
        indices, repeated = self._sample(path, rng)
        return self.reader.read(path, indices), repeated

    def _sample(self, path: Path, rng: Optional[np.random.Generator]) -> Tuple[List[int], int]:
        total = self.reader.frame_count(path)
        if total == 0:
            raise MediaError(f"{path} has zero frames")
        video_fps = self.reader.fps(path) if self.sampling == "fps" else None
        if self.sampling == "fps" and not video_fps > 0:
            raise MediaError(f"{path}: no frame rate ({video_fps}), which sampling 'fps' needs")
        if self.sampling == "random" and rng is None:
            rng = np.random.default_rng(self.seed)
        return sample_indices(total, self.num_frames, self.sampling, rng=rng, video_fps=video_fps, fps=self.fps)

    def video_frames(self, path: PathLike, rng: Optional[np.random.Generator] = None) -> "VideoFileFrames":
        """A video file as a `FrameSource` (n = 1) for `PPLLaVA.long_video_tokens`: the frames `read_video`
        samples, decoded and transformed a chunk at a time when the model reads them, never all at once."""
        path = Path(path)
        return VideoFileFrames(path, self._sample(path, rng)[0], self.reader, self.media)

    def load_video(self, path_or_frames) -> np.ndarray:
        """A video file -> its sampled frames (T, H, W, 3) uint8; frames (an array or uint8 tensor)
        pass through, checked."""
        if isinstance(path_or_frames, (str, Path)):
            return self.read_video(path_or_frames)[0]
        frames = path_or_frames.numpy() if isinstance(path_or_frames, torch.Tensor) else path_or_frames
        if not isinstance(frames, np.ndarray):
            raise TypeError(f"a video must be a path or (T, H, W, 3) uint8 frames, got {type(path_or_frames).__name__}")
        check_rgb(frames, 4, "video frames", "(T, H, W, 3)")
        return frames

    def process_video(self, video) -> torch.Tensor:
        """A path, (T, H, W, 3) uint8 frames or processed (T, 3, S, S) float pixels -> (T, 3, S, S) pixels."""
        if isinstance(video, torch.Tensor) and video.is_floating_point():
            S = self.config.image_size
            if video.ndim != 4 or tuple(video.shape[1:]) != (3, S, S) or video.shape[0] == 0:
                raise ValueError(f"processed video pixels must have shape (T, 3, {S}, {S}), got {tuple(video.shape)}")
            return video
        return self.media.video(self.load_video(video))

    def process_image(self, image, single_crop: bool = False) -> ProcessedImage:
        """A path, PIL image, (H, W, 3) uint8 array or ProcessedImage -> ProcessedImage; `single_crop`:
        the whole picture as one crop (the layout of a multi-image text)."""
        if isinstance(image, ProcessedImage):
            S = self.config.image_size
            if image.pixels.ndim != 4 or tuple(image.pixels.shape[1:]) != (3, S, S) or not 1 <= image.crops <= len(image.pixels):
                raise ValueError(f"a ProcessedImage needs pixels (crops, 3, {S}, {S}) with 1 <= crops <= len(pixels), "
                                 f"got {tuple(image.pixels.shape)} and crops {image.crops}")
            return image
        if isinstance(image, (str, Path)):
            array = read_image(image)
        elif hasattr(image, "mode") and hasattr(image, "convert"):  # a PIL image: read_image's rules
            array = image_to_rgb(image, "the PIL image")
        elif isinstance(image, (np.ndarray, torch.Tensor)):
            array = image.numpy() if isinstance(image, torch.Tensor) else image
        else:
            raise TypeError(f"an image must be a path, a PIL image or (H, W, 3) uint8 pixels, got {type(image).__name__}")
        return ProcessedImage(*self.media.image(array, single_crop))

    # --- text -------------------------------------------------------------------------------
    def tokenize(self, text: str, add_special_tokens: Optional[bool] = None) -> List[int]:
        """Token ids of `text`, placeholders still single ids. add_special_tokens None: one BOS (the
        tokenizer's, if it has one, unless the text already starts with it: the kit's templates leave
        it out, chat templates such as the world's put it in); True / False: the tokenizer's own rule."""
        ids = self.tokenizer(text, add_special_tokens=bool(add_special_tokens))["input_ids"]
        bos = self.tokenizer.bos_token_id
        if add_special_tokens is None and bos is not None and ids[:1] != [bos]:
            ids = [bos, *ids]
        check_known_words(self.tokenizer, text, ids)
        return ids

    def _check_placeholder_ids(self, text: str, ids: Sequence[int], where: str) -> None:
        cfg = self.config
        for word, token in zip(PLACEHOLDERS, (cfg.image_token_id, cfg.video_token_id)):
            if text.count(word) != list(ids).count(token):
                raise MediaTokenError(
                    f"{where}: {text.count(word)} {word} in the text but {list(ids).count(token)} token ids {token} "
                    f"(the config's id for {word}) after tokenizing: the tokenizer encodes {word} as "
                    f"{self.tokenizer.convert_tokens_to_ids(word)}; give it {word} as a special token with that id")

    def expand_placeholders(self, ids: Sequence[int], *, image_sizes: Sequence = (),
                            image_crops: Optional[Sequence[int]] = None, video_frames: Sequence[int] = ()) -> List[int]:
        """Ids with each placeholder id repeated once per visual token of its medium (TokenLayout);
        a MediaTokenError when the placeholders and media do not match or the pooling cannot lay them out."""
        try:
            return self.layout.expand_placeholders(ids, image_sizes=image_sizes, image_crops=image_crops,
                                                   video_frames=video_frames)
        except ValueError as err:
            raise MediaTokenError(str(err)) from err

    def encode_training(self, turns: Sequence[Dict[str, str]], *, image_sizes: Sequence = (),
                        image_crops: Optional[Sequence[int]] = None, video_frames: Sequence[int] = (),
                        record_id: str = "?") -> Tuple[List[int], List[int]]:
        """(ids, labels) of a LLaVA conversation for training: placeholders expanded, labels on the
        answers only (`encode_conversation`, which tokenizes turn by turn), -100 on every visual token.
        UnknownWords for words the tokenizer lacks, MediaTokenError for media that do not fit."""
        if self.template not in TEMPLATES:
            raise ValueError(f"encode_training needs one of the kit's templates {tuple(TEMPLATES)} (answer-only "
                             f"labels are cut at its turns), got {self.template!r}")
        ids, labels = encode_conversation(turns, self.tokenizer, self.template, record_id)
        expanded = self.expand_placeholders(ids, image_sizes=image_sizes, image_crops=image_crops,
                                            video_frames=video_frames)
        return expanded, expand_labels(ids, labels, expanded, self.media_ids)

    def apply_chat_template(self, conversation: Sequence[Dict], *, add_generation_prompt: bool = True,
                            tokenize: bool = False):
        """The prompt text of a conversation: LLaVA turns [{"from": "human"|"gpt"|"system", "value"}]
        or Hugging Face messages [{"role", "content"}] (content a string, or parts {"type": "text" |
        "image" | "video"}). The kit's templates write exactly the text `encode_conversation` tokenizes
        (no BOS: `tokenize`/`__call__` add it); template "tokenizer" renders the tokenizer's own.
        add_generation_prompt: end with the assistant's cue when the last turn is the user's.
        tokenize: return the ids (`tokenize`, placeholders not expanded) instead of the text."""
        messages = _messages(conversation)
        if self.template == "tokenizer":
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                                      tokenize=False)
        else:
            t, eos = TEMPLATES[self.template], self.tokenizer.eos_token
            parts = []
            for i, m in enumerate(messages):
                content = _text_of(m["content"])
                if m["role"] == "system":
                    raise ValueError(f"turn {i} is a system turn, but the kit's template {self.template!r} says its own "
                                     "system prompt (TEMPLATES[...].system); use template='tokenizer' to give one")
                if m["role"] == "user":
                    last = i == len(messages) - 1
                    parts.append(t.user + content + ("" if last and not add_generation_prompt else t.assistant))
                else:
                    parts.append(content + t.end + (eos if t.eos and eos else ""))
            text = t.system + "".join(parts)
        return self.tokenize(text) if tokenize else text

    def _question_markers(self) -> Tuple[str, str, str]:
        """(before the first question, between an answer and the next question, after a question),
        read off the template by rendering a conversation of sentinels."""
        if self._markers is None:
            a, b, c = "QQQSENTINELA", "QQQSENTINELB", "QQQSENTINELC"
            # Contents as strings, then as text parts (LLaVA-NeXT's templates render parts only).
            for wrap in (lambda x: x, lambda x: [{"type": "text", "text": x}]):
                one = self.apply_chat_template([{"role": "user", "content": wrap(a)}])
                two = self.apply_chat_template([{"role": "user", "content": wrap(a)},
                                                {"role": "assistant", "content": wrap(b)},
                                                {"role": "user", "content": wrap(c)}])
                if a in one and b in two and c in two:
                    self._markers = (one[: one.index(a)], two[two.index(b) + len(b): two.index(c)],
                                     one[one.index(a) + len(a):])
                    break
            else:
                raise ValueError("the chat template does not render a conversation's text where the question can be "
                                 "found again; pass clip_text (the question) yourself")
        return self._markers

    def clip_text(self, text: str) -> str:
        """The CLIP prompt of a prompt text, as `clip_prompt_text` takes it from a conversation:
        config.clip_prompt 'question', the latest question; 'conversation', every turn's text;
        template markers, special tokens and placeholders removed."""
        first, between, after = self._question_markers()
        specials = [s for s in self.tokenizer.all_special_tokens if s]
        if self.config.clip_prompt == "question":
            if after.strip() and text.rstrip().endswith(after.strip()):
                text = text.rstrip()[: -len(after.strip())]
            if between.strip() and between.strip() in text:
                text = text.rsplit(between.strip(), 1)[1]
            elif first.strip() and text.startswith(first.strip()):
                text = text[len(first.strip()):]
        else:
            for marker in sorted({first.strip(), between.strip(), after.strip()} - {""}, key=len, reverse=True):
                text = text.replace(marker, " ")
        for token in [*PLACEHOLDERS, *sorted(specials, key=len, reverse=True)]:
            text = text.replace(token, " ")
        return " ".join(text.split())

    def tokenize_clip(self, texts: Sequence[str]) -> torch.Tensor:
        """CLIP prompts -> (B, context) ids at the model's text context (truncation warns)."""
        return tokenize_clip_prompts(list(texts), self.clip_tokenizer, self.config.text_context_length)

    # --- the call ---------------------------------------------------------------------------
    def __call__(self, text: Union[str, List[str]], images=None, videos=None,
                 clip_text: Union[str, List[str], None] = None, *, padding_side: str = "left",
                 return_tensors: str = "pt", add_special_tokens: Optional[bool] = None) -> BatchFeature:
        """Texts with `<image>` / `<video>` placeholders and their media -> the model's inputs.

        images / videos: one item, a list in order of the placeholders across the texts, or a list
        of lists (one per text). An image: a path, a PIL image, (H, W, 3) uint8 pixels or a
        ProcessedImage; a text with several images gets the single-crop layout. A video: a path
        (read and sampled as configured), (T, H, W, 3) uint8 frames or processed (T, 3, S, S) float
        pixels. clip_text: the CLIP prompt per text (default `self.clip_text(text)`: the question).

        Returns a BatchFeature of input_ids and attention_mask (B, L), clip_input_ids (B, context),
        and with images pixel_values (n, max_crops, 3, S, S), image_sizes [[H, W]], image_crops;
        with videos pixel_values_videos (n, T, 3, S, S)."""
        if return_tensors != "pt":
            raise ValueError(f"return_tensors must be 'pt' (the model is PyTorch), got {return_tensors!r}")
        texts = [text] if isinstance(text, str) else list(text) if isinstance(text, (list, tuple)) else None
        if not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError(f"text must be a string or a non-empty list of strings, got {text!r:.80}")
        ids = []
        for i, t in enumerate(texts):
            row = self.tokenize(t, add_special_tokens)
            self._check_placeholder_ids(t, row, f"text {i}")
            ids.append(row)
        cfg = self.config
        image_items = _per_text(images, [r.count(cfg.image_token_id) for r in ids], "image")
        video_items = _per_text(videos, [r.count(cfg.video_token_id) for r in ids], "video")
        clips = [clip_text] if isinstance(clip_text, str) else clip_text
        if clips is None:
            clips = [self.clip_text(t) for t in texts]
        elif not isinstance(clips, (list, tuple)) or len(clips) != len(texts) or not all(isinstance(c, str) for c in clips):
            raise ValueError(f"clip_text must be one string per text: {len(texts)} text(s), got "
                             f"{len(clips) if isinstance(clips, (list, tuple)) else type(clips).__name__}")
        rows, all_images, all_videos = [], [], []
        for i, row in enumerate(ids):
            imgs = [self.process_image(im, single_crop=len(image_items[i]) > 1) for im in image_items[i]]
            vids = [self.process_video(v) for v in video_items[i]]
            try:
                row = self.expand_placeholders(row, image_sizes=[im.size for im in imgs],
                                               image_crops=[im.crops for im in imgs],
                                               video_frames=[v.shape[0] for v in vids])
            except MediaTokenError as err:
                raise MediaTokenError(f"text {i}: {err}") from err
            if len(row) > cfg.llm_max_positions:
                raise ValueError(f"text {i}: {len(row)} tokens (visual tokens included), past the LLM's "
                                 f"{cfg.llm_max_positions} positions (config.llm_max_positions)")
            rows.append(row)
            all_images += imgs
            all_videos += vids
        data: Dict[str, object] = {**pad_ids(rows, self.pad_token_id, padding_side),
                                   "clip_input_ids": self.tokenize_clip(clips)}
        if all_images:
            data.update(stack_images(all_images))
        if all_videos:
            data["pixel_values_videos"] = stack_videos(all_videos)
        return BatchFeature(data)  # image_sizes / image_crops stay lists, as the model takes them

    # --- decoding ---------------------------------------------------------------------------
    def batch_decode(self, ids, **kwargs) -> List[str]:
        return self.tokenizer.batch_decode(ids, **kwargs)

    def decode(self, ids, **kwargs) -> str:
        return self.tokenizer.decode(ids, **kwargs)

    # --- saving (local directories only) ----------------------------------------------------
    def save_pretrained(self, directory: PathLike) -> Path:
        """The tokenizer (`save_pretrained`), the CLIP tokenizer (its name, or its own directory
        `clip_tokenizer/`) and the settings (processor_config.json), beside the model's files; the
        config.yaml is written when the model's is not there, and must equal it when it is."""
        from ppllava.model.loading import CONFIG

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config_path = directory / CONFIG
        if config_path.exists():
            saved = PPLLaVAConfig.from_yaml(config_path).to_dict()
            differ = sorted(k for k, v in self.config.to_dict().items() if saved.get(k) != v)
            if differ:
                raise ValueError(f"{config_path} (the model's) differs from this processor's config in {differ}; "
                                 "save the processor beside the model it was built for")
        else:
            self.config.to_yaml(config_path)
        self.tokenizer.save_pretrained(str(directory))
        clip = self.clip_tokenizer
        if hasattr(clip, "save_pretrained"):
            clip.save_pretrained(str(directory / CLIP_TOKENIZER_DIR))
            clip_source = CLIP_TOKENIZER_DIR
        elif type(clip).__name__ == "SimpleTokenizer":  # open_clip's bundled BPE: rebuilt by name
            clip_source = "open_clip"
        else:
            raise TypeError(f"cannot save a CLIP tokenizer of type {type(clip).__name__}: use open_clip's or a "
                            "Hugging Face CLIP tokenizer")
        settings = {"processor_class": type(self).__name__, "template": self.template, "reader": self.reader_name,
                    "sampling": self.sampling, "num_frames": self.num_frames, "fps": self.fps, "seed": self.seed,
                    "clip_tokenizer": clip_source}
        (directory / PROCESSOR_CONFIG).write_text(json.dumps(settings, indent=2) + "\n")
        return directory

    @classmethod
    def from_pretrained(cls, directory: PathLike, config: Optional[PPLLaVAConfig] = None,
                        **overrides) -> "PPLLaVAProcessor":
        """A processor saved with `save_pretrained`, from a local directory. config: the model's
        (default: the directory's config.yaml); `overrides` change saved settings (template, num_frames, ...)."""
        from ppllava.data.tokenizer import load_tokenizer
        from ppllava.model.loading import CONFIG

        directory = Path(directory)
        path = directory / PROCESSOR_CONFIG
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: not a directory a PPLLaVAProcessor was saved to")
        settings = json.loads(path.read_text())
        if settings.pop("processor_class", None) != cls.__name__:
            raise ValueError(f"{path}: not a {cls.__name__} configuration")
        if config is None:
            if not (directory / CONFIG).is_file():
                raise FileNotFoundError(f"{directory / CONFIG} is missing: pass the model's config")
            config = PPLLaVAConfig.from_yaml(directory / CONFIG)
        unknown = set(overrides) - set(settings) - {"clip_tokenizer"}
        if unknown:
            raise ValueError(f"unknown processor settings {sorted(unknown)}; settings are {sorted(settings)}")
        settings.update(overrides)
        clip = settings.pop("clip_tokenizer")
        if clip == CLIP_TOKENIZER_DIR:
            from transformers import AutoTokenizer

            clip = AutoTokenizer.from_pretrained(str(directory / CLIP_TOKENIZER_DIR), local_files_only=True)
        elif clip == "open_clip":
            clip = None  # the bundled BPE, built on first use
        return cls(load_tokenizer(directory), config, clip, **settings)


def _messages(conversation: Sequence[Dict]) -> List[Dict]:
    """LLaVA turns or Hugging Face messages -> messages [{"role", "content"}], checked."""
    roles = {"human": "user", "gpt": "assistant", "system": "system"}
    out = []
    for i, turn in enumerate(conversation):
        if "from" in turn:
            if turn["from"] not in roles:
                raise ValueError(f"turn {i}: speaker must be one of {tuple(roles)}, got {turn['from']!r}")
            role, content = roles[turn["from"]], turn.get("value")
        elif "role" in turn:
            if turn["role"] not in ("user", "assistant", "system"):
                raise ValueError(f"turn {i}: role must be 'user', 'assistant' or 'system', got {turn['role']!r}")
            role, content = turn["role"], turn.get("content")
        else:
            raise ValueError(f"turn {i} has neither 'from' (LLaVA) nor 'role' (Hugging Face): {turn!r:.80}")
        if not isinstance(content, (str, list)):
            raise ValueError(f"turn {i} has no text (its content is {content!r:.40})")
        out.append({"role": role, "content": content})
    if not out:
        raise ValueError("the conversation is empty")
    return out


def _text_of(content) -> str:
    """A message's content as text: parts {"type": "image" | "video"} become their placeholders."""
    if isinstance(content, str):
        return content
    pieces = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            pieces.append(part["text"])
        elif kind in ("image", "video"):
            pieces.append(f"<{kind}>")
        else:
            raise ValueError(f"a content part must be {{'type': 'text' | 'image' | 'video'}}, got {part!r:.60}")
    return "\n".join(pieces)


def _per_text(media, counts: List[int], what: str) -> List[list]:
    """Media items grouped by text: None, one item, a flat list in placeholder order, or one list per text."""
    total = sum(counts)
    if media is None:
        items: list = []
    elif not isinstance(media, list):
        items = [media]
    elif media and all(isinstance(m, list) for m in media):
        if len(media) != len(counts):
            raise MediaTokenError(f"{what}s given as one list per text: {len(media)} lists for {len(counts)} texts")
        for i, (group, n) in enumerate(zip(media, counts)):
            if len(group) != n:
                raise MediaTokenError(f"text {i} has {n} <{what}> placeholders but {len(group)} {what}s were given for it")
        return [list(g) for g in media]
    else:
        items = list(media)
    if len(items) != total:
        raise MediaTokenError(f"{total} <{what}> placeholders in the text(s) but {len(items)} {what}s given")
    out, start = [], 0
    for n in counts:
        out.append(items[start: start + n])
        start += n
    return out


class VideoFileFrames:
    """One video file's sampled frames as a `chunked_video.FrameSource`: `read(start, stop)` decodes frames
    indices[start:stop] and applies the vision tower's transforms, (1, stop - start, 3, S, S)."""

    def __init__(self, path: Path, indices: Sequence[int], reader, media):
        self.path, self.indices, self.reader, self.media = path, list(indices), reader, media
        self.num_videos, self.num_frames = 1, len(self.indices)

    def read(self, start: int, stop: int) -> torch.Tensor:
        return self.media.video(self.reader.read(self.path, self.indices[start:stop]))[None]
