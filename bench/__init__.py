"""The benchmarks (`make bench-*`, docs/benchmarks.md); run each as `python bench/x.py`."""
