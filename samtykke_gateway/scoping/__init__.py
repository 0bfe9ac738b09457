"""Scoping: rights packages, the path language, the compiled walk, exact JSON."""
