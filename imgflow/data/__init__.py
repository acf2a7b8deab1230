"""Data in: sources, images, text, the clean table, partitions, record keys and the TFRecord format."""
