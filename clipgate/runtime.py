"""What the process needs, whoever hosts the app (`clipgate serve`, `uvicorn --factory`, gunicorn):
logging, key redaction in access logs, the GIL switch interval, and draining on SIGTERM.

`create_app`'s lifespan calls `configure_process` and installs `Drain`, so every host gets the
same behaviour; nothing here runs when the app object is merely built.
"""

from __future__ import annotations

import logging
import re
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any
from urllib.parse import unquote_plus

from clipgate import logs
from clipgate.config import ServerConfig
from clipgate.state import AppState

log = logging.getLogger("clipgate")

# The event loop and the model thread share the GIL; torch lets go of it for every op and
# takes it back after. At Python's default 5 ms switch interval a thread that wants the GIL
# back can wait that long; at 1 ms 16 clients got ~9% more texts per second (make bench).
GIL_SWITCH_INTERVAL_S = 0.001
SECRET_PARAMS = frozenset({"api_key", "key", "token", "access_token"})
_QUERY_PARAM = re.compile(r"([?&])([^=&#\s]*)=([^&#\s]*)")


def redact_query(text: str) -> str:
    """Blank the value of every credential parameter, however its name is percent-encoded."""

    def blank(match: re.Match[str]) -> str:
        name = unquote_plus(match.group(2)).strip().lower()
        return f"{match.group(1)}{match.group(2)}=***" if name in SECRET_PARAMS else match.group(0)

    return _QUERY_PARAM.sub(blank, text)


class RedactSecrets(logging.Filter):
    """Blank credentials in logged request paths: uvicorn's access log prints the query string,
    and Roboflow clients may put their key there (`?api_key=...`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact_query(a) if isinstance(a, str) else a for a in record.args)
        return True


def configure_process(server: ServerConfig) -> None:
    """Logging (clipgate.logs: text or JSON, the request id on every record, clipgate's own access
    line instead of uvicorn's), the GIL switch interval, and key redaction on uvicorn's access log
    should a host turn it back on. Safe to call more than once."""
    logs.configure_logging(server)
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactSecrets) for f in access.filters):
        access.addFilter(RedactSecrets())


Handler = Callable[[int, FrameType | None], Any] | int | None


class Drain:
    """On SIGTERM or SIGINT: readiness probes answer 503 at once, requests are still served for
    `grace_s` (so a load balancer sees the probe before connections are refused), then the host
    server is asked to stop: it stops accepting, finishes the requests in flight and exits. A
    second signal ends the grace; a third stops at once.

    The handlers wrap the host's. Under uvicorn (whose handler is a bound `Server.handle_exit`)
    the server is told to exit directly: uvicorn's own handler would record the signal and raise
    it again after shutdown, so the process would die of it (status 143); drained, it exits 0.
    Under any other host the host's handler is called when the grace ends. Signals can only be
    handled on the main thread; elsewhere (a test client) this does nothing."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, state: AppState, grace_s: float) -> None:
        self.state, self.grace_s = state, grace_s
        self._previous: dict[int, Handler] = {}
        self._stopping = False
        self._timer: threading.Timer | None = None

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, sig: int, frame: FrameType | None) -> None:
        if not self.state.draining:
            self.state.draining = True
            if self.grace_s > 0:
                log.info("signal %d: not ready; serving %.1f s more before draining", sig, self.grace_s)
                self._timer = threading.Timer(self.grace_s, self._stop, (sig, None))
                self._timer.daemon = True
                self._timer.start()
                return
        if self._timer is not None:
            self._timer.cancel()
        self._stop(sig, frame)

    def _stop(self, sig: int, frame: FrameType | None) -> None:
        previous = self._previous.get(sig, signal.SIG_DFL)
        server = getattr(previous, "__self__", None)
        if server is not None and hasattr(server, "should_exit") and hasattr(server, "force_exit"):
            if self._stopping:
                server.force_exit = True
            self._stopping = server.should_exit = True
            return
        if callable(previous):
            previous(sig, frame)
        elif previous == signal.SIG_DFL:
            signal.signal(sig, signal.SIG_DFL)
            signal.raise_signal(sig)
