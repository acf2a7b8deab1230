"""Recipes that build real datasets from packages on this machine (``imgflow datasets ...``)."""
