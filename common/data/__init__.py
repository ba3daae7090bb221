"""Dataset sources (standard manifest), image checks, cached preprocessing and torch Datasets."""
