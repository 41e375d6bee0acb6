"""The load suite (`make load PROFILE=...`): locust users, load shapes and the runner.

See docs/load.md.
"""
