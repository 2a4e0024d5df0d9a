"""What the running app shares between its routes: the service once warm, draining, requests in flight."""

from __future__ import annotations

import os
import socket
import uuid
from typing import TYPE_CHECKING

from clipgate.budget import BodyBudget
from clipgate.canonical import ModelCard
from clipgate.faults import FaultPlan
from clipgate.metrics import Metrics

if TYPE_CHECKING:
    from clipgate.service import EmbeddingService


class AppState:
    """One per app. `service` is set once the model is loaded and warm, and cleared when the app
    stops: while it is None, embedding requests get 503 and readiness probes say not ready."""

    def __init__(
        self, version: str, body_budget: BodyBudget, metrics: Metrics, faults: FaultPlan, replica_id: str = ""
    ) -> None:
        self.service: EmbeddingService | None = None
        self.body_budget = body_budget  # request body bytes in flight, over every request
        self.metrics = metrics
        self.faults = faults  # injected faults (testing); off unless [faults] enabled
        self.draining = False  # SIGTERM: probes say not ready while requests in flight finish
        self.inflight = 0  # embedding requests being read, decoded or waiting
        self.version = version
        self.instance_id = uuid.uuid4().hex
        # Which server answered (X-Clipgate-Replica, /info): the configured name, else host and process.
        self.replica_id = replica_id or f"{socket.gethostname()}:{os.getpid()}"

    @property
    def ready(self) -> bool:
        """What readiness probes report: warm, not draining, and the encoder healthy."""
        return self.not_ready_reason() is None

    def not_ready_reason(self) -> str | None:
        if self.draining:
            return "draining"
        if self.service is None:
            return "loading"
        return self.service.health()

    @property
    def card(self) -> ModelCard | None:
        return self.service.card if self.service is not None else None

    def queue_depth(self, kind: str) -> int:
        """Items of `kind` queued or being prepared for the model."""
        return self.service.batcher.pending(kind) if self.service is not None else 0
