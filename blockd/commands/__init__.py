"""QMP command handlers, one module per topic; importing registers them."""

from blockd.commands import (  # noqa: F401  (imported to register the handlers)
    block,
    block_commit,
    block_query,
    block_stream,
    control,
    device,
    hmp,
    jobs,
    qom,
)
