#!/usr/bin/env python3
"""twinfer serve through the official `openai` Python client (PyPI): plain and streamed chat and
completions, logprobs in OpenAI's shape, usage, structured output (json_schema) and tool calls
(the server runs SmolLM2 with the tool-calling ChatML template of tests/data/chat_templates, which
renders a conversation without tools as the model's own template does), and errors as the
client's exceptions.

Usage: openai_client_test.py --twinfer build/apps/twinfer --model models/SmolLM2-135M-Instruct.Q4_1.gguf
Exits non-zero on the first failed check (unittest)."""
import argparse
import json
import math
import pathlib
import subprocess
import sys
import time
import unittest
import urllib.request

import openai

TOOL_TEMPLATE = str(pathlib.Path(__file__).resolve().parent.parent / "data" / "chat_templates" / "chatml_tools.jinja")

API_KEY = "sk-twinfer-test"
ARGS = None
SERVER = None
BASE_URL = None


def start_server():
    global SERVER, BASE_URL
    SERVER = subprocess.Popen(
        [ARGS.twinfer, "serve", "-m", ARGS.model, "--port", "0", "--parallel", "4", "-c", "1024", "--api-key", API_KEY,
         "--no-progress", "--chat-template-file", TOOL_TEMPLATE],
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

    def test_echo_scores_a_continuation_as_lm_evaluation_harness_does(self):
        # lm-evaluation-harness's loglikelihood: context + continuation echoed with logprobs=1,
        # the continuation's token logprobs summed, "greedy" when each is its position's top token.
        ids = json.loads(urllib.request.urlopen(urllib.request.Request(
            BASE_URL + "/tokenize", data=json.dumps({"content": "The capital of France is Paris"}).encode(),
            headers={"Authorization": "Bearer " + API_KEY})).read())["tokens"]
        r = client().completions.create(model="smollm2", prompt=[ids], temperature=0, max_tokens=0, logprobs=1, echo=True)
        lp = r.choices[0].logprobs
        self.assertEqual(len(lp.tokens), len(ids))
        self.assertIsNone(lp.token_logprobs[0])
        self.assertIsNone(lp.top_logprobs[0])
        self.assertEqual(r.choices[0].text, "The capital of France is Paris")
        self.assertEqual(r.usage.completion_tokens, 0)
        for token, logprob, top in zip(lp.tokens[1:], lp.token_logprobs[1:], lp.top_logprobs[1:]):
            self.assertLess(logprob, 0.0)
            self.assertEqual(len(top), 1)
            self.assertGreaterEqual(max(top.values()), logprob)
        # The last token's logprob is what a greedy completion of the rest reports for it when it
        # is the greedy choice there.
        rest = client().completions.create(model="smollm2", prompt=[ids[:-1]], temperature=0, max_tokens=1, logprobs=1)
        if rest.choices[0].logprobs.tokens[0] == lp.tokens[-1]:
            self.assertAlmostEqual(rest.choices[0].logprobs.token_logprobs[0], lp.token_logprobs[-1], places=4)
        else:
            self.assertLess(lp.token_logprobs[-1], rest.choices[0].logprobs.token_logprobs[0])

    def test_token_prompt(self):
        ids = json.loads(urllib.request.urlopen(urllib.request.Request(
            BASE_URL + "/tokenize", data=json.dumps({"content": "Once upon a time"}).encode(),
            headers={"Authorization": "Bearer " + API_KEY})).read())["tokens"]
        by_ids = client().completions.create(model="smollm2", prompt=ids, temperature=0, max_tokens=8)
        by_text = client().completions.create(model="smollm2", prompt="Once upon a time", temperature=0, max_tokens=8)
        self.assertEqual(by_ids.choices[0].text, by_text.choices[0].text)


CITY_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 30}, "country": {"type": "string", "maxLength": 30},
                   "population": {"type": "integer"}, "coastal": {"type": "boolean"},
                   "landmarks": {"type": "array", "items": {"type": "string", "maxLength": 30}, "maxItems": 3}},
    "required": ["city", "country", "population", "coastal", "landmarks"],
    "additionalProperties": False,
}
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40},
                                                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
WEATHER_QUESTION = [{"role": "user", "content": "What is the weather like in Paris today?"}]


