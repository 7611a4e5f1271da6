"""pointprompt: see README.md."""
