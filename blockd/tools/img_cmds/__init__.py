"""The subcommands of ``blockd-img`` (one module each) and their shared helpers."""
