"""The content-keyed artifact store: atomic files, scratch folders, the cache, object storage, fingerprints and integrity."""
