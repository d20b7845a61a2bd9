"""A worker whose process takes seconds to finalize after its graceful stop: an object
destroyed with the interpreter sleeps, as confluent-kafka's clients can while
librdkafka tears down. Python has reset SIGINT to its default action by then.
"""

import time

import streamtrio

app = streamtrio.App("slow-finalize", broker="memory://", store="memory://", web_enabled=False)


class _SlowToDestroy:
    def __del__(self) -> None:
        print("finalizing slowly", flush=True)
        time.sleep(20)


_keep = _SlowToDestroy()


@app.task
async def ready() -> None:
    print("ready", flush=True)
