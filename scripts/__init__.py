"""The repository's tools (`make run`, the local services, model files); run each as `python scripts/x.py`."""
