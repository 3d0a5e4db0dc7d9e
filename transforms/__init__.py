"""MONAI readers and dictionary transforms of this project."""
