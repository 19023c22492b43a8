"""The instruction task inside a trial: causal-LM loss on the answers, perplexity, routing accuracy by generation.

The trial loop drives it like the classification task (same loading, quantization, PEFT, memory measurement and
training loop); this module supplies the batches, the loss, the evaluation and the generations table.

Two choices that make it affordable on a CPU:
- the vocabulary projection runs only at answer positions (a 49k-word lm_head over every position of a batch is
  8 x 192 x 49152 floats = 300 MB of logits, most of them thrown away by the mask), in chunks (`answer_loss`);
- routing accuracy generates only as many tokens as the reference answers need to name their category.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import torch

from sweeps.spec import SweepSpec
from sweeps.spec.params import TrialParams
from sweeps.trial import baseline
from sweeps.trial.data import chat
from sweeps.trial.data.chat import IGNORE
from sweeps.trial.models import precision, pretrained


def _pad_rows(rows: list[dict], pad_id: int, device: str, packed: bool) -> dict[str, torch.Tensor]:
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    extra = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n] = torch.tensor(r["input_ids"])
        labels[i, :n] = torch.tensor(r["labels"])
        if packed:  # the padding tail is one more "chat" (positions restart) that nothing attends across
            extra[i, :n] = torch.tensor(r["position_ids"])
            extra[i, n:] = torch.arange(width - n)
        else:
            extra[i, :n] = 1
    key = "position_ids" if packed else "attention_mask"
    return {"input_ids": ids.to(device), "labels": labels.to(device), key: extra.to(device)}


CE_CHUNK = 256  # answer tokens whose vocabulary logits exist at once (256 x 49152 fp32 = 50 MB on SmolLM2)


def _chunk_ce(head: torch.nn.Module, hidden: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(head(hidden).float(), target, reduction="sum")


def answer_loss(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over answer tokens, and how many there were.

    The vocabulary projection runs in chunks of CE_CHUNK answer tokens, and in training each chunk is recomputed
    in backward instead of kept: a batch of 8 helpdesk chats has ~900 answer tokens, whose fp32 logits (171 MB),
    their log-softmax and their gradient were the largest tensors of a SmolLM2 step. The recomputation is one
    more lm_head pass over the answers, a few per cent of the step.
    """
    from torch.utils.checkpoint import checkpoint

    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    hidden = lm.get_decoder()(**inputs, use_cache=False).last_hidden_state[:, :-1]
    target = batch["labels"][:, 1:]
    keep = target != IGNORE
    hidden, target = hidden[keep], target[keep]
    head = lm.get_output_embeddings()
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], CE_CHUNK):
        part = (head, hidden[start:start + CE_CHUNK], target[start:start + CE_CHUNK])
        if torch.is_grad_enabled() and hidden.requires_grad:
            total = total + checkpoint(_chunk_ce, *part, use_reentrant=False)
        else:
            total = total + _chunk_ce(*part)
    return total, int(keep.sum())


def generate(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, device: str,
             batch_size: int = 16) -> list[str]:
    """Greedy continuations of token prompts (left-padded batches, shortest first), decoded without specials."""
    model.eval()
    pad_id = tokenizer.pad_token_id
    eos = {tokenizer.eos_token_id, *np.atleast_1d(model.generation_config.eos_token_id or []).tolist()}
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: dict[int, str] = {}
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        width = max(len(prompts[i]) for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, width - len(prompts[i]):] = torch.tensor(prompts[i])
            mask[row, width - len(prompts[i]):] = 1
        with torch.inference_mode():
            gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                                 max_new_tokens=max_new_tokens, pad_token_id=pad_id, eos_token_id=sorted(eos),
                                 temperature=None, top_p=None, top_k=None)
        for row, i in enumerate(idx):
            out[i] = tokenizer.decode(gen[row, width:], skip_special_tokens=True).strip()
    return [out[i] for i in range(len(prompts))]


