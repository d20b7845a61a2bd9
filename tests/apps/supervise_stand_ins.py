"""The supervisor of ``streamtrio run --workers N``, pointed at stand-in children (no app, no broker).

``python supervise_stand_ins.py COUNT ON_EXIT STOP_TIMEOUT BACKOFF BACKOFF_MAX -- CHILD...``
runs COUNT copies of the CHILD command line (tests/apps/stand_in_worker.py) and
exits with the supervisor's exit code.
"""

import logging
import os
import sys

import trio

from streamtrio._supervisor import COUNT_ENV, INDEX_ENV, Slot, Supervisor

count, on_exit, stop_timeout, backoff, backoff_max = sys.argv[1:6]
assert sys.argv[6] == "--"
command = sys.argv[7:]
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stdout)
n = int(count)
slots = [Slot(i, command, {**os.environ, INDEX_ENV: str(i), COUNT_ENV: str(n)}) for i in range(n)]
supervisor = Supervisor(
    slots,
    on_exit="stop" if on_exit == "stop" else "restart",
    stop_timeout=float(stop_timeout),
    backoff=float(backoff),
    backoff_max=float(backoff_max),
)
sys.exit(trio.run(supervisor.run))
