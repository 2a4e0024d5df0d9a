"""Fault injection for clipgate as an integration-test target: off unless `[faults] enabled`.

A fault makes matching requests misbehave the way real endpoints do: latency (fixed or random),
an error status (with Retry-After) whose body is in the calling vendor's own error shape, a
hang until the client gives up, a connection reset, a truncated body, or a body dribbled
slowly. Faults match by protocol and route template, for the first N requests, every Nth, or
with a probability from a seed, so a run repeats exactly. They are set from Python
(`FaultPlan.set`), per request with the `X-Clipgate-Fault` header, or over the admin route
`/admin/faults`; all three share one vocabulary:

    status=503;retry-after=2;delay-ms=300;delay-ms=100-500;hang;reset;truncate=100;dribble=1024
    protocol=roboflow;route=/clip/embed_text;first=3;every=2;p=0.5;seed=7
"""

from __future__ import annotations

import dataclasses
import random
import threading
from dataclasses import dataclass, field
from typing import Any

HEADER = "x-clipgate-fault"


class FaultSyntaxError(ValueError):
    """A fault description that does not parse; the message says which part."""


@dataclass(frozen=True)
class Fault:
    """What goes wrong (status, delay, hang, reset, truncate, dribble), and for which requests
    (protocol, route, first, every, probability with seed)."""

    status: int | None = None
    retry_after: int | None = None
    delay_ms: tuple[int, int] | None = None  # (low, high); a fixed delay is (n, n)
    hang: bool = False
    reset: bool = False
    truncate: int | None = None  # bytes of the answer's body sent before the connection closes
    dribble: int | None = None  # bytes per second the answer's body is sent at
    protocol: str | None = None
    route: str | None = None  # a route template, prefix included (as metrics and logs name it)
    first: int | None = None  # only the first N matching requests
    every: int | None = None  # only every Nth matching request
    probability: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        def check(ok: bool, what: str) -> None:
            if not ok:
                raise FaultSyntaxError(what)

        check(self.status is None or 400 <= self.status <= 599, "status must be 400-599")
        check(self.retry_after is None or self.retry_after >= 0, "retry-after must not be negative")
        check(self.delay_ms is None or 0 <= self.delay_ms[0] <= self.delay_ms[1] <= 600_000, "delay-ms: 0-600000")
        for name in ("truncate", "first"):
            check(getattr(self, name) is None or getattr(self, name) >= 0, f"{name} must not be negative")
        for name in ("dribble", "every"):
            check(getattr(self, name) is None or getattr(self, name) >= 1, f"{name} must be at least 1")
        check(0.0 <= self.probability <= 1.0, "p must be 0-1")
        check(sum((self.hang, self.reset, self.status is not None)) <= 1, "one of status, hang and reset at most")
        what = (self.status, self.delay_ms, self.truncate, self.dribble)
        check(self.hang or self.reset or any(v is not None for v in what), "a fault needs something to do")

    @property
    def kind(self) -> str:
        """The metric label: what the fault does first."""
        for name in ("hang", "reset"):
            if getattr(self, name):
                return name
        if self.status is not None:
            return "status"
        for name in ("truncate", "dribble"):
            if getattr(self, name) is not None:
                return name
        return "delay"

    @classmethod
    def parse(cls, text: str) -> Fault:
        """A fault from the `;`-separated vocabulary of the module docstring."""
        values: dict[str, Any] = {}
        for part in filter(None, (p.strip() for p in text.split(";"))):
            name, has_value, raw = (s.strip() for s in part.partition("="))
            name = name.lower()
            if name in ("hang", "reset") and not has_value:
                values[name] = True
                continue
            if not has_value or not raw:
                raise FaultSyntaxError(f"{name!r} needs a value ({name}=...)")
            try:
                values.update(_parse_value(name, raw))
            except ValueError as exc:
                raise FaultSyntaxError(f"{part!r}: {exc}") from None
        return cls(**values)

    @classmethod
    def from_json(cls, data: Any) -> Fault:
        """A fault from a JSON object with the same names (delay_ms as a number or [low, high])."""
        if isinstance(data, str):
            return cls.parse(data)
        if not isinstance(data, dict):
            raise FaultSyntaxError("a fault is an object or a string")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise FaultSyntaxError(f"unknown fault fields: {', '.join(sorted(unknown))}")
        values = dict(data)
        delay = values.get("delay_ms")
        if isinstance(delay, int | float) and not isinstance(delay, bool):
            values["delay_ms"] = (int(delay), int(delay))
        elif isinstance(delay, list) and len(delay) == 2:
            values["delay_ms"] = (int(delay[0]), int(delay[1]))
        try:
            return cls(**values)
        except TypeError as exc:
            raise FaultSyntaxError(str(exc)) from None

    def to_json(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items() if v}


def _parse_value(name: str, raw: str) -> dict[str, Any]:
    if name in ("status", "retry-after", "truncate", "dribble", "first", "every", "seed"):
        return {name.replace("-", "_"): int(raw)}
    if name == "delay-ms":
        low, _, high = raw.partition("-")
        return {"delay_ms": (int(low), int(high or low))}
    if name in ("p", "probability"):
        return {"probability": float(raw)}
    if name in ("protocol", "route"):
        return {name: raw}
    raise ValueError(f"unknown fault {name!r}")


@dataclass
class _Rule:
    fault: Fault
    rng: random.Random
    matched: int = 0
    applied: int = 0


@dataclass
class FaultPlan:
    """The faults set on a server (from Python or the admin route), matched in the order they
    were set: the first rule that matches a request and selects it applies. Thread-safe: tests
    set faults from their own thread while the server serves."""

    enabled: bool = False
    _rules: list[_Rule] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def set(self, fault: Fault | str | None = None, /, **fields: Any) -> Fault:
        """Add a fault: a Fault, a string in the header's vocabulary, or its fields as keywords
        (`status=503, retry_after=2, route="/clip/embed_text", first=2`)."""
        if fault is None:
            fault = Fault.from_json(fields)
        elif isinstance(fault, str):
            fault = Fault.parse(fault)
        with self._lock:
            self._rules.append(_Rule(fault, random.Random(fault.seed)))
        return fault

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def rules(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{**r.fault.to_json(), "matched": r.matched, "applied": r.applied} for r in self._rules]

    def pick(self, protocol: str, route: str, header: str | None) -> tuple[Fault, float] | None:
        """The fault for one request, and its delay in seconds: the request's own header first,
        then the rules. None when faults are off or nothing applies."""
        if not self.enabled:
            return None
        if header:
            fault = Fault.parse(header)
            return fault, _delay(fault, random.Random(fault.seed))
        with self._lock:
            for rule in self._rules:
                f = rule.fault
                if (f.protocol is not None and f.protocol != protocol) or (f.route is not None and f.route != route):
                    continue
                rule.matched += 1
                selected = (f.first is None or rule.matched <= f.first) and (
                    f.every is None or rule.matched % f.every == 0
                )
                if selected and rule.rng.random() < f.probability:
                    rule.applied += 1
                    return f, _delay(f, rule.rng)
        return None


def _delay(fault: Fault, rng: random.Random) -> float:
    if fault.delay_ms is None:
        return 0.0
    low, high = fault.delay_ms
    return (low if low == high else rng.uniform(low, high)) / 1000
