"""Instruction data: chats rendered with the base model's chat template, loss on the answers only.

Rows come from reading.py (datasets stays in this folder) as plain dicts, either a `messages` list of {role, content}
or a prompt/response column pair. Each chat is rendered one assistant turn at a time, so every token is known to be
context (label -100, no loss) or answer (trained on): the model learns to answer, not to echo the requests.

No third-party import: the trial hands in its tokenizer. Serving renders prompts with the same `prompt_ids`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from sweeps.spec import DataSpec
from sweeps.trial.data import labelled, reading
from sweeps.trial.data.reading import DataError

IGNORE = -100  # label of a token the loss skips (torch's cross_entropy ignore_index default)
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Chat:
    messages: tuple[dict, ...]  # ends with the assistant answer that is trained on and scored
    category: str | None = None

    @property
    def request(self) -> str:
        return next((m["content"] for m in reversed(self.messages) if m["role"] == "user"), "")

    @property
    def answer(self) -> str:
        return self.messages[-1]["content"]


@dataclass(frozen=True)
class ChatData:
    train: list[Chat]
    validation: list[Chat]
    test: list[Chat] | None
    categories: list[str]
    fingerprint: str
    dropped: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]  # IGNORE on context tokens
    prompt_ids: list[int]  # the chat up to the last answer, with the generation prompt: what serving sends
    truncated: bool


# ---------------------------------------------------------------- rows -> chats


def _messages(row: dict, data: DataSpec) -> list[dict] | str:
    """The row's chat, or why it is unusable."""
    if data.prompt_column:
        prompt, response = row.get(data.prompt_column), row.get(data.response_column)
        if not isinstance(prompt, str) or not prompt.strip():
            return "empty_request"
        if not isinstance(response, str) or not response.strip():
            return "empty_answer"
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    messages = row.get(data.messages_column)
    if not isinstance(messages, list) or not messages:
        return "no_messages"
    out = []
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            return "bad_message"
        out.append({"role": m["role"], "content": m["content"]})
    if out[-1]["role"] != "assistant" or not out[-1]["content"].strip():
        return "no_answer"
    return out


def _chats(rows: list[dict], data: DataSpec, split: str, dropped: dict[str, int]) -> list[Chat]:
    if rows and not data.prompt_column and not any(data.messages_column in r for r in rows):
        raise DataError(f"{data.source} ({split}): no column {data.messages_column!r} (data.messages_column); "
                        f"columns: {sorted(rows[0])}. For request/answer columns set data.prompt_column and "
                        "data.response_column")
    for col in (data.prompt_column, data.response_column):
        if rows and col and not any(col in r for r in rows):
            raise DataError(f"{data.source} ({split}): no column {col!r}; columns: {sorted(rows[0])}")
    out = []
    for row in rows:
        messages = _messages(row, data)
        if isinstance(messages, str):
            dropped[f"{split}.{messages}"] = dropped.get(f"{split}.{messages}", 0) + 1
            continue
        category = row.get(data.category_column) if data.category_column else None
        out.append(Chat(tuple(messages), str(category) if category not in (None, "") else None))
    if not out:
        raise DataError(f"{data.source} ({split}): no usable chats (dropped: {dropped})")
    return out


def load_chats(data: DataSpec, seed: int) -> ChatData:
    """train / validation / test chats. A `validation` split in the source is used as is (fixed splits, as the
    bundled helpdesk set has); otherwise validation_fraction of train is carved out, stratified by category."""
    records, fingerprint = reading.read_records(data)
    dropped: dict[str, int] = {}
    train = _chats(records["train"], data, "train", dropped)
    if "validation" in records:
        validation = _chats(records["validation"], data, "validation", dropped)
    else:
        keys = [c.category or "" for c in train]
        train_idx, val_idx = labelled.stratified_split(keys, data.validation_fraction, seed)
        train, validation = [train[i] for i in train_idx], [train[i] for i in val_idx]
    test = _chats(records["test"], data, "test", dropped) if "test" in records else None
    categories = sorted({c.category for c in train + validation if c.category})
    return ChatData(train, validation, test, categories, fingerprint, dropped)


