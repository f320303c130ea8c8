"""What the monitor shows of a dependency's address (actors/monitor/probes.py redact)."""

from __future__ import annotations

import pytest

from victoria.actors.monitor.probes import redact

SHOWN = {  # an address: what the monitor shows of it
    "postgresql://postgres:secret@127.0.0.1:5432/test": "postgresql://postgres:***@127.0.0.1:5432/test",
    "postgres://u:p@ss:w0rd@db/x": "postgres://u:***@db/x",
    "postgresql://postgres@127.0.0.1:5432/test": "postgresql://postgres@127.0.0.1:5432/test",
    "postgresql://127.0.0.1/test": "postgresql://127.0.0.1/test",
    "http://127.0.0.1:11434": "http://127.0.0.1:11434",
}


@pytest.mark.parametrize(("dsn", "shown"), SHOWN.items())
def test_a_password_in_a_dsn_is_never_shown(dsn: str, shown: str) -> None:
    assert redact(dsn) == shown
    if ":" in dsn.split("://", 1)[1].rsplit("@", 1)[0] and "@" in dsn:
        assert "secret" not in redact(dsn) and "w0rd" not in redact(dsn)
