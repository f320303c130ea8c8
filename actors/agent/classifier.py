"""Victoria's routing without a model call. The classifier itself is pure code in
``victoria.events.goals``, below both its readers: Victoria routes by it, and the gateway chooses a
task's expert by the route it names. This module is its name on the agent's side."""

from victoria.events.goals import Route, RouteKind, classify, files_route, language

__all__ = ["Route", "RouteKind", "classify", "files_route", "language"]
