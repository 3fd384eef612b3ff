"""Signals around meta-training: SIGTERM as an interruption, both signals held off while saving, or recorded."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

from l2l_jax.errors import Terminated


@contextlib.contextmanager
def sigterm_raises_terminated() -> Iterator[None]:
    """Turns SIGTERM into ``Terminated`` (a KeyboardInterrupt) for the block, in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Terminated(signum)

    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, handler)}
    try:
        yield
    finally:
        _restore(previous)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Ignores SIGINT and SIGTERM for the block (the last checkpoint is being saved), in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        _restore(previous)


class Received:
    """The first signal received in ``signals_recorded`` (0: none)."""

    signum: int = 0


@contextlib.contextmanager
def signals_recorded() -> Iterator[Received]:
    """Records the first SIGINT or SIGTERM instead of raising it, in the main thread; a second one acts as before."""
    received = Received()
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, frame: Any) -> None:
        received.signum = received.signum or signum
        _restore(previous)

    for s in previous:
        signal.signal(s, handler)
    try:
        yield received
    finally:
        _restore(previous)


def _restore(previous: dict[int, Any]) -> None:
    """Puts back the handlers that ``signal.signal`` returned (``None``, set outside Python, as the default)."""
    for s, h in previous.items():
        signal.signal(s, h if h is not None else signal.SIG_DFL)
