"""Data sets bundled with the embedded benchmark."""
