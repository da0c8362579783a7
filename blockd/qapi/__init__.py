"""blockd.qapi."""
