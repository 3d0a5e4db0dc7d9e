"""Import this bundle's ``scripts`` package from the folder this file is in.

``python -m pipeline export`` copies this file to the bundle's ``scripts/loader.py``;
configs/inference.json runs it first (its ``scripts`` item: ``runpy.run_path`` of this file under
``bundle_root``, then :func:`load`; importing this file does nothing) and reaches the bundle's
code through that item (``@scripts``), its components through ``_requires_: "@scripts"``. It
needs only the standard library.

Why not ``sys.path``: ``python -m monai.bundle run`` evaluates a config's ``$import`` lines
before anything else, and puts the bundle root on ``sys.path`` only in ``run()``, after
``initialize``, at position 1, behind the working directory, where a ``scripts`` folder of the
user's own would win. Loading the package from this file's folder does not depend on the working
directory or on ``sys.path``, and cannot pick up another copy.

A package ``scripts`` of another folder already imported in the process (a second bundle) is an
ImportError naming both folders: two bundles' ``scripts`` cannot share one process.

Sources only: the package and its subpackages are read from their ``.py`` files (the files whose
sha256 metadata.json records), never from a ``__pycache__`` ``.pyc`` or a sourceless ``.pyc``,
and no ``.pyc`` is written into the bundle, so running it leaves it as verified.
"""

import importlib.machinery
import importlib.util
import os
import sys

NAME = "scripts"
HERE = os.path.dirname(os.path.realpath(__file__))


class SourceOnly(importlib.machinery.SourceFileLoader):
    """Compiles the module's source each time: reads no bytecode cache and writes none."""

    def get_code(self, fullname):
        path = self.get_filename(fullname)
        return self.source_to_code(self.get_data(path), path)


def _source_finders() -> None:
    """The bundle's folders are searched for ``.py`` files only, loaded by :class:`SourceOnly`."""
    for folder, subfolders, _ in os.walk(HERE):
        subfolders[:] = [d for d in subfolders if d != "__pycache__"]
        finder = importlib.machinery.FileFinder(folder, (SourceOnly, importlib.machinery.SOURCE_SUFFIXES))
        sys.path_importer_cache[folder] = finder


def load():
    """The package ``scripts`` of this folder, imported once per process."""
    loaded = sys.modules.get(NAME)
    if loaded is not None:
        where = os.path.dirname(os.path.realpath(getattr(loaded, "__file__", None) or "(no file)"))
        if where == HERE:
            return loaded
        raise ImportError(
            f"a package {NAME!r} from {where} is already imported in this process, so this bundle's "
            f"own {HERE} cannot be: run this bundle in a Python process of its own"
        )
    _source_finders()
    init = os.path.join(HERE, "__init__.py")
    spec = importlib.util.spec_from_file_location(
        NAME, init, loader=SourceOnly(NAME, init), submodule_search_locations=[HERE]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[NAME] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        for key in [k for k in sys.modules if k == NAME or k.startswith(NAME + ".")]:
            del sys.modules[key]
        raise
    return module
