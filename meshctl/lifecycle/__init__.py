"""Install, uninstall and check: the mesh's own lifecycle on this engine."""
