"""argentd: a per-user daemon that leases LLM credentials to agents."""

__version__ = "0.1.0"
