"""`meshctl bench`: the same client -> server workload, direct and through the mesh, in one run."""
