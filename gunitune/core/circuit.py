"""A database circuit: closed, open while the database is away, half-open for one probe.

The pattern of Envoy's outlier ejection and Hystrix, with a different answer
while open: requests are not failed fast, they wait (in their lane, up to a
bound) for the database to come back, as PgBouncer holds its clients while the
server restarts. Pure: the adapter (:mod:`gunitune._db_circuit`) feeds it
outcomes with its clock, runs the single probe and holds the lanes.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CLOSED", "HALF_OPEN", "OPEN", "Circuit"]

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half-open"


@dataclass
class Circuit:
    """One engine's circuit.

    ``first_retry`` is the wait before the first probe once open; each failed
    probe doubles it up to ``longest_retry`` (a database that is down for long
    is not hammered, one that restarts is found within a fraction of a second).
    """

    first_retry: float = 0.1
    longest_retry: float = 1.0
    state: str = CLOSED
    opened_at: float = 0.0
    next_probe_at: float = 0.0
    outages: int = 0  # times it opened
    failed_probes: int = 0  # in the current outage
    _retry: float = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.first_retry <= self.longest_retry:
            raise ValueError(
                f"first_retry={self.first_retry!r}, longest_retry={self.longest_retry!r} "
                "are invalid: expected 0 < first_retry <= longest_retry"
            )

    def failure(self, now: float) -> bool:
        """The database failed a request or a probe; True when this opened the circuit."""
        if self.state == CLOSED:
            self.state, self.opened_at = OPEN, now
            self.outages += 1
            self.failed_probes = 0
            self._retry = self.first_retry
            self.next_probe_at = now + self._retry
            return True
        if self.state == HALF_OPEN:
            self.state = OPEN
            self.failed_probes += 1
            self._retry = min(self.longest_retry, self._retry * 2)
            self.next_probe_at = now + self._retry
        return False

    def success(self, now: float) -> float | None:
        """The probe (or any query) worked; return the outage's length if this closed it."""
        if self.state == CLOSED:
            return None
        self.state = CLOSED
        return now - self.opened_at

    def start_probe(self, now: float) -> bool:
        """True when the single probe may run now (the circuit is then half-open)."""
        if self.state != OPEN or now < self.next_probe_at:
            return False
        self.state = HALF_OPEN
        return True

    def seconds_to_probe(self, now: float) -> float:
        """How long until the next probe is due (0 when due or not open)."""
        return max(0.0, self.next_probe_at - now) if self.state == OPEN else 0.0

    @property
    def is_closed(self) -> bool:
        """Requests may use the database."""
        return self.state == CLOSED
