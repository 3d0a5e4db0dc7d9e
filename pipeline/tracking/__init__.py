"""Tracking: everything that talks to MLflow.

Training and evaluation runs, the guard that keeps MLflow trouble from stopping a run, tracking
URIs, learning-curve histories and ``python -m pipeline compare``.

Used by every other stage; imports none of them (only the shared ``pipeline.atomic`` and ``pipeline.errors``).
"""
