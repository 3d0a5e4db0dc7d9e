"""Data, splits, phantom data, metrics, MLflow glue and the `python -m pipeline` command line."""
