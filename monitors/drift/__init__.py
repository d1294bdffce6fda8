"""Drift monitoring: the window of served rows, the statistical check, the routing policy.

Only the drift process imports `check` and `report` (they pull in evidently); the API workers
import nothing from here but plain data classes.
"""
