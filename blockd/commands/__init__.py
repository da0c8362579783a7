"""blockd.commands."""
