"""An app started with ``app.main()`` (``python bound_supervised.py run --workers 2``).

At import it prints how it was started (``imported: worker I of N, argv [...]``),
so a test sees that each worker process ran this script again with its place.
Its broker is given on the command line; ``broker_request_timeout`` is short so
a worker that cannot reach it ends within a second or two.
"""

import os
import sys

import streamtrio

print(
    f"imported: worker {os.environ.get('STREAMTRIO_WORKER_INDEX')} of "
    f"{os.environ.get('STREAMTRIO_WORKER_COUNT')}, argv {sys.argv[1:]}",
    flush=True,
)

app = streamtrio.App("bound-supervised", store="memory://", web_enabled=False, broker_request_timeout=1.0)
numbers = app.topic("bound-supervised-numbers", value_type=int, partitions=2)


@app.agent(numbers)
async def consume(stream: streamtrio.Stream[int]) -> None:
    async for _ in stream:
        pass


if __name__ == "__main__":
    app.main()
