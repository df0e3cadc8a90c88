"""Sans-IO Noise handshake, transport cipher and key files."""
