"""`python -m pipeline verify-bundle DIR`: check an exported bundle offline.

- ``configs/metadata.json`` against the metadata schema shipped in this repository
  (bundle/schema/meta_schema.json) with ``monai.bundle.verify_metadata``: the schema file exists at
  ``filepath``, so MONAI does not download the URL named in the metadata;
- the TorchScript network (``models/model.ts``) with ``monai.bundle.verify_net_in_out`` (input
  and output channels and dtype from ``network_data_format``), and that it holds the weights of
  ``models/model.pt``, which inference loads;
- the ONNX model against the TorchScript one on the same random input (onnxruntime, 1e-4);
- the sha256 of every model file against ``model_files`` in the metadata, and of every file under
  ``scripts/`` against ``scripts_files``: a file added, removed or changed there is refused, by name.

Nothing in the bundle is loaded or evaluated before it is checked: the sha256 hashes come first
(a model file or script that changed after export is not loaded); then the pickles of ``model.pt``
and ``model.ts`` are read opcode by opcode (:mod:`pipeline.export.pickle_scan`) and ``model.pt``
is loaded weights-only; and the ``$`` expressions and ``_target_`` components of the configs
(which MONAI runs as Python) must be those ``python -m pipeline export`` writes
(:func:`pipeline.export.bundle_configs.allowed_code`). The bundle's own code (``scripts/``) is
never imported by verification: the network is checked through its TorchScript file.

The hashes prove that the bundle is as its metadata.json describes it, not who wrote it: the code
in ``scripts/`` runs when the bundle runs, so run only bundles from a sender you trust.

``DIR`` may also be a bundle .zip: it is unpacked safely into a temporary folder with
:func:`pipeline.export.unzip.extract`, then verified.

Exit code 0 when everything holds, 1 otherwise; each failure names its file.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from pipeline.export.bundle_configs import allowed_code, code_strings
from pipeline.export.layout import MODEL_FILES, REQUIRED_FILES, SCHEMA, sha256
from pipeline.export.scripts_check import check_scripts, code_note

logger = logging.getLogger(__name__)

ONNX_TOLERANCE = 1e-4


def _first_line(error: Exception) -> str:
    return f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0][:300]}"


def check_metadata(bundle: Path, schema: Path = SCHEMA) -> list[str]:
    from monai.bundle import verify_metadata

    meta = bundle / "configs" / "metadata.json"
    if not schema.is_file():  # verify_metadata would try to download it
        return [f"{schema}: the metadata schema is missing from this checkout"]
    try:
        verify_metadata(meta_file=str(meta), filepath=str(schema))
    except Exception as error:
        return [f"{meta}: does not follow {schema.name}: {_first_line(error)}"]
    return []


def check_network(bundle: Path) -> list[str]:
    """model.ts has the inputs and outputs of network_data_format and the weights of model.pt."""
    import tempfile

    import torch
    from monai.bundle import verify_net_in_out

    script = bundle / "models" / "model.ts"
    with tempfile.TemporaryDirectory() as tmp:  # the bundle's inference.json builds its network from scripts/
        config = Path(tmp) / "network.json"
        loader = f"$torch.jit.load({str(script)!r}, map_location='cpu')"
        config.write_text(json.dumps({"network_def": loader}))
        try:
            verify_net_in_out(
                net_id="network_def",
                meta_file=str(bundle / "configs" / "metadata.json"),
                config_file=str(config),
                device="cpu",
            )
        except Exception as error:
            return [f"{script}: {_first_line(error)}"]
    scripted = torch.jit.load(str(script), map_location="cpu").state_dict()
    weights = torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True)
    differ = sorted(k for k in set(scripted) | set(weights) if k not in scripted or k not in weights)
    differ += sorted(k for k in set(scripted) & set(weights) if not torch.equal(scripted[k], weights[k]))
    if differ:
        listed = ", ".join(differ[:3])
        return [f"{script}: does not hold the weights of models/model.pt (differs in {listed})"]
    return []


def check_onnx(bundle: Path) -> list[str]:
    import numpy as np
    import onnxruntime
    import torch

    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    size = int(meta.get("image_size", 256))
    channels = int(meta["network_data_format"]["inputs"]["image"]["num_channels"])
    x = torch.rand(2, channels, size, size, generator=torch.Generator().manual_seed(0))
    path = bundle / "models" / "model.onnx"
    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        onnx_out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    except Exception as error:
        return [f"{path}: onnxruntime cannot run it: {_first_line(error)}"]
    with torch.no_grad():
        reference = torch.jit.load(str(bundle / "models" / "model.ts"), map_location="cpu").eval()(x).numpy()
    error = float(np.abs(onnx_out - reference).max())
    if onnx_out.shape != reference.shape or error > ONNX_TOLERANCE:
        return [f"{path}: differs from model.ts (max |diff| {error:.2e} > {ONNX_TOLERANCE})"]
    return []


def check_hashes(bundle: Path) -> list[str]:
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    recorded = meta.get("model_files", {})
    problems = []
    for name in MODEL_FILES:
        expected = recorded.get(name, {}).get("sha256")
        if expected is None:
            problems.append(f"{bundle / 'configs' / 'metadata.json'}: no sha256 recorded for {name}")
        elif sha256(bundle / name) != expected:
            problems.append(
                f"{bundle / name}: sha256 differs from metadata.json (file changed after export); not loaded"
            )
    return problems + check_scripts(bundle, meta)


def check_pickles(bundle: Path) -> list[str]:
    """model.pt and model.ts pickle only tensors (and TorchScript modules); model.pt loads weights-only."""
    import torch

    from pipeline.export.pickle_scan import check_torch_file

    weights = bundle / "models" / "model.pt"
    problems = check_torch_file(weights) + check_torch_file(bundle / "models" / "model.ts", torchscript=True)
    if problems:
        return problems
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as error:
        return [f"{weights}: cannot be loaded weights-only ({_first_line(error)})"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        return [f"{weights}: holds a {type(state).__name__} with non-tensor values, expected a state_dict"]
    return []


def _normal(code: str) -> str:
    """MONAI evaluates ``@a#b`` as ``@a::b`` (it replaces every ``#`` before evaluating)."""
    return code.replace("#", "::")


