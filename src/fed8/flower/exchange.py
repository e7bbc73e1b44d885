"""One message exchange on a Flower ``Grid``: push the messages, pull their replies, poll briefly.

Flower's own ``Grid.send_and_receive`` (``flwr`` 1.42, HTTP grid) sleeps 3 s between two
pulls, so every exchange of a round (train, evaluate, calibrate, a secure-aggregation
step) ends up to 3 s after its last reply came. :func:`send_and_receive` does the same job
with the Grid's public ``push_messages`` and ``pull_messages`` and a short poll that backs
off (``first_poll``, times 1.5 per empty pull, at most ``max_poll``): a reply is taken
within ``max_poll`` of its arrival, at the cost of a few small requests to the SuperLink.
"""

from __future__ import annotations

import time
from typing import Iterable

__all__ = ["send_and_receive"]


def send_and_receive(grid, messages: Iterable, *, timeout: float, first_poll: float = 0.05,
                     max_poll: float = 0.5) -> list:
    """Push ``messages`` and return the replies that came within ``timeout`` seconds.

    Parameters
    ----------
    grid
        A Flower ``Grid`` (its ``push_messages`` and ``pull_messages``).
    messages
        The messages to send.
    timeout
        Seconds to wait for replies after the push; a message whose reply does not come
        by then has none in the result (the caller counts it as a dropout).
    first_poll, max_poll
        Seconds between pulls: ``first_poll`` after the push, growing 1.5x per pull, at most
        ``max_poll``.

    Returns
    -------
    list
        The replies, in the order they arrived (error replies included, as Flower's).
    """
    # a message the SuperLink refused has the id None (Flower logs why): no reply can come for it
    pending = {i for i in grid.push_messages(list(messages)) if i is not None}
    deadline = time.monotonic() + timeout
    replies: list = []
    wait = first_poll
    while pending:
        got = list(grid.pull_messages(sorted(pending)))
        replies.extend(got)
        pending.difference_update(m.metadata.reply_to_message_id for m in got)
        left = deadline - time.monotonic()
        if not pending or left <= 0:
            break
        time.sleep(min(wait, left))
        wait = min(max_poll, wait * 1.5)
    return replies
