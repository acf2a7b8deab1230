"""Prefect tasks: thin wrappers that add caching, retries and logging to the library's stages."""
