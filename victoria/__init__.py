"""victoria: a crash-proof runtime for LLM agent tasks, an event-sourced actor system on NATS."""

__version__ = "0.1.0"

__all__ = ["__version__"]
