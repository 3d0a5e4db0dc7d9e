"""safe_import and pickle_scan: a received bundle .zip is unpacked only when safe.

Each malicious zip is crafted with zipfile (and, for a lying size, by patching header bytes) and
must be refused with a message naming the entry, leaving nothing in or beside the destination.
The genuine bundle comes from the export fixtures of test_export.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import shutil
import stat
import struct
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

from pipeline import cli
from pipeline.export import unzip, verify
from pipeline.export.layout import MODEL_FILES, sha256
from pipeline.export.pickle_scan import check_torch_file, pickle_globals
from pipeline.export.safe_import import import_bundle
from pipeline.export.unzip import BundleImportError

TOP = "lgg_unet_bundle"


class Payload:
    """A custom class: pickling an instance records a GLOBAL to this module."""


class Shell:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def write_zip(path: Path, entries: list[tuple[str | zipfile.ZipInfo, bytes]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # "Duplicate name"
        warnings.simplefilter("ignore")
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in entries:
                zf.writestr(name, data)
    return path


def rezip(
    bundle: Path,
    path: Path,
    changes: dict[str, bytes | None] | None = None,
    rehash: bool = True,
) -> Path:
    """The bundle folder as a zip (top folder TOP), with files replaced (None: removed); the hashes
    of the files metadata.json lists recomputed if ``rehash``."""
    files = {p.relative_to(bundle).as_posix(): p.read_bytes() for p in bundle.rglob("*") if p.is_file()}
    files.update(changes or {})
    files = {name: data for name, data in files.items() if data is not None}
    if rehash:
        meta = json.loads(files["configs/metadata.json"])
        for name in MODEL_FILES:
            meta["model_files"][name]["sha256"] = hashlib.sha256(files[name]).hexdigest()
        for name in meta.get("scripts_files", {}):
            if name in files:
                meta["scripts_files"][name]["sha256"] = hashlib.sha256(files[name]).hexdigest()
        files["configs/metadata.json"] = json.dumps(meta).encode()
    return write_zip(path, [(f"{TOP}/{name}", data) for name, data in sorted(files.items())])


def patch_declared_size(path: Path, name: str, size: int) -> None:
    """Make the local and central headers of ``name`` declare ``size`` uncompressed bytes."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        offset, pos = zf.getinfo(name).header_offset, zf.start_dir
    struct.pack_into("<L", data, offset + 22, size)
    while data[pos : pos + 4] == b"PK\x01\x02":
        n, m, k = struct.unpack_from("<3H", data, pos + 28)
        if data[pos + 46 : pos + 46 + n] == name.encode():
            struct.pack_into("<L", data, pos + 24, size)
        pos += 46 + n + m + k
    path.write_bytes(bytes(data))


def refused(zip_path: Path, dest: Path, *needles: str) -> str:
    """Import must fail naming each needle, and leave the destination's folder as it was."""
    before = sorted(dest.parent.iterdir()) if dest.parent.exists() else None
    with pytest.raises(BundleImportError) as caught:
        import_bundle(zip_path, dest)
    message = str(caught.value)
    assert str(zip_path) in message and "python -m pipeline export" in message
    for needle in needles:
        assert needle in message, message
    assert not dest.exists()
    after = sorted(dest.parent.iterdir()) if dest.parent.exists() else None
    assert after == before  # no temporary folder left beside it
    return message


@pytest.fixture(scope="module")
def bundle(exported) -> Path:  # noqa: F811 (fixture imported from test_export)
    return exported[0]


def test_genuine_bundle_imports_and_verifies(exported, tmp_path, capsys):  # noqa: F811
    bundle, archive, _ = exported
    dest = tmp_path / "received"
    dest.mkdir()  # an empty folder may be the destination
    assert import_bundle(archive, dest) == dest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["received"]
    for name in (*MODEL_FILES, "configs/metadata.json", "configs/inference.json", "LICENSE"):
        assert sha256(dest / name) == sha256(bundle / name)
    with pytest.raises(FileExistsError, match="not empty"):
        import_bundle(archive, dest)
    assert cli.main(["import-bundle", str(archive), "--to", str(tmp_path / "cli")]) == 0
    capsys.readouterr()
    assert cli.main(["verify-bundle", str(archive)]) == 0
    assert "scripts/ is this checkout's inference code" in capsys.readouterr().out


