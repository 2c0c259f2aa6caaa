"""Test helpers: tiny media fixtures written on the fly (no binary files in the repository)."""
