"""Tiny random-init models and a learnable toy data set, built inside the tests (no downloads)."""

from __future__ import annotations

import random
from pathlib import Path

WORDS = {
    "negative": ["awful", "terrible", "pain", "worse", "nausea"],
    "neutral": ["okay", "average", "mixed", "unsure", "moderate"],
    "positive": ["great", "excellent", "relief", "better", "love"],
}
FILLER = ["the", "drug", "took", "it", "for", "weeks", "and", "my", "doctor", "said", "was"]


def vocab() -> list[str]:
    words = sorted({w for ws in WORDS.values() for w in ws} | set(FILLER))
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]


def write_tokenizer(path: Path):
    from transformers import BertTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.txt").write_text("\n".join(vocab()) + "\n")
    tok = BertTokenizerFast(vocab_file=str(path / "vocab.txt"), do_lower_case=True)
    tok.save_pretrained(path)
    return tok


def tiny_bert(path: Path, num_labels: int = 3) -> Path:
    """A 2-layer BERT (hidden 32) for sequence classification, saved as safetensors with its tokenizer."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    tok = write_tokenizer(path)
    config = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=num_labels)
    BertForSequenceClassification(config).save_pretrained(path, safe_serialization=True)
    return path


def toy_reviews(path: Path, n: int = 90, seed: int = 0, imbalance: bool = True) -> Path:
    """CSV of short 'reviews' whose label is given away by a keyword: learnable in a few steps."""
    rng = random.Random(seed)
    labels = ["positive"] * (n // 2) + ["negative"] * (n // 3) if imbalance else ["positive", "negative"] * (n // 3)
    labels += ["neutral"] * (n - len(labels))
    rows = ["text,label"]
    for label in labels:
        words = rng.sample(FILLER, 4) + [rng.choice(WORDS[label]), rng.choice(WORDS[label])]
        rng.shuffle(words)
        rows.append(f"{' '.join(words)},{label}")
    path.write_text("\n".join(rows) + "\n")
    return path


def tiny_sweep_yaml(name: str, model: Path, train: Path, test: Path, epochs: int = 2, trials: int = 4,
                    concurrency: int = 2) -> str:
    """The 3-objective sweep spec the end-to-end and scale-out tests run on the tiny BERT."""
    return f"""# Run: sweep run {name}.yaml
name: {name}
task: classification
seed: 3
model: {{base: {model}}}
data: {{source: {train}, test: {test}, validation_fraction: 0.3, max_length: 16}}
params: {{epochs: {epochs}, batch_size: 8, learning_rate: 1e-2, bf16: "off"}}
search:
  sampler: random
  space:
    rank: [2, 4, 8]
    target: [attention, all-linear]
objectives:
  - {{metric: macro_f1, direction: maximize}}
  - {{metric: peak_memory_mb, direction: minimize}}
  - {{metric: trainable_params, direction: minimize}}
budget: {{trials: {trials}, concurrency: {concurrency}, cpus_per_trial: 1}}
"""
