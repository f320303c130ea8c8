"""``victoria setup``: make every stream and bucket, then exit (a deployment's one-shot job).

Only the NATS user ``supervisor`` may create streams (``nats-users.conf``); ``victoria up`` does
this at its start, and a deployment whose processes start alone runs it once first (the other
processes wait up to 30 s for the streams). ``VICTORIA_REPLICAS`` sets the copies of each.
"""

from __future__ import annotations

import logging
from typing import Final

from victoria.events import subjects
from victoria.runtime import connection, credentials, fence, streams
from victoria.runtime.config import Config

log = logging.getLogger(__name__)

SETUP_WAIT: Final = 60.0  # seconds for a new cluster's JetStream to answer


async def run(config: Config, url: str) -> int:
    auth = credentials.for_role(config, "supervisor", url)
    nc = await connection.connect(
        url,
        name="setup",
        connect_timeout=15.0,
        user=auth.user,
        password=auth.password,
        creds_file=auth.creds_file,
    )
    try:
        fence.fenced_appends(nc, url, allow_unfenced=config.allow_unfenced)
        js = nc.jetstream()
        await streams.wait_for_streams(
            js, dedup_window=config.dedup_window, replicas=config.replicas, timeout=SETUP_WAIT
        )
        # Streams made earlier keep their replicas at every start; setup is where they change
        # (JetStream moves a stream to more or fewer servers online).
        names = [c.name or "" for c in streams.stream_configs()] + [
            subjects.IMAGES_STREAM,
            *(subjects.bucket_stream(bucket) for bucket in subjects.BUCKETS),
        ]
        for name in names:
            info = await js.stream_info(name)
            if (info.config.num_replicas or 1) != config.replicas:
                was = info.config.num_replicas or 1
                info.config.num_replicas = config.replicas
                await streams.creating(
                    name, "is missing", js.update_stream(config=info.config), replicas=config.replicas
                )
                log.info("stream %s: %d replicas, was %d", name, config.replicas, was)
    finally:
        await nc.close()
    print(
        f"streams and buckets ready on {credentials.redact(url)}, "
        f"{config.replicas} replica{'s' if config.replicas > 1 else ''} each",
        flush=True,
    )
    return 0
