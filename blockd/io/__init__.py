"""blockd's I/O engine: the thread pool that runs blocking host I/O off the event loop."""

from blockd.io.executor import IOPool, io_pool

__all__ = ["IOPool", "io_pool"]
