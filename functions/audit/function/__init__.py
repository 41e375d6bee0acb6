"""The audit function: records inference CloudEvents in MongoDB and answers KPI queries."""
from .func import new

__all__ = ["new"]
