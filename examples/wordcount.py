"""Word count: the streamtrio demo, on the embedded memory:// broker.

    streamtrio run examples/wordcount.py

A task feeds sentences into the ``sentences`` topic, an agent splits them
into words and counts them, and a timer prints the top words every two
seconds. Ctrl-C stops the worker gracefully (drain, commit, close).
"""

import itertools
import random
from collections import Counter

import trio

import streamtrio

app = streamtrio.App("wordcount", broker="memory://", store="memory://", web_enabled=False)

sentences = app.topic("sentences", value_type=str, partitions=4)
counts: Counter[str] = Counter()

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "structured concurrency makes stream processing honest",
    "every event is acked when the agent is done with it",
    "the commit never skips an event that is still in flight",
]


@app.agent(sentences, concurrency=2)
async def count_words(stream: streamtrio.Stream[str]) -> None:
    async for sentence in stream:
        counts.update(sentence.split())


@app.task
async def feed() -> None:
    rng = random.Random(7)
    for n in itertools.count():
        await sentences.send(key=str(n), value=rng.choice(CORPUS))
        if n % 100 == 99:
            await trio.sleep(0.5)  # about 200 sentences a second


@app.timer(interval=2.0)
async def report() -> None:
    top = ", ".join(f"{word}={n}" for word, n in counts.most_common(5))
    print(f"{sum(counts.values())} words counted; top: {top}", flush=True)


if __name__ == "__main__":
    app.main()
