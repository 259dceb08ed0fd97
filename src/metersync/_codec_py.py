"""Pure-Python twin of the Cython core (placeholder until the codec lands)."""