@pytest.mark.parametrize(
    "name",
    ["/tmp/evil.txt", "\\evil.txt", "C:/evil.txt", "C:evil.txt", "../evil.txt", f"{TOP}/../../evil.txt"],
)
def test_absolute_and_traversal_paths_are_refused(tmp_path, name):
    zip_path = write_zip(tmp_path / "in" / "b.zip", [(f"{TOP}/LICENSE", b"x"), (name, b"pwned")])
    message = refused(zip_path, tmp_path / "out" / "dest", repr(name))
    assert ("absolute" in message) or ("'..'" in message) or ("plain relative" in message)
    assert not list(tmp_path.rglob("evil.txt"))


@pytest.mark.parametrize(
    "file_type, reason", [(stat.S_IFLNK, "symbolic link"), (stat.S_IFIFO, "not a regular file")]
)
def test_links_and_special_files_are_refused(tmp_path, file_type, reason):
    link = zipfile.ZipInfo(f"{TOP}/models/model.pt")
    link.external_attr = (file_type | 0o777) << 16
    zip_path = write_zip(tmp_path / "in" / "b.zip", [(f"{TOP}/LICENSE", b"x"), (link, b"/etc/passwd")])
    refused(zip_path, tmp_path / "dest", f"{TOP}/models/model.pt", reason)


@pytest.mark.parametrize("second", [f"{TOP}/LICENSE", f"{TOP}/license", f"{TOP}/LICENSE/inner"])
def test_duplicate_entries_and_file_folder_clashes_are_refused(tmp_path, second):
    zip_path = write_zip(tmp_path / "in" / "b.zip", [(f"{TOP}/LICENSE", b"one"), (second, b"two")])
    refused(zip_path, tmp_path / "dest", repr(second))


def test_a_file_larger_than_its_declared_size_is_refused_while_streaming(tmp_path):
    name = f"{TOP}/docs/README.md"
    zip_path = write_zip(tmp_path / "in" / "b.zip", [(name, bytes(16 << 20))])
    patch_declared_size(zip_path, name, 1000)
    with zipfile.ZipFile(zip_path) as zf:
        assert zf.getinfo(name).file_size == 1000  # the crafted header lies
    refused(zip_path, tmp_path / "dest", repr(name), "more than its declared 1000 bytes")


def test_zip_bomb_ratio_total_size_and_entry_count_limits(tmp_path, monkeypatch):
    name = f"{TOP}/models/model.onnx"
    bomb = write_zip(tmp_path / "in" / "bomb.zip", [(name, bytes(16 << 20))])
    refused(bomb, tmp_path / "dest", repr(name), f"ratio over {unzip.MAX_RATIO}")

    small = write_zip(tmp_path / "in" / "small.zip", [(f"{TOP}/a{i}", bytes(600)) for i in range(4)])
    monkeypatch.setattr(unzip, "MAX_TOTAL_BYTES", 1000)
    refused(small, tmp_path / "dest", f"'{TOP}/a1'", "declared total over 1000 bytes")
    monkeypatch.setattr(unzip, "MAX_MEMBERS", 3)
    refused(small, tmp_path / "dest", "4 entries, over the limit of 3")


@pytest.mark.parametrize("payload", ["custom class", "os.system"])
def test_model_pt_with_pickled_python_objects_is_refused_unloaded(bundle, tmp_path, payload):
    marker = tmp_path / "pwned"
    state = torch.load(bundle / "models" / "model.pt", weights_only=True)
    state["extra"] = Payload() if payload == "custom class" else Shell(marker)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    zip_path = rezip(bundle, tmp_path / "in" / "b.zip", {"models/model.pt": buffer.getvalue()})
    glob = "Payload" if payload == "custom class" else f"{os.name}.system"
    refused(zip_path, tmp_path / "dest", "models/model.pt", glob, "pickles Python objects other than tensors")
    assert not marker.exists()


