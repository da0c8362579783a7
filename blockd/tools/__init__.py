"""blockd.tools."""
