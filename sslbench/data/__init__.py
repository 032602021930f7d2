"""Real dataset readers, protocol transforms, fixture writers and the built-in default data."""
