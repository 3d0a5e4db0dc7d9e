"""Inference: new scans in, masks out.

Input discovery and reading (TIFF slices, volumes), the orientation checks, the mask writers and
the inference workflow of inference.json.

May import: ``pipeline.data``, ``pipeline.training``, ``pipeline.evaluation``, ``pipeline.tracking``,
``pipeline.atomic``, ``transforms``, ``networks``.
"""
