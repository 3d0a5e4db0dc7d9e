"""`python -m pipeline verify-bundle DIR`: check an exported bundle offline.

- ``configs/metadata.json`` against the metadata schema shipped in this repository
  (bundle/schema/meta_schema.json) with ``monai.bundle.verify_metadata``: the schema file exists at
  ``filepath``, so MONAI does not download the URL named in the metadata;
- the TorchScript network of ``configs/inference.json`` with ``monai.bundle.verify_net_in_out``
  (input and output channels and dtype from ``network_data_format``);
- the ONNX model against the TorchScript one on the same random input (onnxruntime, 1e-4);
- the sha256 of every model file against ``model_files`` in the metadata.

Exit code 0 when everything holds, 1 otherwise; each failure names its file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

SCHEMA = Path(__file__).resolve().parents[1] / "bundle" / "schema" / "meta_schema.json"
MODEL_FILES = ("models/model.pt", "models/model.ts", "models/model.onnx")
REQUIRED_FILES = (
    "configs/inference.json",
    "configs/metadata.json",
    "configs/logging.conf",
    *MODEL_FILES,
    "docs/README.md",
    "LICENSE",
)
ONNX_TOLERANCE = 1e-4


def sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
            problems.append(f"{bundle / name}: sha256 differs from metadata.json (file changed after export)")
    return problems


def verify_bundle(bundle_dir: str | Path) -> list[str]:
    """All problems found in the bundle, each naming its file; an empty list means it is sound."""
    bundle = Path(bundle_dir).resolve()
    missing = [f"{bundle / name}: missing" for name in REQUIRED_FILES if not (bundle / name).is_file()]
    if missing:
        return missing
    problems = check_metadata(bundle) + check_hashes(bundle)
    network_problems = check_network(bundle)
    problems += network_problems
    if not network_problems:
        problems += check_onnx(bundle)
    return problems


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", metavar="DIR", help="an exported bundle folder")


def main(args: argparse.Namespace) -> int:
    problems = verify_bundle(args.bundle)
    for problem in problems:
        logger.error("%s", problem)
    if not problems:
        print(f"{args.bundle}: metadata, network in/out, ONNX parity and sha256 hashes verified")
    return 1 if problems else 0
