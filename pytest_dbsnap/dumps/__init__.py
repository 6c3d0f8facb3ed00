"""Versioned dumps: metadata, the store on disk, fingerprints, generation and restore."""
