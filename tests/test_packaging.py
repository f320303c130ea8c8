"""The package as pip installs it: one import package, ``victoria``, and nothing else at the top."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.e2e

CHECK = """
import importlib.util, json, sys
import victoria.events, victoria.actors.agent.actor, victoria.gateway.app, victoria.runtime.publish
from victoria.runtime.natsserver import config_path
print(json.dumps({
    "events_file": victoria.events.__file__,
    "top_level": {name: importlib.util.find_spec(name) is not None for name in ("events", "actors", "gateway", "runtime")},
    "nats_conf": config_path().is_file(),
    "nats_users_conf": config_path().with_name("nats-users.conf").is_file(),
}))
"""


def test_a_fresh_venv_outside_the_checkout_imports_victoria_events_and_not_events(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("victoria-*.whl")
    fresh = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(fresh)], check=True, timeout=120)
    python = fresh / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    # Its dependencies (msgspec, nats-py, ...) from this venv, as a plain path: this venv's own
    # .pth files, among them the editable install's finder that maps `victoria` to the checkout,
    # are not read.
    (site / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n", encoding="utf-8")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    out = subprocess.run(
        [str(python), "-c", CHECK],
        cwd=outside,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr
    import json

    seen = json.loads(out.stdout)
    assert seen["events_file"].startswith(str(site))
    assert seen["top_level"] == {"events": False, "actors": False, "gateway": False, "runtime": False}
    assert seen["nats_conf"]
    assert seen["nats_users_conf"]  # included by nats.conf: the server would not start without it
