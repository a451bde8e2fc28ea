"""Runner requests of section 2 (written next)."""
