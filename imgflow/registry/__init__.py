"""The model registry: versions and the champion, the gate, promotion, releases and the model report."""
