"""A word-level tokenizer for the world, built with `tokenizers` and wrapped as a transformers
fast tokenizer (special tokens at the ids the tiny configs expect, a chat template, the media
placeholders), saved to and loaded from a local directory like any other."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Union

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from ppllava.data.conversation import TEMPLATES
from ppllava.data.tasks import vocabulary

# Order fixes the ids: PPLLaVAConfig's defaults are pad 0, bos 1, eos 2, image 3, video 4.
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<image>", "<video>", "<unk>")

# Words apart at spaces, and every punctuation mark its own token ("?<|" -> "?", "<", "|").
PRE_TOKENIZER = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])

# Vicuna v1's layout (the paper's LLM), kept in the tokenizer so `apply_chat_template` works.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }} "
    "{% elif m['role'] == 'user' %}USER : {{ m['content'] }} ASSISTANT :"
    "{% else %} {{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)


LATER_WORDS = ("six", "times", "appear")  # the free layout's sixth object (issue #14); the count needle (#15)


def world_words(extra: Iterable[str] = ()) -> list:
    """The world's vocabulary plus the conversation templates' own words, split exactly as the
    tokenizer's pre-tokenizer splits them (so no template word falls back to <unk>)."""
    split = PRE_TOKENIZER.pre_tokenize_str
    texts = [*vocabulary(), *extra] + [" ".join([t.system, t.user, t.assistant, t.end]) for t in TEMPLATES.values()]
    words = {piece for text in texts for piece, _ in split(text)} - set(SPECIAL_TOKENS)
    # Words the world gained after models were trained go last, so that no earlier word changes id
    # (a sorted insertion would silently re-map every later word of a saved model's vocabulary).
    return sorted(words - set(LATER_WORDS)) + [w for w in LATER_WORDS if w in words]


def build_world_tokenizer(extra_words: Iterable[str] = ()) -> PreTrainedTokenizerFast:
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for word in world_words(extra_words):
        vocab.setdefault(word, len(vocab))
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = PRE_TOKENIZER
    core.decoder = decoders.WordPiece(prefix="##")  # joins word-level tokens with spaces
    core.add_special_tokens(list(SPECIAL_TOKENS))  # matched before pre-tokenization: "<video>" stays one token
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        additional_special_tokens=["<image>", "<video>"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def load_tokenizer(directory: Union[str, Path]) -> PreTrainedTokenizerFast:
    """A tokenizer saved with `save_pretrained`, from a local directory only."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
