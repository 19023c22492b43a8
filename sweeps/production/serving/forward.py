"""One batched forward pass of the serving engine, on the batcher's thread: rows already grouped by adapter, each
row routed through its own adapter (sweeps/trial/adapters/multi.py) in a single forward or generate call."""

from __future__ import annotations

import torch

from sweeps.trial.adapters import multi


def class_probabilities(model, tokenizer, texts: list[str], names: list[str], max_length: int, device: str
                        ) -> list[list[float]]:
    """Class probabilities of each text under its row's adapter (texts truncated to max_length tokens)."""
    enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt").to(device)
    logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                   **multi.route(model, names)).logits.float()
    return torch.softmax(logits, dim=-1).cpu().tolist()


def greedy(model, tokenizer, prompts: list[list[int]], max_new: list[int], names: list[str], device: str
           ) -> list[tuple[list[int], bool]]:
    """Greedy continuations of token prompts: (new tokens up to the first stop token, whether one was reached)."""
    width = max(len(seq) for seq in prompts)
    pad = tokenizer.pad_token_id
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, seq in enumerate(prompts):  # left padding: every prompt ends where generation starts
        ids[row, width - len(seq):] = torch.tensor(seq)
        mask[row, width - len(seq):] = 1
    out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max(max_new),
                         do_sample=False, pad_token_id=pad, **multi.route(model, names))
    eos = model.generation_config.eos_token_id
    stops = set(eos if isinstance(eos, list) else [eos]) - {None}
    rows = []
    for row, limit in enumerate(max_new):
        new = out[row, width:].tolist()[:limit]
        cut = next((i for i, t in enumerate(new) if t in stops), None)
        rows.append((new if cut is None else new[:cut], cut is not None))
    return rows
