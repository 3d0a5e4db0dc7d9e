"""Export: a trained model out as a MONAI bundle a clinical research team can pick up.

The exported bundle's layout (``layout``: file names, required files, sha256), export
(``build``; a cross-validation's fold ensemble: ``crossval_source``), its code vendored as
``scripts/`` (``vendor``, ``bundle_loader``), its configs derived from this repository's
(``bundle_configs``), metadata and model card (``metadata``), the
post-processing defaults chosen from the evaluation (``choice``), offline verification
(``verify``, ``scripts_check``), the safe import of a received .zip (``unzip``, ``safe_import``),
the pickle scan of model files and the model registry.

May import every other stage.
"""
