"""House rules that keep the project navigable: layout, and which module may import which framework."""

import ast
import importlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "sweeps"

# framework -> the only modules of sweeps/ allowed to import it (one reader finds every use in one place)
OWNERS = {
    "ray": {"execute"},
    "mlflow": {"track", "track_registry", "mlmodel"},  # track_registry: Tracker's registry half; mlmodel: pyfunc
    "optuna": {"search"},
    "datasets": {"data"},
    "pydantic": {"spec", "params", "serve"},  # serve: FastAPI request bodies are pydantic models
    "yaml": {"spec"},
    "peft": {"adapters"},
    "bitsandbytes": {"models"},
    "transformers": {"models", "adapters", "trial", "data"},
    "matplotlib": {"plot"},
    "typer": {"cli"},
    "fastapi": {"serve"},
    "uvicorn": {"serve"},
    "gguf": {"gguf_export"},  # transformers also reads GGUF (models.resolve_base), but through its own import
    "llama_cpp": set(),  # only the tests run exported GGUF files; the package never needs llama.cpp
}
# the trial code must run without a cluster or a tracking server
TRIAL_SIDE = {"trial", "classify", "instruct", "chat", "models", "adapters", "memory", "data", "worker", "reuse",
              "prefix", "probe", "crossval"}
FORBIDDEN_ON_TRIAL_SIDE = {"ray", "mlflow", "optuna"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _modules() -> dict[str, set[str]]:
    return {p.stem: _imports(p) for p in PKG.glob("*.py")}


def test_each_framework_is_imported_by_its_owner_only():
    offenders = [
        f"sweeps/{mod}.py imports {fw} (owners: {', '.join(sorted(OWNERS[fw]))})"
        for mod, names in _modules().items()
        for fw in names & OWNERS.keys()
        if mod not in OWNERS[fw]
    ]
    assert offenders == []


def test_trial_code_imports_neither_ray_nor_mlflow_nor_optuna():
    mods = _modules()
    bad = {m: sorted(mods[m] & FORBIDDEN_ON_TRIAL_SIDE) for m in TRIAL_SIDE if m in mods}
    assert all(not v for v in bad.values()), bad
    # and not indirectly through another sweeps module either
    for mod in TRIAL_SIDE & mods.keys():
        src = (PKG / f"{mod}.py").read_text()
        for other in ("execute", "track", "search", "runner", "registry", "results"):
            assert f"sweeps.{other}" not in src and f"from sweeps import {other}" not in src, (mod, other)


def test_boundary_checker_catches_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    import ray.tune\n    from mlflow import MlflowClient\n")
    assert _imports(bad) == {"ray", "mlflow"}


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
    sizes = {p.name: len(p.read_text().splitlines()) for p in PKG.glob("*.py")}
    assert {k: v for k, v in sizes.items() if v > 420} == {}
