"""`python -m pipeline verify-bundle DIR`: check an exported bundle offline.

- ``configs/metadata.json`` against the metadata schema shipped in this repository
  (bundle/schema/meta_schema.json) with ``monai.bundle.verify_metadata``: the schema file exists at
  ``filepath``, so MONAI does not download the URL named in the metadata;
- the TorchScript network of ``configs/inference.json`` with ``monai.bundle.verify_net_in_out``
  (input and output channels and dtype from ``network_data_format``);
- the ONNX model against the TorchScript one on the same random input (onnxruntime, 1e-4);
- the sha256 of every model file against ``model_files`` in the metadata.

Nothing in the bundle is loaded or evaluated before it is checked: the sha256 hashes come first
(a model file that changed after export is not loaded); then the pickles of ``model.pt`` and
``model.ts`` are read opcode by opcode (:mod:`pipeline.export.pickle_scan`) and ``model.pt`` is loaded
weights-only; and the ``$`` expressions and ``_target_`` components of ``inference.json`` (which
MONAI runs as Python) must be those ``python -m pipeline export`` writes, so that verifying a
received bundle cannot run code placed in its configs.

``DIR`` may also be a bundle .zip: it is unpacked safely into a temporary folder with
:func:`pipeline.export.unzip.extract`, then verified.

Exit code 0 when everything holds, 1 otherwise; each failure names its file.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from pipeline.export.layout import MODEL_FILES, REQUIRED_FILES, SCHEMA, sha256, standalone_inference_config

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
    from monai.bundle import verify_net_in_out

    config = bundle / "configs" / "inference.json"
    try:
        verify_net_in_out(
            net_id="network_def",
            meta_file=str(bundle / "configs" / "metadata.json"),
            config_file=str(config),
            device="cpu",
            bundle_root=str(bundle),
        )
    except Exception as error:
        return [f"{bundle / 'models' / 'model.ts'} (network_def of {config}): {_first_line(error)}"]
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
    return problems


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


def _strings(value: object, key: str = ""):
    """(key path, string) of every string in a JSON value."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, f"{key}#{k}" if key else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _strings(v, f"{key}#{i}")
    elif isinstance(value, str):
        yield key, value


def check_expressions(bundle: Path) -> list[str]:
    """inference.json runs only the code ``export`` writes; metadata.json holds no expressions."""
    exported = dict(_strings(standalone_inference_config(256)))
    code = {v for k, v in exported.items() if v.startswith(("$", "%")) or k.endswith("_target_")}
    problems = []
    for name in ("configs/inference.json", "configs/metadata.json"):
        path = bundle / name
        try:
            config = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            problems.append(f"{path}: not readable JSON ({_first_line(error)})")
            continue
        for key, value in _strings(config):
            if name.endswith("metadata.json"):  # MONAI runs "$import ..." anywhere, even in _meta_
                is_code, allowed = value.startswith(("$", "%")), set()
            else:
                is_code, allowed = value.startswith(("$", "%")) or key.endswith("_target_"), code
            if is_code and value not in allowed:
                problems.append(
                    f"{path}: {key} = {value[:80]!r} is code that `python -m pipeline export` does not "
                    "write; MONAI would run it, so the bundle was not loaded"
                )
        if name.endswith("inference.json") and config.get("network_def") != exported["network_def"]:
            problems.append(f"{path}: network_def is not the exported TorchScript loader; not loaded")
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
                extract(path, Path(tmp) / "bundle", check=verify_bundle)
            except (ValueError, OSError) as error:
                logger.error("%s", error)
                return 1
        print(f"{path}: safe to unpack; metadata, network in/out, ONNX parity and sha256 hashes verified")
        return 0
    problems = verify_bundle(args.bundle)
    for problem in problems:
        logger.error("%s", problem)
    if not problems:
        print(f"{args.bundle}: metadata, network in/out, ONNX parity and sha256 hashes verified")
    return 1 if problems else 0