class StructuredOutput(unittest.TestCase):
    def check_city(self, text):
        doc = json.loads(text)
        self.assertEqual(set(doc), set(CITY_SCHEMA["properties"]))
        self.assertIsInstance(doc["city"], str)
        self.assertIsInstance(doc["country"], str)
        self.assertIsInstance(doc["population"], int)
        self.assertIsInstance(doc["coastal"], bool)
        self.assertLessEqual(len(doc["landmarks"]), 3)
        for landmark in doc["landmarks"]:
            self.assertIsInstance(landmark, str)

    def test_json_schema(self):
        r = client().chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": "Describe Paris as JSON."}], temperature=0, max_tokens=300,
            response_format={"type": "json_schema", "json_schema": {"name": "city", "strict": True, "schema": CITY_SCHEMA}})
        self.assertEqual(r.choices[0].finish_reason, "stop")
        self.assertIsNone(r.choices[0].message.tool_calls)
        self.check_city(r.choices[0].message.content)

    def test_json_schema_streamed_sampled(self):
        text, finish = "", None
        for chunk in client().chat.completions.create(
                model="smollm2", messages=[{"role": "user", "content": "A city as JSON."}], temperature=1.2, seed=5,
                max_tokens=300, stream=True,
                response_format={"type": "json_schema", "json_schema": {"name": "city", "strict": True, "schema": CITY_SCHEMA}}):
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        self.assertEqual(finish, "stop")
        self.check_city(text)

    def check_weather_call(self, call):
        self.assertTrue(call.id.startswith("call_"))
        self.assertEqual(call.type, "function")
        self.assertEqual(call.function.name, "get_weather")
        arguments = json.loads(call.function.arguments)
        self.assertEqual(set(arguments), {"city", "unit"})
        self.assertIsInstance(arguments["city"], str)
        self.assertIn(arguments["unit"], ("celsius", "fahrenheit"))

    def test_tool_call(self):
        r = client().chat.completions.create(model="smollm2", messages=WEATHER_QUESTION, temperature=0, max_tokens=200,
                                             tools=[WEATHER_TOOL], tool_choice="required")
        choice = r.choices[0]
        self.assertEqual(choice.finish_reason, "tool_calls")
        self.assertIsNone(choice.message.content)
        self.assertEqual(len(choice.message.tool_calls), 1)
        self.check_weather_call(choice.message.tool_calls[0])

        # The call and its result go back; the model answers (with tools offered, tool_choice none).
        messages = WEATHER_QUESTION + [choice.message.model_dump(exclude_none=True),
                                       {"role": "tool", "tool_call_id": choice.message.tool_calls[0].id,
                                        "content": json.dumps({"temperature": 21, "sky": "clear"})}]
        answer = client().chat.completions.create(model="smollm2", messages=messages, temperature=0, max_tokens=40,
                                                  tools=[WEATHER_TOOL], tool_choice="none")
        self.assertIn(answer.choices[0].finish_reason, ("stop", "length"))
        self.assertIsInstance(answer.choices[0].message.content, str)

    def test_tool_call_streamed(self):
        calls, finish, roles = {}, None, []
        for chunk in client().chat.completions.create(
                model="smollm2", messages=WEATHER_QUESTION, temperature=0, max_tokens=200, stream=True, tools=[WEATHER_TOOL],
                tool_choice={"type": "function", "function": {"name": "get_weather"}}):
            self.assertEqual(chunk.object, "chat.completion.chunk")
            delta = chunk.choices[0].delta
            if delta.role:
                roles.append(delta.role)
            self.assertFalse(delta.content)
            for part in delta.tool_calls or []:
                call = calls.setdefault(part.index, {"id": None, "type": None, "name": "", "arguments": ""})
                call["id"] = part.id or call["id"]
                call["type"] = part.type or call["type"]
                call["name"] += part.function.name or ""
                call["arguments"] += part.function.arguments or ""
            finish = chunk.choices[0].finish_reason or finish
        self.assertEqual(roles, ["assistant"])
        self.assertEqual(finish, "tool_calls")
        self.assertEqual(list(calls), [0])
        self.assertTrue(calls[0]["id"].startswith("call_"))
        self.assertEqual(calls[0]["type"], "function")
        self.assertEqual(calls[0]["name"], "get_weather")
        self.assertIn(json.loads(calls[0]["arguments"])["unit"], ("celsius", "fahrenheit"))

    def test_unsupported_schema_is_refused(self):
        with self.assertRaises(openai.BadRequestError) as e:
            client().chat.completions.create(
                model="smollm2", messages=MESSAGES,
                response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {
                    "type": "object", "properties": {"zip": {"type": "string", "pattern": "^[0-9]{5}$"}}}}})
        self.assertEqual(e.exception.param, "response_format.json_schema.schema.properties.zip.pattern")
        self.assertIn("'pattern'", e.exception.message)


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
