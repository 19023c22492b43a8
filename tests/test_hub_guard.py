"""bitsandbytes must not fetch a kernel from the Hugging Face Hub when it is imported (sweeps/hub_guard.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from sweeps import hub_guard

FAKE_KERNELS = textwrap.dedent("""
    import sys, types
    calls = []
    kernels = types.ModuleType("kernels")
    def get_kernel(*args, **kwargs):
        calls.append(args)
        raise RuntimeError("fetched from the hub")
    kernels.get_kernel = get_kernel
    sys.modules["kernels"] = kernels
""")


def test_a_guarded_package_runs_with_kernels_hidden_and_kernels_comes_back(tmp_path, monkeypatch):
    pkg = tmp_path / "fakebnb"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent("""
        try:
            from kernels import get_kernel
            SEEN = "kernels"
        except ImportError:
            SEEN = "hidden"
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    fake = type(sys)("kernels")
    fake.get_kernel = lambda *a, **k: None
    monkeypatch.setitem(sys.modules, "kernels", fake)
    guard = hub_guard.install(("fakebnb",))
    try:
        import fakebnb

        assert fakebnb.SEEN == "hidden"
        assert sys.modules["kernels"] is fake  # restored for everybody else
        from kernels import get_kernel  # noqa: F401  (still importable after the guarded import)
    finally:
        sys.meta_path.remove(guard)
        sys.modules.pop("fakebnb", None)


def test_install_is_idempotent_and_leaves_an_imported_package_alone(monkeypatch):
    monkeypatch.setitem(sys.modules, "already_there", type(sys)("already_there"))
    assert hub_guard.install(("already_there",)) is None
    first = hub_guard.install(("not_yet_imported",))
    try:
        assert hub_guard.install(("not_yet_imported",)) is first
    finally:
        sys.meta_path.remove(first)


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", FAKE_KERNELS + textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


def test_importing_sweeps_then_bitsandbytes_asks_the_hub_for_nothing():
    guarded = _run("""
        import sweeps, bitsandbytes
        print(len(calls), sys.modules.get("kernels") is kernels)
    """)
    assert guarded == "0 True"
    # The control: where bitsandbytes would fetch (a CPU with AVX512-BF16), without the guard it does.
    control = _run("""
        import bitsandbytes
        from bitsandbytes.functional import has_avx512bf16
        print(len(calls), bool(has_avx512bf16()))
    """)
    n_calls, fetches_here = control.split()
    assert n_calls == ("1" if fetches_here == "True" else "0")
