"""Rows (SQLAlchemy) and image files (content-addressed PNGs), kept consistent. Knows nothing of tools."""
