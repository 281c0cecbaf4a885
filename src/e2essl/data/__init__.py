"""Jet files (reading, checking, writing), the simulator, splits, sparse storage, preprocessing."""
