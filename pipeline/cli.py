"""`python -m pipeline COMMAND ...`: the project's command line.

Each command lives in its own module, which provides ``add_arguments(parser)`` and
``main(args) -> int`` (the exit code). Modules are imported only when their command runs, so
``python -m pipeline synth`` does not pay for importing torch or MLflow.
"""

from __future__ import annotations

import argparse
import importlib
import logging

COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("pipeline.data.phantom", "write a phantom dataset in the kaggle_3m layout"),
    "check-data": ("pipeline.data.checks", "validate a dataset folder in the kaggle_3m layout"),
    "compare": (
        "pipeline.tracking.compare",
        "compare MLflow runs: table and overlaid learning curves, or two evaluated runs patient by "
        "patient (--paired)",
    ),
    "export": ("pipeline.export.build", "export a trained model as a MONAI bundle folder and .zip"),
    "verify-bundle": (
        "pipeline.export.verify",
        "verify an exported bundle offline (schema, network, hashes)",
    ),
    "import-bundle": ("pipeline.export.safe_import", "unpack a received bundle .zip safely and verify it"),
    "crossval": ("pipeline.evaluation.crossval", "patient-level k-fold cross-validation, pooled out of fold"),
    "ensemble-gain": (
        "pipeline.inference.ensemble_gain",
        "a cross-validation's fold ensemble against its single fold models on held-out patients",
    ),
}


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        # only the command being run is imported (its arguments are needed to parse)
        if argv is None or name in argv:
            importlib.import_module(module_name).add_arguments(sub_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    import sys

    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser(argv).parse_args(argv)
    module = importlib.import_module(COMMANDS[args.command][0])
    return int(module.main(args) or 0)
