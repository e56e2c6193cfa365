"""attachworker: attach Cinder volumes on a compute host, driven by RPC casts."""