def check_expressions(bundle: Path) -> list[str]:
    """The configs run only the code ``export`` writes; metadata.json holds no expressions."""
    problems = []
    for name, written in allowed_code().items():
        allowed = {_normal(v) for v in written}
        path = bundle / name
        if not path.exists() and name == "configs/evaluate.json":
            continue
        try:
            config = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            problems.append(f"{path}: not readable JSON ({_first_line(error)})")
            continue
        for key, value in code_strings(config):
            if name.endswith("metadata.json") and not value.startswith(("$", "%")):
                continue  # a _target_ in metadata is data; MONAI runs "$import ..." anywhere, even in _meta_
            if _normal(value) not in allowed:
                problems.append(
                    f"{path}: {key} = {value[:80]!r} is code that `python -m pipeline export` does not "
                    "write; MONAI would run it, so the bundle was not loaded"
                )
    return problems


def verify_bundle(bundle_dir: str | Path) -> list[str]:
    """All problems found in the bundle, each naming its file; an empty list means it is sound."""
    bundle = Path(bundle_dir).resolve()
    missing = [f"{bundle / name}: missing" for name in REQUIRED_FILES if not (bundle / name).is_file()]
    if missing:
        return missing
    hash_problems = check_hashes(bundle)
    problems = check_metadata(bundle) + hash_problems
    if hash_problems:  # nothing that changed after export is loaded
        return problems
    unsafe = check_pickles(bundle) + check_expressions(bundle)
    if unsafe:
        return problems + unsafe
    network_problems = check_network(bundle)
    problems += network_problems
    if not network_problems:
        problems += check_onnx(bundle)
    return problems


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", metavar="DIR", help="an exported bundle folder, or its .zip")


def main(args: argparse.Namespace) -> int:
    path = Path(args.bundle)
    if path.suffix.lower() == ".zip" and path.is_file():
        import tempfile

        from pipeline.export.unzip import extract

        with tempfile.TemporaryDirectory() as tmp:
            try:
                unpacked = extract(path, Path(tmp) / "bundle", check=verify_bundle)
            except (ValueError, OSError) as error:
                logger.error("%s", error)
                return 1
            note = code_note(unpacked)
        print(f"{path}: safe to unpack; metadata, network in/out, ONNX parity and sha256 verified; {note}")
        return 0
    problems = verify_bundle(args.bundle)
    for problem in problems:
        logger.error("%s", problem)
    if not problems:
        note = code_note(Path(args.bundle))
        print(f"{args.bundle}: metadata, network in/out, ONNX parity and sha256 hashes verified; {note}")
    return 1 if problems else 0
