"""Citadel: the mesh CA, workload certificates with SPIFFE identities, rotation."""
