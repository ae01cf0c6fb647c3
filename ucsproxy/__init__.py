"""ucsproxy: decode, log, mock, replay and fault-inject Exchange Unified Contact Store traffic."""

__version__ = "0.1.0"
