"""Fixtures shared by the test files: a real mosquitto on a free loopback port and the
reference central system on it (defined in tests/broker.py, registered here once)."""

from tests.broker import central, mosquitto, mosquitto_factory

__all__ = ["central", "mosquitto", "mosquitto_factory"]
