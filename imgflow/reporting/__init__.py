"""What a run reports: plots, progress and the run summary."""
