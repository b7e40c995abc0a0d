"""Conversation templates with answer-only labels (DESIGN.md §2, SFT: prompt, visual and padding
tokens are -100). A template is data; `encode_conversation` does the tokenizing."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

IGNORE = -100


@dataclass(frozen=True)
class Template:
    system: str  # said once, before the first turn ("" for none)
    user: str  # before each question
    assistant: str  # between a question and its answer
    end: str  # after each answer (the eos token is appended by encode_conversation when `eos`)
    eos: bool = True


TEMPLATES: Dict[str, Template] = {
    # LLaVA's vicuna_v1 (the paper's LLM).
    "vicuna_v1": Template(
        system="A chat between a curious human and an artificial intelligence assistant . The assistant gives "
               "helpful , detailed , and polite answers to the human's questions .",
        user=" USER : ", assistant=" ASSISTANT : ", end=""),
    # LLaVA's plain template for projector alignment (stage 1): media, then the caption.
    "plain": Template(system="", user="", assistant="\n", end="\n"),
    # Qwen2's ChatML.
    "chatml": Template(system="<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n",
                       user="<|im_start|>user\n", assistant="<|im_end|>\n<|im_start|>assistant\n", end="<|im_end|>\n",
                       eos=False),
}


class UnknownWords(ValueError):
    """Text the tokenizer can only encode as its unknown token: refused, never trained as <unk>."""


def check_known_words(tokenizer, text: str, ids: Sequence[int], prefix: str = "") -> None:
    """UnknownWords naming the words of `text` (encoded as `ids`) that the tokenizer only knows as
    <unk>: a word-level vocabulary would silently train on, or answer about, <unk> in their place."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is not None and unk in ids:
        words = [w for w in text.split() if unk in tokenizer(w, add_special_tokens=False)["input_ids"]]
        raise UnknownWords(f"{prefix}words outside the tokenizer's vocabulary: {words or [text]}")


def encode_conversation(turns: Sequence[Dict[str, str]], tokenizer, template: str = "vicuna_v1",
                        record_id: str = "?") -> Tuple[List[int], List[int]]:
    """Token ids and labels of a LLaVA conversation ([{"from": "human"|"gpt", "value": ...}, ...]).

    Labels are the ids on answer tokens (and the end-of-answer token) and -100 everywhere else.
    Media placeholders stay single tokens here; the model's TokenLayout expands them.
    """
    if template not in TEMPLATES:
        raise ValueError(f"template must be one of {tuple(TEMPLATES)}, got {template!r}")
    t = TEMPLATES[template]
    for i, turn in enumerate(turns):  # str(None) would train as the word "None"
        if not isinstance(turn.get("value"), str):
            raise ValueError(f"record {record_id}: turn {i} has no text ('value' is {turn.get('value')!r})")
    if not turns or turns[-1].get("from") != "gpt" or not turns[-1]["value"].strip():
        raise ValueError(f"record {record_id}: the conversation has no answer (its last turn must be a non-empty 'gpt' turn)")
    ids, labels = [], []

    def add(text: str, learn: bool) -> None:
        if not text:
            return
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        check_known_words(tokenizer, text, piece, f"record {record_id}: ")
        ids.extend(piece)
        labels.extend(piece if learn else [IGNORE] * len(piece))

    if tokenizer.bos_token_id is not None:
        ids.append(tokenizer.bos_token_id)
        labels.append(IGNORE)
    add(t.system, False)
    for turn in turns:
        who, text = turn.get("from"), turn["value"]
        if who == "human":
            add(t.user + text + t.assistant, False)
        elif who == "gpt":
            add(text + t.end, True)
            if t.eos and tokenizer.eos_token_id is not None:
                ids.append(tokenizer.eos_token_id)
                labels.append(tokenizer.eos_token_id)
        else:
            raise ValueError(f"record {record_id}: turn speaker must be 'human' or 'gpt', got {who!r}")
    return ids, labels


def clip_prompt_text(turns: Sequence[Dict[str, str]], mode: str = "question") -> str:
    """The text CLIP scores the patches against: the first question (inference) or the whole
    conversation, answers included (the released training code), media placeholders removed."""
    if mode == "question":
        # No bare next(): a StopIteration raised inside a Dataset ends the DataLoader's epoch silently.
        texts = [t["value"] for t in turns if t.get("from") == "human"][:1]
        if not texts:
            raise ValueError("the conversation has no 'human' turn to take the CLIP prompt from")
    elif mode == "conversation":
        texts = [t["value"] for t in turns]
    else:
        raise ValueError(f"clip prompt mode must be 'question' or 'conversation', got {mode!r}")
    text = " ".join(texts).replace("<image>", " ").replace("<video>", " ")
    return " ".join(text.split())
