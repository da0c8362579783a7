"""blockd.drivers."""
