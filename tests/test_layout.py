"""House rules that keep the project navigable: the three sides as folders, which folder may import which framework,
and small modules (docs/architecture.md draws the picture these rules keep true)."""

import ast
import importlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "sweeps"

# framework -> the only folders of sweeps/ whose modules may import it (one reader finds every use in one place)
OWNERS = {
    "ray": {"driver/cluster"},
    "optuna": {"driver/study"},
    "mlflow": {"tracking"},
    "peft": {"trial/adapters"},
    "datasets": {"trial/data"},
    "bitsandbytes": {"trial/models"},
    "transformers": {"trial/models", "trial/adapters"},
    "pydantic": {"spec", "production/serving"},  # production/serving: FastAPI request bodies are pydantic models
    "yaml": {"spec"},
    "matplotlib": {"driver/promotion"},
    "typer": {"cli"},
    "rich": {"cli"},
    "fastapi": {"production/serving"},
    "uvicorn": {"production/serving"},
    "gguf": {"production/export"},  # transformers also reads GGUF (trial/models), but through its own import
    "llama_cpp": set(),  # only the tests run exported GGUF files; the package never needs llama.cpp
}
SOLE_OWNER = ("ray", "optuna", "mlflow", "peft")  # one folder each, holding nothing but that concern's code
SIDES = {"spec", "driver", "trial", "tracking", "production", "cli"}
# framework-free modules every side shares; mlmodel only keeps versions registered before the folders loadable;
# hub_guard keeps bitsandbytes from fetching a kernel from the Hub at import (installed by sweeps/__init__)
SHARED = {"__init__", "store", "faults", "bundled", "digest", "mlmodel", "hub_guard"}
# the trial code must run without a cluster, a study or a tracking server
FORBIDDEN_ON_TRIAL_SIDE = {"ray", "mlflow", "optuna"}
NOT_FROM_TRIAL_SIDE = ("sweeps.driver", "sweeps.tracking", "sweeps.production", "sweeps.cli", "sweeps.mlmodel")
MAX_LINES = 300


def _imports(path: Path) -> set[str]:
    """Every absolute import of a module (anywhere in it, lazy ones included), as the dotted name it imports from."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            if node.module == "sweeps":  # `from sweeps import store`: the module itself
                names |= {f"sweeps.{a.name}" for a in node.names}
    return names


def _modules() -> dict[str, set[str]]:
    """sweeps-relative path without .py ("trial/adapters/lora") -> imported names."""
    return {p.relative_to(PKG).with_suffix("").as_posix(): _imports(p) for p in sorted(PKG.rglob("*.py"))}


def _owned_by(module: str, folders: set[str]) -> bool:
    return any(module.startswith(f"{folder}/") for folder in folders)


def test_each_framework_is_imported_by_its_owner_folder_only():
    offenders = [
        f"sweeps/{mod}.py imports {fw} (owners: {', '.join(f'sweeps/{o}/' for o in sorted(OWNERS[fw])) or 'none'})"
        for mod, names in _modules().items()
        for fw in {n.split(".")[0] for n in names} & OWNERS.keys()
        if not _owned_by(mod, OWNERS[fw])
    ]
    assert offenders == []


def test_ray_optuna_mlflow_peft_have_one_folder_each():
    for fw in SOLE_OWNER:
        [folder] = OWNERS[fw]
        assert (PKG / folder).is_dir() and (PKG / folder / "__init__.py").is_file(), (fw, folder)
        # and none of them shares its folder with another of the four
        assert all(folder not in OWNERS[other] for other in SOLE_OWNER if other != fw), (fw, folder)


def test_trial_side_imports_neither_ray_nor_mlflow_nor_optuna():
    mods = {m: names for m, names in _modules().items() if m.startswith("trial/")}
    assert mods, "no sweeps/trial/ modules found"
    direct = {m: sorted({n.split(".")[0] for n in names} & FORBIDDEN_ON_TRIAL_SIDE) for m, names in mods.items()}
    assert {m: v for m, v in direct.items() if v} == {}
    # and not indirectly through the driver, the tracking store or the production side either
    indirect = {m: sorted(n for n in names if n.startswith(NOT_FROM_TRIAL_SIDE)) for m, names in mods.items()}
    assert {m: v for m, v in indirect.items() if v} == {}


def test_spec_imports_no_side():
    for mod, names in _modules().items():
        if mod.startswith("spec/"):
            assert not [n for n in names if n.startswith("sweeps.") and not n.startswith("sweeps.spec")], mod


def test_the_package_is_its_sides_and_a_few_shared_modules():
    top = {p.stem for p in PKG.glob("*.py")}
    assert top == SHARED, top ^ SHARED
    folders = {p.name for p in PKG.iterdir() if p.is_dir() and p.name not in ("__pycache__", "assets")}
    assert folders == SIDES, folders ^ SIDES
    missing = [p.relative_to(PKG).as_posix() for p in PKG.rglob("*") if p.is_dir() and p.name != "__pycache__"
               and "assets" not in p.parts and not (p / "__init__.py").is_file()]
    assert missing == []


def test_boundary_checker_catches_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    import ray.tune\n    from mlflow import MlflowClient\n    from sweeps import store\n")
    assert _imports(bad) == {"ray.tune", "mlflow", "sweeps", "sweeps.store"}
    assert _owned_by("driver/cluster/tune", OWNERS["ray"]) and not _owned_by("driver/runner", OWNERS["ray"])


def test_platform_holds_no_python():
    assert (ROOT / "platform").is_dir()
    assert list((ROOT / "platform").rglob("*.py")) == []


def test_import_platform_is_the_standard_library():
    mod = importlib.import_module("platform")
    assert Path(mod.__file__).parent != ROOT / "platform"
    assert hasattr(mod, "python_version") and mod.python_version() == ".".join(map(str, sys.version_info[:3]))


def test_layout_of_the_design_card():
    for name in ("pyproject.toml", "sweeps", "platform", "search_spaces", "tests", "mlruns", "scripts", "README.md"):
        assert (ROOT / name).exists(), name
    assert not (ROOT / "platform" / "__init__.py").exists()


def test_modules_stay_small():
    sizes = {p.relative_to(PKG).as_posix(): len(p.read_text().splitlines()) for p in PKG.rglob("*.py")}
    assert {k: v for k, v in sizes.items() if v > MAX_LINES} == {}


def test_no_module_shadows_the_standard_library():
    """A module named like a standard-library one (select.py, io.py, ...) misleads readers and tools."""
    clash = {p.relative_to(PKG).as_posix() for p in PKG.rglob("*.py")
             if p.stem in sys.stdlib_module_names and p.stem not in ("__init__",)}
    assert clash == set()
