"""The HTTP layer: routes that turn requests into task events and folds of events into answers."""
