"""viewers: see README.md."""
