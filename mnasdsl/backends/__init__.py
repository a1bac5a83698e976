"""Backends: each reads only the lowered layer list."""
