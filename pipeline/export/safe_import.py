"""`python -m pipeline import-bundle BUNDLE.zip --to DIR`: unpack a received bundle safely, then verify it.

The zip's entries are checked and unpacked by :func:`pipeline.export.unzip.extract`; the unpacked
bundle must pass :func:`pipeline.export.verify.verify_bundle` before ``DIR`` is created.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline.export.unzip import BundleImportError, extract
from pipeline.export.verify import verify_bundle

logger = logging.getLogger(__name__)


def import_bundle(zip_path: str | Path, dest_dir: str | Path) -> Path:
    """Unpack the bundle ``zip_path`` into ``dest_dir`` after checking and verifying it.

    Returns:
        ``dest_dir``, holding configs/, models/, docs/ and LICENSE.

    Raises:
        FileNotFoundError: the zip does not exist.
        FileExistsError: ``dest_dir`` exists and is not an empty folder.
        BundleImportError: the zip was refused; nothing was written.
    """
    dest = extract(zip_path, dest_dir, check=verify_bundle)
    logger.info("Imported %s into %s (checked, sha256 and pickles verified)", zip_path, dest)
    return dest


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "bundle", metavar="BUNDLE.zip", help="a bundle .zip written by `python -m pipeline export`"
    )
    parser.add_argument("--to", required=True, metavar="DIR", help="bundle folder to create (new or empty)")


def main(args: argparse.Namespace) -> int:
    try:
        dest = import_bundle(args.bundle, args.to)
    except (BundleImportError, FileNotFoundError, FileExistsError) as error:
        logger.error("%s", error)
        return 1
    print(f"{args.bundle}: safe; unpacked and verified into {dest}")
    return 0
