"""Every MQTT topic of the protocol (docs/protocol.md, "Topics"), in one place."""

from __future__ import annotations

import re
from dataclasses import dataclass

# a topic level: no MQTT wildcards or separators, no leading '$'
LEVEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,99}$")


def valid_level(text: str) -> bool:
    """A site or daemon id usable as one topic level ('central' is the central system's)."""
    return bool(LEVEL.match(text)) and text != "central"


def central_status_topic(prefix: str) -> str:
    return f"{prefix}/central/status"


@dataclass(frozen=True, slots=True)
class Topics:
    """Every topic one daemon uses. `prefix` may contain '/', `site` and `daemon` may not."""

    prefix: str
    site: str
    daemon: str

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.site}"

    def _own(self, tail: str) -> str:
        return f"{self.base}/{self.daemon}/{tail}"

    @property
    def events(self) -> str:
        return self._own("events")

    @property
    def site_events(self) -> str:
        return f"{self.base}/+/events"

    @property
    def status(self) -> str:
        return self._own("status")

    @property
    def health(self) -> str:
        return self._own("health")

    @property
    def ack(self) -> str:
        return self._own("ack")

    @property
    def replay(self) -> str:
        return self._own("replay")

    @property
    def replay_answer(self) -> str:
        return self._own("replay/answer")

    @property
    def lookup_response(self) -> str:
        return self._own("lookup/response")

    @property
    def history_request(self) -> str:
        """A daemon whose ledger was lost asks the central system for its own events."""
        return self._own("history/request")

    @property
    def history(self) -> str:
        """The central system's answers to our history requests."""
        return self._own("history")

    @property
    def snapshot(self) -> str:
        return f"{self.base}/snapshot"

    @property
    def delta(self) -> str:
        return f"{self.base}/delta"

    @property
    def catch_up(self) -> str:
        """Requests between the site's daemons (each answers those naming it)."""
        return f"{self.base}/catchup"

    @property
    def catch_up_answer(self) -> str:
        return self._own("catchup/answer")

    @property
    def site_catch_up_answers(self) -> str:
        return f"{self.base}/+/catchup/answer"

    def sender_of_catch_up_answer(self, topic: str) -> str | None:
        """The daemon id in `{prefix}/{site}/{daemon}/catchup/answer`, or None."""
        head, tail = self.base + "/", "/catchup/answer"
        if not topic.startswith(head) or not topic.endswith(tail):
            return None
        daemon = topic[len(head) : -len(tail)]
        return daemon if valid_level(daemon) else None

    @property
    def delta_head(self) -> str:
        return f"{self.base}/delta/head"

    @property
    def resync(self) -> str:
        return f"{self.base}/resync"

    @property
    def lookup_request(self) -> str:
        return f"{self.base}/lookup/request"

    @property
    def central_status(self) -> str:
        return central_status_topic(self.prefix)

    @property
    def site_status(self) -> str:
        return f"{self.base}/+/status"

    def sender_of_status(self, topic: str) -> str | None:
        """The daemon id in `{prefix}/{site}/{daemon}/status`, or None for another topic."""
        head = self.base + "/"
        if not topic.startswith(head) or not topic.endswith("/status"):
            return None
        daemon = topic[len(head) : -len("/status")]
        return daemon if valid_level(daemon) else None

    def sender_of_events(self, topic: str) -> str | None:
        """The daemon id in `{prefix}/{site}/{daemon}/events`, or None for another topic."""
        head = self.base + "/"
        if not topic.startswith(head) or not topic.endswith("/events"):
            return None
        daemon = topic[len(head) : -len("/events")]
        return daemon if valid_level(daemon) else None
