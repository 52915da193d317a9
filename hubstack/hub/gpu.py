"""GPU grants for notebook containers (interface; owned by the GPU issue).

The spawner calls, for a profile with gpus > 0::

    async with allocator.reserve(owner=username, count=profile.gpus) as grant:
        # create the container with grant.labels, grant.environment and
        # grant.host_config merged into its spec, inside the block
        ...

reserve() raises GPUUnavailable (a clear, user-facing message) at once when
the platform has no GPU or none is free. Assignments are read back from the
containers' labels, so they survive a hub restart.
"""

from __future__ import annotations


class GPUUnavailable(Exception):
    """No GPU can be granted; the message is shown to the analyst."""
