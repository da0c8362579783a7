"""blockd.qmp."""
