#!/usr/bin/env python3
"""twinfer serve through the official `openai` Python client (PyPI): plain and streamed chat and
completions, logprobs in OpenAI's shape, usage, and errors as the client's exceptions.

Usage: openai_client_test.py --twinfer build/apps/twinfer --model models/SmolLM2-135M-Instruct.Q4_1.gguf
Exits non-zero on the first failed check (unittest)."""
import argparse
import json
import math
import subprocess
import sys
import time
import unittest
import urllib.request

import openai

API_KEY = "sk-twinfer-test"
ARGS = None
SERVER = None
BASE_URL = None


def start_server():
    global SERVER, BASE_URL
    SERVER = subprocess.Popen(
        [ARGS.twinfer, "serve", "-m", ARGS.model, "--port", "0", "--parallel", "4", "-c", "1024", "--api-key", API_KEY,
         "--no-progress"],
        stdout=subprocess.PIPE, text=True)
    line = SERVER.stdout.readline()
    port = int(line.strip().rsplit(":", 1)[1])
    BASE_URL = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            with urllib.request.urlopen(BASE_URL + "/health") as r:
                if r.status == 200:
                    return
        except Exception:
            time.sleep(0.1)
    raise RuntimeError("twinfer serve did not become healthy")


def client(key=API_KEY):
    return openai.OpenAI(base_url=BASE_URL + "/v1", api_key=key, max_retries=0, timeout=120)


MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


class ChatCompletions(unittest.TestCase):
    def test_plain(self):
        r = client().chat.completions.create(model="smollm2", messages=MESSAGES, temperature=0, max_tokens=16)
        self.assertEqual(r.object, "chat.completion")
        self.assertTrue(r.id.startswith("chatcmpl-"))
        self.assertEqual(len(r.choices), 1)
        self.assertEqual(r.choices[0].message.role, "assistant")
        self.assertIn("Paris", r.choices[0].message.content)
        self.assertIn(r.choices[0].finish_reason, ("stop", "length"))
        self.assertGreater(r.usage.prompt_tokens, 0)
        self.assertEqual(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens)
        self.assertIsNotNone(r.usage.prompt_tokens_details)
        self.assertGreaterEqual(r.usage.prompt_tokens_details.cached_tokens, 0)

    def test_streamed_equals_plain(self):
        plain = client().chat.completions.create(model="smollm2", messages=MESSAGES, temperature=0, max_tokens=16)
        chunks = list(client().chat.completions.create(model="smollm2", messages=MESSAGES, temperature=0, max_tokens=16,
                                                       stream=True, stream_options={"include_usage": True}))
        self.assertEqual(chunks[0].choices[0].delta.role, "assistant")
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        self.assertEqual(text, plain.choices[0].message.content)
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        self.assertEqual(finishes, [plain.choices[0].finish_reason])
        self.assertEqual(chunks[-1].choices, [])   # the usage chunk comes last
        self.assertEqual(chunks[-1].usage.completion_tokens, plain.usage.completion_tokens)
        self.assertTrue(all(c.usage is None for c in chunks[:-1]))

    def test_logprobs_shape(self):
        r = client().chat.completions.create(model="smollm2", messages=MESSAGES, temperature=0, max_tokens=6, logprobs=True,
                                             top_logprobs=3)
        content = r.choices[0].logprobs.content
        self.assertEqual(len(content), r.usage.completion_tokens - (1 if r.choices[0].finish_reason == "stop" else 0))
        for entry in content:
            self.assertIsInstance(entry.token, str)
            self.assertLessEqual(entry.logprob, 0.0)
            self.assertEqual(bytes(entry.bytes).decode("utf-8", "replace"), entry.token)
            self.assertEqual(len(entry.top_logprobs), 3)
            # Greedy: the sampled token is the most likely one, first among the alternatives.
            self.assertEqual(entry.top_logprobs[0].token, entry.token)
            self.assertAlmostEqual(entry.top_logprobs[0].logprob, entry.logprob, places=9)
            probs = [math.exp(t.logprob) for t in entry.top_logprobs]
            self.assertEqual(probs, sorted(probs, reverse=True))
            self.assertLessEqual(sum(probs), 1.0 + 1e-9)

    def test_n_and_seed(self):
        a = client().chat.completions.create(model="smollm2", messages=MESSAGES, temperature=1.0, max_tokens=12, n=2, seed=7)
        b = client().chat.completions.create(model="smollm2", messages=MESSAGES, temperature=1.0, max_tokens=12, n=2, seed=7)
        self.assertEqual([c.index for c in a.choices], [0, 1])
        self.assertEqual([c.message.content for c in a.choices], [c.message.content for c in b.choices])

    def test_stop(self):
        r = client().chat.completions.create(model="smollm2", messages=MESSAGES, temperature=0, max_tokens=30, stop=["Paris"])
        self.assertEqual(r.choices[0].finish_reason, "stop")
        self.assertNotIn("Paris", r.choices[0].message.content)


