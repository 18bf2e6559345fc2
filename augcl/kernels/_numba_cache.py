"""Numba's on-disk cache of augcl's CPU kernels, keyed on the sources of all of them.

Numba keys a cached function on its own file's content only. A kernel compiles in the functions it calls from
other files (``frames_cpu._noisy_segment`` inlines ``noise_cpu.noise_row``; ``fft_cpu.noisy_mel`` calls
``_noisy_segment``), so when only such another file changed, the caller's cache still matched its unchanged file
and it ran the old code: after a ``git pull`` in an editable install, or an upgrade (pip removes the files it
installed, not the ``.nbi``/``.nbc`` files Numba wrote beside them in ``__pycache__``). Here every function
defined in this package is stamped with one hash of all the package's ``.py`` files: a change to any of them
recompiles every kernel once, then the cache serves them again.

Importing this module puts its locators first in Numba's list (each kernel module imports it before its first
``@njit(cache=True)``, where Numba picks a function's locator); a function outside this package gets Numba's own.
``NUMBA_CACHE_DIR`` keeps its meaning (:class:`UserDirLocator`), and ``NUMBA_CACHE_LOCATOR_CLASSES``, where set,
replaces the list, as it does for Numba's own locators.
"""
from __future__ import annotations

import hashlib
import os
import warnings

import numba
from numba.core import caching

_DIR = os.path.dirname(os.path.abspath(__file__))


def sources_stamp(folder: str = _DIR) -> str:
    """sha256 of the names and contents of the ``.py`` files in ``folder``, in name order."""
    h = hashlib.sha256()
    for name in sorted(n for n in os.listdir(folder) if n.endswith(".py")):
        with open(os.path.join(folder, name), "rb") as f:
            h.update(name.encode() + b"\0" + f.read() + b"\0")
    return h.hexdigest()


#: the stamp of every kernel, taken once, when the first kernel module is imported: the sources this process compiles
#: from (a file edited while it runs, before a later kernel module's import, must not stamp code compiled from the
#: modules already imported)
STAMP = sources_stamp()


class _KernelSources:
    """Mixin for a Numba source-file locator: only functions of this package, stamped with :data:`STAMP`."""

    def get_source_stamp(self):
        return STAMP

    @classmethod
    def from_function(cls, py_func, py_file):
        if os.path.dirname(os.path.abspath(py_file)) != _DIR:
            return None
        return super().from_function(py_func, py_file)


def _numba_locator(name: str):
    """Numba's locator class ``name`` (``_name`` in older Numbas), or None."""
    return getattr(caching, name, None) or getattr(caching, "_" + name, None)


def _ours(base):
    """Numba's locator ``base`` for this package's functions only, stamped with :data:`STAMP`."""
    name = base.__name__.lstrip("_").replace("CacheLocator", "Locator")
    return type(name, (_KernelSources, base), {"__doc__": f"{base.__name__} for augcl's kernels (:func:`_ours`).",
                                                   "__module__": __name__})


_BASES = [_numba_locator(n) for n in ("UserProvidedCacheLocator", "InTreeCacheLocator", "UserWideCacheLocator")]
#: one per Numba source-file locator, in Numba's order: under ``NUMBA_CACHE_DIR`` where it is set, in the package's
#: ``__pycache__`` where it is writable, else in the user's cache folder (empty where a Numba lacks one of them)
LOCATORS = tuple(_ours(base) for base in _BASES) if all(_BASES) else ()


def install() -> None:
    """Put :data:`LOCATORS` first in Numba's list of cache locators, in Numba's own order (idempotent). The list is
    ``CacheImpl._locator_classes`` (``_CacheImpl`` in older Numbas); where a Numba has neither, a warning says that
    the kernels' caches are keyed on their own files only."""
    impl = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl", None)
    classes = getattr(impl, "_locator_classes", None)
    if not isinstance(classes, list) or not LOCATORS:
        warnings.warn(f"numba {numba.__version__} lacks the cache locators augcl extends: its kernel caches are keyed "
                      "on each kernel's own file, so after a change to another kernel file clear them (delete "
                      "augcl/kernels/__pycache__/*.nbi)", RuntimeWarning, stacklevel=2)
        return
    for cls in reversed(LOCATORS):
        if cls not in classes:
            classes.insert(0, cls)


install()
