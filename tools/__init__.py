"""Image backends behind one interface, and pure image transforms. Knows nothing of the database."""