class Completions(unittest.TestCase):
    def test_plain_and_streamed(self):
        plain = client().completions.create(model="smollm2", prompt="Once upon a time", temperature=0, max_tokens=12)
        self.assertEqual(plain.object, "text_completion")
        self.assertEqual(plain.usage.completion_tokens, 12)
        self.assertEqual(plain.choices[0].finish_reason, "length")
        streamed = list(client().completions.create(model="smollm2", prompt="Once upon a time", temperature=0, max_tokens=12,
                                                    stream=True))
        self.assertEqual("".join(c.choices[0].text for c in streamed), plain.choices[0].text)

    def test_logprobs_shape(self):
        r = client().completions.create(model="smollm2", prompt="The sky is", temperature=0, max_tokens=5, logprobs=2)
        lp = r.choices[0].logprobs
        self.assertEqual(len(lp.tokens), 5)
        self.assertEqual(len(lp.token_logprobs), 5)
        self.assertEqual(len(lp.top_logprobs), 5)
        self.assertEqual(len(lp.text_offset), 5)
        self.assertEqual("".join(lp.tokens), r.choices[0].text)
        for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
            self.assertEqual(len(top), 2)
            self.assertAlmostEqual(max(top.values()), logprob, places=9)
            self.assertEqual(max(top, key=top.get), token)

    def test_token_prompt(self):
        ids = json.loads(urllib.request.urlopen(urllib.request.Request(
            BASE_URL + "/tokenize", data=json.dumps({"content": "Once upon a time"}).encode(),
            headers={"Authorization": "Bearer " + API_KEY})).read())["tokens"]
        by_ids = client().completions.create(model="smollm2", prompt=ids, temperature=0, max_tokens=8)
        by_text = client().completions.create(model="smollm2", prompt="Once upon a time", temperature=0, max_tokens=8)
        self.assertEqual(by_ids.choices[0].text, by_text.choices[0].text)


class Errors(unittest.TestCase):
    def test_wrong_key(self):
        with self.assertRaises(openai.AuthenticationError) as e:
            client("sk-wrong").chat.completions.create(model="smollm2", messages=MESSAGES)
        self.assertEqual(e.exception.status_code, 401)
        self.assertEqual(e.exception.code, "invalid_api_key")

    def test_bad_values(self):
        for kwargs, param in [({"temperature": -1}, "temperature"), ({"max_tokens": -5}, "max_tokens"), ({"n": 0}, "n"),
                              ({"top_p": 7}, "top_p"), ({"logit_bias": {"abc": 1}}, "logit_bias")]:
            with self.assertRaises(openai.BadRequestError) as e:
                client().chat.completions.create(model="smollm2", messages=MESSAGES, **kwargs)
            self.assertEqual(e.exception.status_code, 400)
            self.assertEqual(e.exception.param, param, kwargs)
            self.assertEqual(e.exception.type, "invalid_request_error")

    def test_context_exceeded(self):
        with self.assertRaises(openai.BadRequestError) as e:
            client().completions.create(model="smollm2", prompt=[1000] * 1100, max_tokens=1)
        self.assertEqual(e.exception.code, "context_length_exceeded")
        self.assertIn("1024", e.exception.message)
        self.assertIn("1100", e.exception.message)

    def test_models(self):
        models = client().models.list()
        self.assertEqual(len(models.data), 1)
        self.assertEqual(models.data[0].object, "model")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--twinfer", required=True)
    parser.add_argument("--model", required=True)
    ARGS, rest = parser.parse_known_args()
    start_server()
    try:
        result = unittest.main(argv=[sys.argv[0]] + rest, exit=False, verbosity=2).result
    finally:
        SERVER.terminate()
        SERVER.wait(timeout=30)
    sys.exit(0 if result.wasSuccessful() else 1)