class InstructionTask:
    """Batches, loss and evaluation of the instruction task for the trial loop (sweeps/trial/train.py)."""

    metric_keys = ("loss", "perplexity", "routing_accuracy")
    num_labels = None

    def __init__(self, spec: SweepSpec, params: TrialParams, tokenizer, splits: tuple[str, ...] = ("validation",)):
        self.spec, self.params, self.tokenizer = spec, params, tokenizer
        d = spec.data
        self.data = chat.load_chats(d, spec.seed)
        self.encoded, self.chats, self.stats = {}, {}, {}
        for split in ("train", *splits):
            chats = getattr(self.data, split)
            if chats is None:
                raise ValueError(f"split {split!r} not available: {d.source} has no test split (set data.test)")
            self.encoded[split], self.chats[split], self.stats[split] = chat.encode_split(chats, tokenizer, d, split)
        self.rows = [{"input_ids": e.input_ids, "labels": e.labels} for e in self.encoded["train"]]
        self.scored = bool(self.data.categories)
        self.route_tokens = self._route_tokens(self.chats[splits[0]])

    # ---- training side, as the trial loop calls it
    def train_batches(self, rng: np.random.Generator, device: str, batches_of):
        rows = self.rows
        if self.params.packing:
            order = rng.permutation(len(rows))
            rows = chat.pack([self.encoded["train"][i] for i in order], self.spec.data.max_length)
        lengths = np.array([len(r["input_ids"]) for r in rows])
        for idx in batches_of(lengths, self.params.batch_size, rng, True):
            yield _pad_rows([rows[i] for i in idx], self.tokenizer.pad_token_id, device, self.params.packing)

    def loss(self, model, batch) -> tuple[torch.Tensor, int]:
        total, n = answer_loss(model, batch)
        return total / max(n, 1), int((batch["input_ids"] != self.tokenizer.pad_token_id).sum())

    # ---- evaluation
    def _route_tokens(self, chats: list[chat.Chat]) -> int:
        """Tokens a reference answer needs to name its category, plus slack (capped at max_new_tokens)."""
        need = 0
        for c in chats:
            match = re.search(self.spec.data.category_pattern, c.answer)
            if match:
                need = max(need, len(self.tokenizer(c.answer[:match.end()], add_special_tokens=False)["input_ids"]))
        return min(need + 3, self.spec.data.max_new_tokens) if need else self.spec.data.max_new_tokens

    def evaluate(self, model, device: str, bf16: bool, split: str = "validation") -> dict[str, float]:
        model.eval()
        encoded = self.encoded[split]
        loss_sum, n_tokens = 0.0, 0
        rows = [{"input_ids": e.input_ids, "labels": e.labels} for e in encoded]
        with torch.inference_mode():
            for start in range(0, len(rows), self.params.batch_size * 2):
                batch = _pad_rows(rows[start:start + self.params.batch_size * 2], self.tokenizer.pad_token_id,
                                  device, packed=False)
                with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
                    total, n = answer_loss(model, batch)
                loss_sum += float(total)
                n_tokens += n
        loss = loss_sum / max(n_tokens, 1)
        metrics = {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}
        if self.scored:
            metrics["routing_accuracy"] = self.routing_accuracy(model, device, split)
        return metrics

    def zero_shot(self, model, device: str, bf16: bool, base: Path | str, split: str = "validation",
                  generations: bool = False) -> tuple[dict[str, float], list[str]]:
        """The base's own figures on `split` with the adapter off, and its answers for the generations table.

        Shared by every trial and promotion on the same base, quantization and data through sweeps/trial/baseline.py; a
        hub model named without a revision may change under its name, so its figures are not kept.
        """
        qconfig = precision.quantization_config(self.params, device)
        # The split as the model sees it, with its categories: this covers the data, the seed's split, the
        # tokenizer and its chat template (files that content_hash, over the weights only, does not read).
        seen = [(e.input_ids, e.labels, e.prompt_ids, c.category)
                for e, c in zip(self.encoded[split], self.chats[split], strict=True)]
        tok = self.tokenizer
        parts = {"base": pretrained.content_hash(base), "revision": self.spec.model.revision, "device": str(device),
                 "bf16": bf16, "quantization": qconfig.to_dict() if qconfig else "none",
                 "eval_batch": self.params.batch_size, "split": split, "generations": generations,
                 "inputs": baseline.digest(seen), "special": [tok.pad_token_id, tok.eos_token_id],
                 "data_spec": self.spec.data.model_dump(mode="json")}

        def compute() -> dict:
            with model.disable_adapter():
                return {"metrics": self.evaluate(model, device, bf16, split),
                        "generations": self.generations(model, device, split) if generations else []}

        local = Path(str(base)).is_dir() or self.spec.model.revision is not None
        value = baseline.cached(parts, compute) if local else compute()
        return value["metrics"], value["generations"]

    def routing_accuracy(self, model, device: str, split: str) -> float:
        pairs = [(e, c) for e, c in zip(self.encoded[split], self.chats[split], strict=True) if c.category]
        texts = generate(model, self.tokenizer, [e.prompt_ids for e, _ in pairs], self.route_tokens, device)
        pattern = self.spec.data.category_pattern
        hits = [chat.extract_category(t, pattern) == c.category for t, (_, c) in zip(texts, pairs, strict=True)]
        return float(np.mean(hits))

    def generations(self, model, device: str, split: str = "validation") -> list[str]:
        n = self.spec.data.generation_examples
        prompts = [e.prompt_ids for e in self.encoded[split][:n]]
        return generate(model, self.tokenizer, prompts, self.spec.data.max_new_tokens, device) if prompts else []

    def table(self, before: list[str], after: list[str], split: str = "validation") -> dict:
        """MLflow table: one row per fixed held-out request, the base's answer next to the tuned one."""
        chats = self.chats[split][:len(after)]
        return {"columns": ["request", "category", "reference", "before", "after"],
                "data": [[c.request, c.category, c.answer, b, a] for c, b, a in zip(chats, before, after,
                                                                                     strict=True)]}

    # ---- what the adapter directory and the run record
    def save_extras(self, adapter_dir: Path) -> None:
        d = self.spec.data
        (adapter_dir / "chat.json").write_text(json.dumps({
            "system_prompt": d.system_prompt, "max_new_tokens": d.max_new_tokens,
            "category_pattern": d.category_pattern, "categories": self.data.categories}, indent=1))

    def info(self) -> dict:
        return {"train_examples": len(self.rows), "validation_examples": len(self.encoded["validation"]),
                "categories": self.data.categories, "data_fingerprint": self.data.fingerprint,
                "truncation": {split: s for split, s in self.stats.items()}, "dropped_rows": dict(self.data.dropped),
                "packing": self.params.packing}
