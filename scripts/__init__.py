"""The repository's tools (`make run`, the local services, model files).

Run each as `python scripts/x.py`.
"""
