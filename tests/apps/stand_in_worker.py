"""A stand-in for a worker process under the supervisor (tests/test_supervisor.py): no app, no broker.

It prints ``stand-in I of N ready (pid P)`` and waits for a signal. SIGTERM:
``stand-in I stopping gracefully``, exit 0 (``--term-exit CODE``: that code;
``--ignore-term``: ignored). SIGINT: ``stand-in I exits at once``, exit 130.
``--crash I``: worker I exits 3 at once every time it starts. Like a worker
process, it stops itself (SIGTERM) when the supervisor is gone.
"""

import os
import signal
import sys

from streamtrio._supervisor import stop_with_parent

index = int(os.environ["STREAMTRIO_WORKER_INDEX"])
count = int(os.environ["STREAMTRIO_WORKER_COUNT"])
args = sys.argv[1:]


def option(name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


if option("--crash") == str(index):
    print(f"stand-in {index} crashing", flush=True)
    sys.exit(3)


def on_term(signum: int, frame: object) -> None:
    if "--ignore-term" in args:
        print(f"stand-in {index} ignores SIGTERM", flush=True)
        return
    print(f"stand-in {index} stopping gracefully", flush=True)
    os._exit(int(option("--term-exit") or 0))


def on_int(signum: int, frame: object) -> None:
    print(f"stand-in {index} exits at once", flush=True)
    os._exit(130)


signal.signal(signal.SIGTERM, on_term)
signal.signal(signal.SIGINT, on_int)
stop_with_parent(0.05)
print(f"stand-in {index} of {count} ready (pid {os.getpid()})", flush=True)
while True:
    signal.pause()
