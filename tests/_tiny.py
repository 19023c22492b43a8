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
    # transformers 5 ignores `vocab_file=` here (a 5-token vocabulary: every word [UNK]); pass the vocabulary itself
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab())}, do_lower_case=True)
    assert tok("great")["input_ids"][1] != tok.unk_token_id, "tiny tokenizer maps known words to [UNK]"
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


CHAT_TEMPLATE = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
                 "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CORPUS = ["how do I reset my password", "the printer on floor two is jammed again", "please open a ticket for me",
          "my laptop will not boot after the update", "which drug helped with the pain", "thanks that fixed it"]


def write_bpe_tokenizer(path: Path, vocab_size: int = 300):
    """A byte-level BPE tokenizer (GPT-2 style, like SmolLM2's) trained on a few sentences, with a ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    path.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(path)
    return fast


def tiny_llama(path: Path, seed: int = 0, tie: bool = False) -> Path:
    """A 2-layer Llama (hidden 64, 4 query / 2 key-value heads) causal LM with its tokenizer, as safetensors.

    The weights are drawn wider than usual (std 0.2) so greedy decoding has clear winners: with near-uniform
    logits, float rounding differences between runtimes would flip tokens and hide real export bugs.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = write_bpe_tokenizer(path)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         rms_norm_eps=1e-5, rope_theta=10000.0, initializer_range=0.2, tie_word_embeddings=tie,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(path, safe_serialization=True)
    return path


def random_lora(model, task: str, target=("q_proj", "k_proj", "v_proj", "o_proj"), rank: int = 4, seed: int = 1,
                scale: float = 0.3, heads: tuple[str, ...] = ()):
    """Wrap `model` in a LoRA adapter whose B factors are random (PEFT starts B at zero, i.e. a no-op adapter)."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(target), modules_to_save=list(heads) or None,
                        task_type=TaskType.SEQ_CLS if task == "classification" else TaskType.CAUSAL_LM)
    peft_model = get_peft_model(model, config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name or ("modules_to_save" in name and param.dim() > 0):
                param.copy_(torch.randn(param.shape, generator=gen) * scale)
    return peft_model


TICKETS = {  # category -> (request words, the house-style answer the model must learn)
    "access": (["reset", "my", "password"], "Category: access\nUse the reset page."),
    "printer": (["the", "printer", "is", "jammed"], "Category: printer\nOpen the tray."),
    "laptop": (["my", "laptop", "will", "not", "boot"], "Category: laptop\nHold the power key."),
}


def toy_tickets(path: Path, n: int = 36, seed: int = 0, columns: bool = False) -> Path:
    """JSONL helpdesk chats (or prompt/response columns) whose category is given away by the request's words."""
    import json

    rng = random.Random(seed)
    lines = []
    for i in range(n):
        category = sorted(TICKETS)[i % len(TICKETS)]
        words, answer = TICKETS[category]
        request = " ".join(rng.sample(words, len(words)) + ["please"] * rng.randint(0, 2))
        row = ({"request": request, "answer": answer} if columns else
               {"messages": [{"role": "user", "content": request}, {"role": "assistant", "content": answer}]})
        lines.append(json.dumps({**row, "category": category}))
    path.write_text("\n".join(lines) + "\n")
    return path
