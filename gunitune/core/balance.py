"""Balance across workers: who accepts a connection decides who serves it.

Requests a worker holds are its own: it reads, routes and queues them by lane,
and no other worker can take them over. Each worker publishes how many
requests it holds; a worker accepts while it holds at most the least loaded
worker's count plus a little slack, plus its fair share of what waits in the
kernel's listen queue. The share matters when the workers are busy with CPU
work: each gets a turn at the loop only between two requests, and without it
the queue would drain by the slack per turn, leaving a health check waiting
behind the storm in the kernel's FIFO queue. Taking a fair share per turn
drains it at once and keeps the workers even.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["may_accept"]

# Slack before a worker leaves the next connection to a less loaded one: wide
# enough that workers do not take turns at every connection, narrow enough to
# keep completions within a few per cent of each other.
SLACK = 2
SLACK_RATIO = 0.05


def may_accept(
    mine: int, others: Sequence[int], in_kernel_queue: int = 0, kernel_queue_max: int = 0
) -> bool:
    """True when a worker holding ``mine`` requests should accept one more.

    ``others``: what the other accepting workers hold; ``in_kernel_queue``:
    connections waiting in the listen queue(s) this worker accepts from, out of
    ``kernel_queue_max``. A queue half full is about to drop SYNs (each costs
    its client a 1 s retry, then 3 s...): then balance gives way.
    """
    if not others:
        return True
    if kernel_queue_max and 2 * in_kernel_queue >= kernel_queue_max:
        return True
    lowest = min(others)
    slack = max(SLACK, math.ceil(SLACK_RATIO * lowest))
    fair_share = math.ceil(in_kernel_queue / (len(others) + 1))
    return mine <= lowest + slack + fair_share
