"""Data: the kaggle_3m layout in, training-ready lists out.

Discovery of patients and slices, the data checks, the patient-level split file, the lesion
sampling weights, the phantom dataset and ``prepare_data`` (all of them for a training run).

May import: ``pipeline.atomic`` and ``transforms``. Nothing else of ``pipeline``.
"""
