"""Galley: resource models, YAML loading, validation, and the on-disk store."""
