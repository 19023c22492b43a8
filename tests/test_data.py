"""sweeps/trial/data: loading, cleaning, stratified splits, few-shot sampling, tokenization cache. No network."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import datasets
import pytest

from sweeps.spec import DataSpec
from sweeps.trial.data.labelled import TaskData, few_shot, load_classification
from sweeps.trial.data.reading import DataError
from sweeps.trial.data.tokenized import tokenize_splits, truncation_stats


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    # Keep datasets' arrow caches and our extracted/tokenized files inside the test's tmp dir.
    monkeypatch.setenv("SWEEPS_CACHE", str(tmp_path / "cache"))


def _rows(counts: dict[str, int]) -> list[dict]:
    rows = []
    for label, n in counts.items():
        rows += [{"text": f"{label} review number {i} " + "word " * (i % 7), "label": label}
                 for i in range(n)]
    return rows


def _write(path: Path, rows: list[dict]) -> Path:
    suffix = path.suffix
    if suffix in (".csv", ".tsv"):
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]), delimiter="\t" if suffix == ".tsv" else ",")
            writer.writeheader()
            writer.writerows(rows)
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif suffix == ".json":
        path.write_text(json.dumps(rows))
    elif suffix == ".parquet":
        datasets.Dataset.from_list(rows).to_parquet(str(path))
    return path


def _load(source, seed=0, **kw) -> TaskData:
    return load_classification(DataSpec(source=str(source), **kw), seed)


COUNTS = {"pos": 60, "neg": 30, "mid": 10}


# ---------------------------------------------------------------- loading and splitting


@pytest.mark.parametrize("ext", [".csv", ".tsv", ".jsonl", ".json", ".parquet"])
def test_each_format_loads_and_splits_stratified(tmp_path, ext):
    task = _load(_write(tmp_path / f"train{ext}", _rows(COUNTS)), validation_fraction=0.2)
    assert task.labels == ["mid", "neg", "pos"]  # sorted distinct training labels
    assert task.test is None
    assert len(task.train) + len(task.validation) == 100
    val = Counter(task.labels[i] for i in task.validation["label"])
    train = Counter(task.labels[i] for i in task.train["label"])
    assert val == {"pos": 12, "neg": 6, "mid": 2} and train == {"pos": 48, "neg": 24, "mid": 8}
    assert set(task.train["text"]).isdisjoint(task.validation["text"])
    assert task.train.column_names == ["text", "label"] and len(task.fingerprint) >= 16


def test_split_is_seeded(tmp_path):
    path = _write(tmp_path / "d.csv", _rows(COUNTS))
    a, b, c = _load(path, seed=1), _load(path, seed=1), _load(path, seed=2)
    assert list(a.validation["text"]) == list(b.validation["text"])
    assert a.fingerprint == b.fingerprint
    assert list(a.validation["text"]) != list(c.validation["text"])
    assert a.fingerprint != c.fingerprint
    assert _load(path, seed=1, validation_fraction=0.3).fingerprint != a.fingerprint


def test_fingerprint_follows_content(tmp_path):
    rows = _rows(COUNTS)
    a = _load(_write(tmp_path / "a.csv", rows))
    rows[0]["text"] = "changed"
    assert _load(_write(tmp_path / "b.csv", rows)).fingerprint != a.fingerprint


def test_int_labels_become_strings_and_explicit_order(tmp_path):
    rows = [{"sentence": f"s{i}", "y": i % 3} for i in range(30)]
    path = _write(tmp_path / "d.jsonl", rows)
    task = _load(path, text_column="sentence", label_column="y")
    assert task.labels == ["0", "1", "2"]
    task = _load(path, text_column="sentence", label_column="y", labels=["2", "1", "0"])
    assert task.labels == ["2", "1", "0"]
    first = task.train[0]
    assert task.labels[first["label"]] == str(int(first["text"][1:]) % 3)


def test_empty_texts_dropped_and_counted(tmp_path):
    rows = _rows({"a": 5, "NA": 5}) + [{"text": "", "label": "a"}, {"text": "   ", "label": "NA"}]
    task = _load(_write(tmp_path / "d.csv", rows))
    assert task.labels == ["NA", "a"]  # "NA" is a label, not a missing value
    assert len(task.train) + len(task.validation) == 10
    assert sum(task.dropped.values()) == 2


def test_test_file_and_unseen_test_label(tmp_path):
    train = _write(tmp_path / "train.csv", _rows(COUNTS))
    task = _load(train, test=str(_write(tmp_path / "test.csv", _rows({"pos": 4, "neg": 2}))))
    assert len(task.test) == 6 and task.test.features["label"].names == task.labels
    with pytest.raises(DataError, match="surprise"):
        _load(train, test=str(_write(tmp_path / "t2.csv", _rows({"pos": 4, "surprise": 1}))))


def test_local_dataset_folder_like_a_hub_id(tmp_path):
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    _write(folder / "train.csv", _rows(COUNTS))
    _write(folder / "test.csv", _rows({"pos": 3, "neg": 3, "mid": 3}))
    task = _load(folder)
    assert len(task.train) + len(task.validation) == 100 and len(task.test) == 9
    assert len(_load(folder, test="test").test) == 9
    with pytest.raises(DataError, match="nosuchsplit"):
        _load(folder, test="nosuchsplit")


# ---------------------------------------------------------------- errors


def test_file_not_found(tmp_path):
    with pytest.raises(DataError, match="missing.csv"):
        _load(tmp_path / "missing.csv")


def test_unknown_extension(tmp_path):
    path = tmp_path / "d.txt"
    path.write_text("text,label\na,b\n")
    with pytest.raises(DataError, match=r"\.txt"):
        _load(path)


def test_empty_file_and_header_only(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="empty"):
        _load(tmp_path / "empty.csv")
    (tmp_path / "header.csv").write_text("text,label\n")
    with pytest.raises(DataError, match="no rows"):
        _load(tmp_path / "header.csv")


@pytest.mark.parametrize("column", ["text_column", "label_column"])
def test_missing_column_lists_existing(tmp_path, column):
    path = _write(tmp_path / "d.csv", _rows(COUNTS))
    with pytest.raises(DataError) as err:
        _load(path, **{column: "nope"})
    assert "'nope'" in str(err.value) and "text" in str(err.value) and "label" in str(err.value)


def test_one_class(tmp_path):
    with pytest.raises(DataError, match="only one class.*'pos'"):
        _load(_write(tmp_path / "d.csv", _rows({"pos": 10})))


def test_singleton_class_cannot_be_stratified(tmp_path):
    with pytest.raises(DataError, match="lonely"):
        _load(_write(tmp_path / "d.csv", _rows({"pos": 10, "lonely": 1})))


def test_label_outside_explicit_labels(tmp_path):
    with pytest.raises(DataError, match="mid"):
        _load(_write(tmp_path / "d.csv", _rows(COUNTS)), labels=["pos", "neg"])


def test_other_labels_drop_keeps_listed_classes_in_train_and_test(tmp_path):
    """A many-class column cut to its commonest classes: unlisted rows leave train and test, counted, and the data
    digest differs from the same file taken whole."""
    train = _write(tmp_path / "d.csv", _rows(COUNTS))
    test = str(_write(tmp_path / "t.csv", _rows({"pos": 3, "mid": 2, "neg": 1})))
    task = _load(train, test=test, labels=["pos", "neg"], other_labels="drop")
    assert task.labels == ["pos", "neg"]
    assert len(task.train) + len(task.validation) == 90 and len(task.test) == 4
    assert task.dropped == {"train.unlisted_label": 10, "test.unlisted_label": 2}
    assert task.fingerprint != _load(train, test=test, labels=["pos", "neg", "mid"]).fingerprint
    with pytest.raises(DataError, match="no row has one of data.labels"):
        _load(train, labels=["x", "y"], other_labels="drop")


# ---------------------------------------------------------------- few-shot


def test_few_shot_counts_seeded_and_ordered(tmp_path):
    task = _load(_write(tmp_path / "d.csv", _rows(COUNTS)), validation_fraction=0.2)
    shot = few_shot(task.train, k=9, seed=3)
    assert Counter(shot["label"]) == {0: 8, 1: 9, 2: 9}  # "mid" has only 8 training examples: all kept
    assert list(shot["text"]) == list(few_shot(task.train, k=9, seed=3)["text"])
    assert list(shot["text"]) != list(few_shot(task.train, k=9, seed=4)["text"])
    order = {t: i for i, t in enumerate(task.train["text"])}
    positions = [order[t] for t in shot["text"]]
    assert positions == sorted(positions)  # original order kept
    with pytest.raises(DataError):
        few_shot(task.train, k=0, seed=0)


# ---------------------------------------------------------------- tokenization


def _tiny_tokenizer(texts):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "[PAD]": 1, "[CLS]": 2, "[SEP]": 3}
    for word in sorted({w for t in texts for w in t.split()}):
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", name_or_path="tiny-test")


class _Counting:
    """Delegates to a tokenizer and counts encode calls."""

    def __init__(self, tok):
        self._tok, self.calls = tok, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self._tok(*args, **kwargs)

    def __len__(self):
        return len(self._tok)

    def __getattr__(self, name):
        return getattr(self._tok, name)


def test_tokenize_cache_hit_truncation_and_columns(tmp_path):
    task = _load(_write(tmp_path / "train.csv", _rows(COUNTS)),
                 test=str(_write(tmp_path / "test.csv", _rows({"pos": 3, "neg": 3}))))
    tok = _Counting(_tiny_tokenizer(list(task.train["text"]) + list(task.validation["text"])))
    max_length = 8  # "<label> review number <i>" + CLS/SEP = 6 tokens; + i % 7 "word"s: some exceed 8
    out = tokenize_splits(task, tok, max_length, cache_root=tmp_path / "c")
    assert set(out) == {"train", "validation", "test"} and tok.calls > 0
    train = out["train"]
    assert train.column_names == ["input_ids", "attention_mask", "labels"]
    lengths = [len(x) for x in train["input_ids"]]
    assert max(lengths) == max_length and min(lengths) == 6  # truncated, not padded
    assert list(train["labels"]) == list(task.train["label"])
    expected = sum(len(t.split()) + 2 > max_length for t in task.train["text"])
    stats = truncation_stats(task, tok, max_length, cache_root=tmp_path / "c")
    assert expected > 0 and stats["train"]["truncated"] == expected

    calls = tok.calls
    again = tokenize_splits(task, tok, max_length, cache_root=tmp_path / "c")
    assert tok.calls == calls  # loaded from disk, not re-tokenized
    assert list(again["validation"]["input_ids"]) == list(out["validation"]["input_ids"])
    entries = list((tmp_path / "c" / "tokenized").iterdir())
    assert len(entries) == 1 and not entries[0].name.startswith(".tmp")

    tokenize_splits(task, tok, max_length + 4, cache_root=tmp_path / "c")  # another key: tokenizes again
    assert tok.calls > calls


def test_tokenize_default_cache_root_is_store_cache(tmp_path):
    task = _load(_write(tmp_path / "d.csv", _rows({"a": 4, "b": 4})))
    tokenize_splits(task, _tiny_tokenizer(task.train["text"]), 16)
    assert len(list((tmp_path / "cache" / "tokenized").iterdir())) == 1


def test_head_tail_truncation_keeps_the_end(tmp_path, monkeypatch):
    monkeypatch.setenv("SWEEPS_CACHE", str(tmp_path / "cache"))
    from transformers import BertTokenizerFast

    words = [f"w{i}" for i in range(40)]
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *words])})
    rows = ["text,label"] + [f"{' '.join(words)},{'a' if i % 2 else 'b'}" for i in range(20)]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    task = load_classification(DataSpec(source=str(tmp_path / "d.csv"), validation_fraction=0.5), 0)
    head = tokenize_splits(task, tok, 18, truncation="head")["train"][0]["input_ids"]
    both = tokenize_splits(task, tok, 18, truncation="head_tail")["train"][0]["input_ids"]
    w = tok.convert_tokens_to_ids
    assert tok.unk_token_id not in head + both  # every word is in the vocabulary
    assert len(head) == len(both) == 18
    assert head[1:-1] == [w(x) for x in words[:16]]
    assert both[1:-1] == [w(x) for x in words[:4] + words[-12:]]  # first quarter + last three quarters
    assert both[0] == tok.cls_token_id and both[-1] == tok.sep_token_id
