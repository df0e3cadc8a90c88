"""qchan cluster examples (see README.md)."""