def test_tampered_model_file_is_refused_before_anything_loads(bundle, tmp_path, monkeypatch):
    def must_not_load(_bundle):
        raise AssertionError("a model file was loaded before its sha256 was checked")

    for name in ("check_pickles", "check_expressions", "check_network", "check_onnx"):
        monkeypatch.setattr(verify, name, must_not_load)
    onnx = (bundle / "models" / "model.onnx").read_bytes() + b"\0"
    zip_path = rezip(bundle, tmp_path / "in" / "b.zip", {"models/model.onnx": onnx}, rehash=False)
    refused(zip_path, tmp_path / "dest", f"{TOP}/models/model.onnx: sha256 differs")


@pytest.mark.parametrize(
    "config, key, value",
    [
        ("inference.json", "network_def", "$__import__('pathlib').Path({marker!r}).touch()"),
        ("metadata.json", "note", "$import os"),
    ],
)
def test_config_code_is_not_run_by_verification(bundle, tmp_path, config, key, value):
    marker = tmp_path / "pwned"
    data = json.loads((bundle / "configs" / config).read_text())
    data[key] = value.format(marker=str(marker))
    changes = {f"configs/{config}": json.dumps(data).encode()}
    zip_path = rezip(bundle, tmp_path / "in" / "b.zip", changes)
    refused(zip_path, tmp_path / "dest", f"configs/{config}: {key}")
    assert not marker.exists()


def test_pickle_scan_sees_globals_of_every_protocol_and_passes_the_exported_models(bundle):
    class_ref = f"{__name__}.Payload"
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        assert class_ref in pickle_globals(pickle.dumps([Payload(), "x"], protocol=protocol))
    assert check_torch_file(bundle / "models" / "model.pt") == []
    assert check_torch_file(bundle / "models" / "model.ts", torchscript=True) == []
    assert "__torch__" in check_torch_file(bundle / "models" / "model.ts")[0]  # not weights only


SCRIPT = "scripts/pipeline/errors.py"
ADDED = "not listed in metadata.json (file added after export)"


@pytest.mark.parametrize(
    "change, name, reason",
    [
        ("added", "scripts/pipeline/inference/extra.py", ADDED),
        ("removed", "scripts/pipeline/inference/orientation.py", "listed in metadata.json but missing"),
        ("changed", SCRIPT, "sha256 differs from metadata.json (file changed after export)"),
        ("bytecode", "scripts/pipeline/__pycache__/errors.cpython-311.pyc", ADDED + "; not loaded. Python"),
    ],
)
def test_a_script_added_removed_or_changed_is_refused_by_name(bundle, tmp_path, change, name, reason):
    marker = tmp_path / "pwned"
    payload = f"import pathlib; pathlib.Path({str(marker)!r}).touch()\n".encode()
    data = None if change == "removed" else payload
    if change == "changed":
        data = (bundle / SCRIPT).read_bytes() + payload
    zip_path = rezip(bundle, tmp_path / "in" / "b.zip", {name: data}, rehash=False)
    refused(zip_path, tmp_path / "dest", f"{TOP}/{name}: {reason}")
    assert not marker.exists()
    # the same for the unpacked folder
    folder = tmp_path / "folder"
    shutil.copytree(bundle, folder)
    if data is None:
        (folder / name).unlink()
    else:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    problems = verify.verify_bundle(folder)
    assert [p for p in problems if p.startswith(f"{folder / name}: {reason}")], problems
    assert cli.main(["verify-bundle", str(folder)]) == 1


