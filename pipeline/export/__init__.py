"""Export: a trained model out as a MONAI bundle a clinical research team can pick up.

The exported bundle's layout (``layout``: file names, required files, sha256), export, offline
verification, the safe import of a received .zip and the pickle scan of model files.

May import every other stage.
"""
