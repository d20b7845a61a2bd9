"""A worker whose process takes seconds to end after its graceful stop (an atexit hook).

Stands for what follows ``run()`` in a real process (librdkafka's threads and
destructors, other atexit hooks): for the test that a second signal in that
window still exits at once with 130.
"""

import atexit
import time

import streamtrio

app = streamtrio.App("slow-exit", broker="memory://", store="memory://", web_enabled=False)


def _slow_exit() -> None:
    print("exiting slowly", flush=True)
    time.sleep(20)


atexit.register(_slow_exit)


@app.task
async def ready() -> None:
    print("ready", flush=True)
