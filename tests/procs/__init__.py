"""Helpers that run qchan nodes in separate OS processes, for tests."""
