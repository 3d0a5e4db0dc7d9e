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
"""

import importlib.util
import os
import sys

NAME = "scripts"
HERE = os.path.dirname(os.path.realpath(__file__))


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
    spec = importlib.util.spec_from_file_location(
        NAME, os.path.join(HERE, "__init__.py"), submodule_search_locations=[HERE]
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