def test_a_real_bytecode_cache_is_refused_with_the_fix(bundle, tmp_path):
    import py_compile

    folder = tmp_path / "folder"
    shutil.copytree(bundle, folder)
    cached = py_compile.compile(str(folder / SCRIPT), doraise=True)  # what running the bundle leaves
    problems = verify.verify_bundle(folder)
    assert len(problems) == 1 and problems[0].startswith(f"{cached}: not listed in metadata.json"), problems
    assert "__pycache__ -exec rm -r {} +" in problems[0]
    shutil.rmtree(Path(cached).parent)
    assert verify.verify_bundle(folder) == []


def test_scripts_files_must_be_recorded_and_inside_scripts(bundle, tmp_path):
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    outside = dict(meta, scripts_files={**meta["scripts_files"], "configs/inference.json": {"sha256": "0"}})
    zip_path = rezip(
        bundle, tmp_path / "in" / "b.zip", {"configs/metadata.json": json.dumps(outside).encode()}
    )
    refused(
        zip_path, tmp_path / "dest", "scripts_files lists 'configs/inference.json', not a file under scripts/"
    )
    unlisted = {k: v for k, v in meta.items() if k != "scripts_files"}
    zip_path = rezip(
        bundle, tmp_path / "in" / "c.zip", {"configs/metadata.json": json.dumps(unlisted).encode()}
    )
    refused(zip_path, tmp_path / "dest", "no sha256 recorded for the files under scripts/")


@pytest.mark.parametrize(
    "config, key, value",
    [
        ("inference.json", "scripts", "$runpy.run_path({marker!r})"),
        ("inference.json", "dataset#_target_", "scripts.pipeline.inference.inputs.find_inputs"),
        ("inference.json", "initialize#0", "$@scripts.pipeline.errors.install() or open({marker!r}, 'w')"),
        ("train.json", "deterministic_transforms#0#reader", "$__import__('os').system('touch {marker}')"),
        ("train.json", "imports#4", "$import shutil"),
        ("evaluate.json", "eval_dir", "$open({marker!r}, 'w')"),
    ],
)
def test_code_that_export_does_not_write_is_refused_in_every_config(bundle, tmp_path, config, key, value):
    marker = tmp_path / "pwned"
    data = json.loads((bundle / "configs" / config).read_text())
    *path, last = key.split("#")
    node = data
    for part in path:
        node = node[int(part)] if isinstance(node, list) else node[part]
    node[int(last) if isinstance(node, list) else last] = value.format(marker=str(marker))
    zip_path = rezip(bundle, tmp_path / "in" / "b.zip", {f"configs/{config}": json.dumps(data).encode()})
    refused(zip_path, tmp_path / "dest", f"configs/{config}: {key} = ", "does not write")
    assert not marker.exists()


def test_the_code_export_writes_is_accepted(bundle):
    """Every code string of the exported configs is allowed, and the allow-list is not everything."""
    from pipeline.export.bundle_configs import allowed_code, code_strings

    allowed = allowed_code()
    for name in ("configs/inference.json", "configs/train.json", "configs/evaluate.json"):
        written = {value for _, value in code_strings(json.loads((bundle / name).read_text()))}
        assert written and written <= allowed[name], sorted(written - allowed[name])
    finders = [v for v in allowed["configs/inference.json"] if "find_inputs(@dataset_dir" in v]
    assert finders and all(v.startswith("$@scripts.pipeline.inference.workflow.") for v in finders)
    assert not [v for v in allowed["configs/inference.json"] if re.match(r"\$import (pipeline|scripts)", v)]


def test_hashes_prove_integrity_not_authorship_and_verify_says_what_differs(bundle, tmp_path, capsys):
    """A sender who changes a script and its sha256 in metadata.json passes the hash check:
    verify-bundle runs none of it and names the files that are not this checkout's code."""
    marker = tmp_path / "pwned"
    changed = (bundle / SCRIPT).read_bytes() + f"open({str(marker)!r}, 'w')\n".encode()
    zip_path = rezip(bundle, tmp_path / "in" / "b.zip", {SCRIPT: changed})
    assert cli.main(["verify-bundle", str(zip_path)]) == 0
    assert f"scripts/ differs from this checkout's code in {SCRIPT}" in capsys.readouterr().out
    assert not marker.exists()
