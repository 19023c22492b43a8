"""Keep bitsandbytes from fetching code from the Hugging Face Hub at import time.

On a CPU with AVX512-BF16, importing bitsandbytes (peft and transformers do it for us) calls
`kernels.get_kernel("kernels-community/quantization-bitsandbytes")`: a request to the Hub and, where the publisher
is trusted, a compiled kernel downloaded and loaded. That is a network call at run time and remote code, both of
which this project never allows. bitsandbytes already has a fallback for machines without the `kernels` package (its
own CPU path), so the hook below imports bitsandbytes with `kernels` hidden, and with the fallback's warning muted:
the missing kernel is our choice, not a fault. Other users of `kernels` (transformers' opt-in `use_kernels`) are
untouched: `kernels` is hidden only while bitsandbytes' own modules execute.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import sys

GUARDED = ("bitsandbytes",)
_MISSING = object()


class _HiddenKernelsLoader(importlib.abc.Loader):
    def __init__(self, real: importlib.abc.Loader):
        self.real = real

    def create_module(self, spec):
        return self.real.create_module(spec)

    def exec_module(self, module) -> None:
        saved = sys.modules.get("kernels", _MISSING)
        sys.modules["kernels"] = None  # `from kernels import ...` raises ImportError: bitsandbytes' fallback
        quiet = logging.getLogger(module.__name__)
        level, quiet.level = quiet.level, logging.ERROR  # its "Failed to load ... from kernels-community" warning
        muted = [logging.getLogger(f"{module.__name__}.backends.{b}.ops") for b in ("cpu", "mps")]
        levels = [m.level for m in muted]
        for m in muted:
            m.setLevel(logging.ERROR)
        try:
            self.real.exec_module(module)
        finally:
            quiet.level = level
            for m, lv in zip(muted, levels, strict=True):
                m.setLevel(lv)
            if saved is _MISSING:
                sys.modules.pop("kernels", None)
            else:
                sys.modules["kernels"] = saved


class HubKernelGuard(importlib.abc.MetaPathFinder):
    """A meta-path finder that wraps the loader of the named top-level packages (default: bitsandbytes)."""

    def __init__(self, names: tuple[str, ...] = GUARDED):
        self.names = names

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.names:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _HiddenKernelsLoader(spec.loader)
        return spec


def install(names: tuple[str, ...] = GUARDED) -> HubKernelGuard | None:
    """Put the guard first on sys.meta_path (once). A package already imported is past guarding: returns None."""
    for finder in sys.meta_path:
        if isinstance(finder, HubKernelGuard) and finder.names == names:
            return finder
    if any(n in sys.modules for n in names):
        return None
    guard = HubKernelGuard(names)
    sys.meta_path.insert(0, guard)
    return guard
