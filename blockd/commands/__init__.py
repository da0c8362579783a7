"""QMP command handlers, one module per topic; importing registers them."""

from blockd.commands import block, control, hmp, qom  # noqa: F401
from blockd.commands import block_query  # noqa: F401
from blockd.commands import block_stream, jobs  # noqa: F401
from blockd.commands import block_commit  # noqa: F401
from blockd.commands import device  # noqa: F401