# ---------------------------------------------------------------- chats -> tokens


def with_system(messages, system_prompt: str | None) -> list[dict]:
    messages = list(messages)
    if system_prompt and (not messages or messages[0]["role"] != "system"):
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def _render(tokenizer, messages: list[dict], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]  # the template writes the special tokens itself


def prompt_ids(tokenizer, messages, system_prompt: str | None = None) -> list[int]:
    """Tokens of a request as the model sees it at inference: the chat so far plus the assistant header."""
    return _ids(tokenizer, _render(tokenizer, with_system(messages, system_prompt), True))


def encode(chat: Chat, tokenizer, max_length: int, system_prompt: str | None = None) -> Encoded | None:
    """Context and answers tokenized piece by piece; cut to max_length; None when no answer token survives."""
    messages = with_system(chat.messages, system_prompt)
    ids: list[int] = []
    labels: list[int] = []
    done = ""
    last_prompt_len = 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = _render(tokenizer, messages[:i], True)
        full = _render(tokenizer, messages[: i + 1], False)
        if not prompt.startswith(done) or not full.startswith(prompt):
            raise DataError("the tokenizer's chat template does not render a chat as a growing prefix, so answer "
                            "tokens cannot be told from context; use a chat model whose template does (ChatML, "
                            "Llama 3, ...)")
        context, answer = _ids(tokenizer, prompt[len(done):]), _ids(tokenizer, full[len(prompt):])
        ids += context
        labels += [IGNORE] * len(context)
        last_prompt_len = len(ids)
        ids += answer
        labels += answer
        done = full
    prompt = ids[:last_prompt_len]  # before the cut: generation sees the whole request
    truncated = len(ids) > max_length
    ids, labels = ids[:max_length], labels[:max_length]
    if all(x == IGNORE for x in labels):
        return None
    return Encoded(ids, labels, prompt, truncated)


def encode_all(chats: list[Chat], tokenizer, max_length: int, system_prompt: str | None = None
               ) -> tuple[list[Encoded], list[Chat], dict[str, int]]:
    """Encoded chats (those with an answer token left), the chats they came from, and truncation counts."""
    encoded, kept, stats = [], [], {"examples": len(chats), "truncated": 0, "dropped_too_long": 0}
    for chat in chats:
        enc = encode(chat, tokenizer, max_length, system_prompt)
        if enc is None:
            stats["dropped_too_long"] += 1
            continue
        stats["truncated"] += enc.truncated
        encoded.append(enc)
        kept.append(chat)
    return encoded, kept, stats


def encode_split(chats: list[Chat], tokenizer, data: DataSpec, split: str
                 ) -> tuple[list[Encoded], list[Chat], dict[str, int]]:
    """encode_all with the spec's length and system prompt; an error when no chat of the split survives."""
    encoded, kept, stats = encode_all(chats, tokenizer, data.max_length, data.system_prompt)
    if not encoded:
        raise DataError(f"{data.source} ({split}): every chat's answer starts past data.max_length "
                        f"{data.max_length} tokens; raise max_length ({stats})")
    return encoded, kept, stats


def pack(encoded: list[Encoded], max_length: int) -> list[dict[str, list[int]]]:
    """Greedy packing in the given order: rows of up to max_length tokens holding several chats.

    Each chat's position ids restart at 0; given position ids and no attention mask, transformers builds a
    block-diagonal causal mask from the restarts, so packed chats never attend to each other.
    """
    rows: list[dict[str, list[int]]] = []
    row: dict[str, list[int]] = {"input_ids": [], "labels": [], "position_ids": []}
    for enc in encoded:
        if row["input_ids"] and len(row["input_ids"]) + len(enc.input_ids) > max_length:
            rows.append(row)
            row = {"input_ids": [], "labels": [], "position_ids": []}
        row["input_ids"] += enc.input_ids
        row["labels"] += enc.labels
        row["position_ids"] += list(range(len(enc.input_ids)))
    if row["input_ids"]:
        rows.append(row)
    return rows


def extract_category(text: str, pattern: str) -> str | None:
    match = re.search(pattern, text)
    return match.group(1) if match else None
