"""Model adapters, loading, and the embedded digits DDPM."""
