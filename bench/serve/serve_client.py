"""What bench/serve/streams.py and bench/serve/soak.py share: distinct plain-word prompts, the
events of a server-sent-event stream, and a server's resident plus swapped memory. Standard
library only."""
import json

WORDS = ("river stone lantern orchard copper meadow harbor violet thunder candle pepper marble "
         "falcon willow saddle granite velvet comet basket ember").split()

DONE = "[DONE]"


def story_prompt(i, words=90):
    """A prompt of plain words (~100 tokens for the default 90), different for every i, so that
    prompts of different i share no prefix beyond "Story "."""
    text = [WORDS[(i * 7 + k * 13 + k * k) % len(WORDS)] for k in range(words)]
    return f"Story {i}: " + " ".join(text) + ". Continue the story:"


def sse_events(lines):
    """The data of each server-sent event in an iterable of byte lines (an http.client response):
    each a parsed JSON value, DONE for `data: [DONE]`; other lines (blank, comments) are skipped."""
    for line in lines:
        line = line.strip()
        if not line.startswith(b"data: "):
            continue
        data = line[6:]
        yield DONE if data == b"[DONE]" else json.loads(data)


def server_memory_kib(pid):
    """The server's resident plus swapped memory (/proc/PID/status VmRSS + VmSwap), KiB."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value
    return sum(int(fields[key].split()[0]) for key in ("VmRSS", "VmSwap") if key in fields)
