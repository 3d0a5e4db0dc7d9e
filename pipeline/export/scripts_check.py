"""The bundle's ``scripts/``: every file listed in metadata.json with its sha256, and how it
compares with this checkout's code.

:func:`check_scripts` (part of verification, before anything is loaded): each regular file under
``scripts/`` must be listed in ``scripts_files`` and match its sha256, each listed file must be
there, and links or special files are refused; ``__pycache__`` files are refused too (Python runs
a cached ``.pyc`` instead of its verified source; the bundle's loader neither reads nor writes
them, a plain ``import scripts`` would), with the fix.

:func:`code_note` (information printed by verify-bundle): whether ``scripts/`` is exactly this
checkout's code vendored the same way, or which files differ (a bundle exported from another
version of the repository).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from pipeline.export.layout import SCRIPTS, sha256

PYCACHE_FIX = (
    "Python writes __pycache__ folders when scripts/ is imported other than by scripts/loader.py: "
    "delete them (find {root} -name __pycache__ -exec rm -r {{}} +) or verify the .zip"
)


def _script_entries(root: Path) -> tuple[set[str], list[str]]:
    """Bundle paths of the regular files under ``root``; problems for links and special files."""
    files, problems = set(), []
    for folder, subfolders, names in os.walk(root):
        for name in [*subfolders, *names]:
            path = Path(folder) / name
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                problems.append(f"{path}: a link under {SCRIPTS}/; export writes none; not loaded")
            elif stat.S_ISREG(mode):
                files.add(path.relative_to(root.parent).as_posix())
            elif not stat.S_ISDIR(mode):
                problems.append(f"{path}: not a regular file; not loaded")
    return files, problems


def check_scripts(bundle: Path, meta: dict) -> list[str]:
    """Every file under scripts/ is listed in metadata.json's ``scripts_files`` with its sha256, and
    every listed one is there, unchanged."""
    meta_file = bundle / "configs" / "metadata.json"
    recorded = meta.get("scripts_files")
    if not isinstance(recorded, dict) or not recorded:
        return [f"{meta_file}: no sha256 recorded for the files under {SCRIPTS}/ (scripts_files); not loaded"]
    present, problems = _script_entries(bundle / SCRIPTS)
    for name in sorted(recorded):
        if not name.startswith(f"{SCRIPTS}/") or ".." in name.split("/") or "\\" in name:
            problems.append(f"{meta_file}: scripts_files lists {name!r}, not a file under {SCRIPTS}/")
        elif name not in present:
            problems.append(f"{bundle / name}: listed in metadata.json but missing (removed after export)")
        elif sha256(bundle / name) != (recorded[name] or {}).get("sha256"):
            problems.append(
                f"{bundle / name}: sha256 differs from metadata.json (file changed after export); not loaded"
            )
    for name in sorted(present - set(recorded)):
        hint = f". {PYCACHE_FIX.format(root=bundle / SCRIPTS)}" if "/__pycache__/" in name else ""
        problems.append(
            f"{bundle / name}: not listed in metadata.json (file added after export); not loaded{hint}"
        )
    return problems


def scripts_differences(bundle: Path) -> list[str]:
    """The files of the bundle's scripts/ that differ from this checkout's code vendored the same
    way (absent here, or another version): information for the receiver, not a problem."""
    from pipeline.export.vendor import LOADER, ROOT, rewrite_source

    loader = bundle / SCRIPTS / "loader.py"
    differ = [] if loader.read_text() == LOADER.read_text() else [f"{SCRIPTS}/loader.py"]
    for path in sorted((bundle / SCRIPTS).rglob("*.py")):
        relative = path.relative_to(bundle / SCRIPTS)
        if relative.as_posix() in ("__init__.py", "loader.py"):
            continue
        mine = ROOT / relative
        name = ".".join(relative.with_suffix("").parts).removesuffix(".__init__")
        try:
            ours = rewrite_source(mine.read_text(encoding="utf-8"), name) if mine.is_file() else None
            same = ours == path.read_text()
        except (SyntaxError, ValueError, UnicodeDecodeError):
            same = False
        if not same:
            differ.append(f"{SCRIPTS}/{relative.as_posix()}")
    return differ


def code_note(bundle: Path) -> str:
    differ = scripts_differences(bundle)
    if not differ:
        return f"{SCRIPTS}/ is this checkout's inference code"
    listed = ", ".join(differ[:5]) + (f" and {len(differ) - 5} more" if len(differ) > 5 else "")
    return f"{SCRIPTS}/ differs from this checkout's code in {listed} (exported from another version)"
