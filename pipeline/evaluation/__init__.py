"""Evaluation: the paper's per-volume Dice and the report.

The numpy metric core (the independent reference), the ignite metric adapters the evaluator
uses, the evaluation report (summary.json, per-slice CSV) and its figures.

May import: ``pipeline.data``, ``pipeline.tracking``, ``pipeline.atomic``, ``transforms``, ``networks``.
"""
