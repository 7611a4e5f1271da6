"""tunevlseg: see README.md."""
