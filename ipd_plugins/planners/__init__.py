"""Planners: choose actions for imagined states (paper sec. 3.3, eq. 25)."""
