"""What the pickles inside a torch file would import, read without unpickling anything.

``torch.save`` and TorchScript files are zip archives whose ``*.pkl`` members are pickles.
Unpickling calls whatever a pickle names with a GLOBAL opcode (``os system`` runs a shell
command), so these members are walked opcode by opcode with :mod:`pickletools` and every global
is compared with an allow-list:

- weights (``model.pt``): ordered dicts, storages and the tensor/parameter rebuild functions, which
  is what ``torch.load(weights_only=True)`` needs for a ``state_dict``;
- TorchScript (``model.ts``): in addition the ``__torch__.*`` classes and ``torch.jit._pickle``
  helpers, which TorchScript's own (C++) unpickler resolves to compiled code, never to Python
  imports.

A global that cannot be told statically (a ``STACK_GLOBAL`` fed by computed strings, a copyreg
extension code) counts as outside the allow-list.
"""

from __future__ import annotations

import pickletools
import re
import zipfile
from pathlib import Path

WEIGHT_GLOBALS = frozenset(
    {
        "collections.OrderedDict",
        "torch._utils._rebuild_tensor_v2",
        "torch._utils._rebuild_parameter",
        "torch._utils._rebuild_parameter_with_state",
    }
)
STORAGE = re.compile(r"^torch\.[A-Z][A-Za-z0-9]*Storage$")  # torch.FloatStorage, torch.UntypedStorage
TORCHSCRIPT_PREFIXES = ("__torch__.", "torch.jit._pickle.")
MAX_PICKLE_BYTES = 64 << 20  # a state_dict's pickle holds names and offsets; tensor data is elsewhere
_STRINGS = {
    "SHORT_BINUNICODE",
    "BINUNICODE",
    "BINUNICODE8",
    "UNICODE",
    "STRING",
    "BINSTRING",
    "SHORT_BINSTRING",
}
_MEMO_PUT = {"PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"}
_MEMO_GET = {"GET", "BINGET", "LONG_BINGET"}


def pickle_globals(data: bytes) -> list[str]:
    """``module.name`` of every global the pickle references ("?" where it cannot be told).

    Raises:
        ValueError: the bytes are not a well-formed pickle.
    """
    found: list[str] = []
    memo: dict[int, str | None] = {}
    last: list[str | None] = [None, None]  # values of the last two stack pushes, where known
    for opcode, arg, _ in pickletools.genops(data):
        name = opcode.name
        if name in ("GLOBAL", "INST"):
            found.append(str(arg).replace(" ", ".", 1))
        elif name == "STACK_GLOBAL":
            module, attr = last
            found.append(f"{module}.{attr}" if module and attr else "?")
        elif name in ("EXT1", "EXT2", "EXT4"):
            found.append(f"? (copyreg extension {arg})")
        if name in _MEMO_PUT:  # the stack is unchanged
            memo[len(memo) if arg is None else int(arg)] = last[1]
            continue
        pushed = str(arg) if name in _STRINGS else memo.get(int(arg)) if name in _MEMO_GET else None
        last = [last[1], pushed]
    return found


def allowed(name: str, torchscript: bool = False) -> bool:
    """Whether the global ``name`` is on the allow-list (see the module docstring)."""
    if name in WEIGHT_GLOBALS or STORAGE.match(name):
        return True
    return torchscript and name.startswith(TORCHSCRIPT_PREFIXES)


def check_torch_file(path: str | Path, torchscript: bool = False) -> list[str]:
    """Problems of a torch file, each naming it: not zip-serialized, or globals outside the allow-list.

    Nothing is unpickled; an empty list means loading it cannot import or call other Python code.
    """
    path = Path(path)
    kind = "TorchScript" if torchscript else "weights"
    advice = "it could run code when loaded; it was not loaded"
    try:
        with zipfile.ZipFile(path) as archive:
            members = [i for i in archive.infolist() if i.filename.endswith(".pkl")]
            if not any(i.filename.endswith("/data.pkl") for i in members):
                return [f"{path}: not a zip-serialized torch {kind} file (no data.pkl); it was not loaded"]
            problems = []
            for info in members:
                if info.file_size > MAX_PICKLE_BYTES:
                    problems.append(
                        f"{path}: {info.filename} is {info.file_size} bytes, over {MAX_PICKLE_BYTES}"
                    )
                    continue
                try:
                    names = pickle_globals(archive.read(info))
                except ValueError as error:
                    problems.append(f"{path}: {info.filename} is not a readable pickle ({error}); {advice}")
                    continue
                refused = sorted({n for n in names if not allowed(n, torchscript)})
                if refused:
                    problems.append(
                        f"{path}: {info.filename} pickles Python objects other than tensors "
                        f"(globals {', '.join(refused[:5])}); {advice}"
                    )
            return problems
    except (zipfile.BadZipFile, OSError) as error:
        return [f"{path}: not a zip-serialized torch {kind} file ({error}); it was not loaded"]
