#!/usr/bin/env python3
"""twinfer serve's chat page (GET /) in headless Chromium, driven by Playwright (PyPI) with the
system browser (Debian's chromium): an error is shown, an answer streams in and equals the same
request made without the page, the conversation is sent back whole, Stop ends a stream and the
server counts the sequence as cancelled, a server that dies mid-answer is shown as an error. Leaves a screenshot at --screenshot.

Usage: chat_page_test.py --twinfer build/apps/twinfer --model models/SmolLM2-135M-Instruct.Q4_1.gguf
                         --screenshot build/chat_page.png [--chromium /usr/bin/chromium]
Exits non-zero on the first failed check (unittest)."""
import argparse
import json
import re
import subprocess
import sys
import time
import unittest
import urllib.request

from playwright.sync_api import sync_playwright

API_KEY = "sk-twinfer-page-test"
ARGS = None
QUESTION = "What is the capital of France?"
LONG_QUESTION = "Write a very long story about a dragon who learns to fly."


def request(base_url, path, body=None):
    req = urllib.request.Request(base_url + path, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Authorization": "Bearer " + API_KEY, "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return r.read().decode()


def metric(base_url, name):
    match = re.search(rf"^{name} (\S+)$", request(base_url, "/metrics"), re.M)
    if not match:
        raise AssertionError(f"/metrics has no {name}")
    return float(match.group(1))


class ChatPage(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = subprocess.Popen(
            [ARGS.twinfer, "serve", "-m", ARGS.model, "--port", "0", "--parallel", "2", "-c", "2048", "--api-key", API_KEY,
             "--no-progress"], stdout=subprocess.PIPE, text=True)
        cls.base_url = "http://127.0.0.1:" + cls.server.stdout.readline().strip().rsplit(":", 1)[1]
        for _ in range(600):
            try:
                urllib.request.urlopen(cls.base_url + "/health")
                break
            except Exception:
                time.sleep(0.1)
        cls.playwright = sync_playwright().start()
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        cls.browser = cls.playwright.chromium.launch(executable_path=ARGS.chromium, args=["--no-sandbox"])
        cls.page = cls.browser.new_page()
        cls.page_errors = []
        cls.page.on("pageerror", lambda e: cls.page_errors.append(str(e)))
        cls.sent_bodies = []
        cls.page.on("request", lambda r: r.url.endswith("/v1/chat/completions") and cls.sent_bodies.append(json.loads(r.post_data)))
        cls.page.goto(cls.base_url + "/")

    @classmethod
    def tearDownClass(cls):
        cls.browser.close()
        cls.playwright.stop()
        cls.server.terminate()
        cls.server.wait(timeout=30)

    def ask(self, text):
        self.page.fill("#prompt", text)
        self.page.press("#prompt", "Enter")

    def wait_until_idle(self):
        self.page.wait_for_selector("#send:not([disabled])", timeout=120_000)

    def test_page(self):
        page = self.page
        self.assertEqual(page.title(), "twinfer chat")

        # Without the key: the server's 401 message is shown, and the question is not kept.
        self.ask(QUESTION)
        self.wait_until_idle()
        self.assertIn("no API key given", page.inner_text(".message.error"))

        page.fill("#key", API_KEY)
        page.dispatch_event("#key", "change")
        page.wait_for_function("document.getElementById('model').textContent.endsWith('.gguf')")
        page.fill("#temperature", "0")
        page.fill("#max-tokens", "24")

        # Record every length the answer's text passes through: a streamed answer grows in steps.
        page.evaluate("""() => {
            window.lengths = [];
            new MutationObserver(() => {
                const answers = document.querySelectorAll('.message.assistant');
                if (answers.length) window.lengths.push(answers[answers.length - 1].textContent.length);
            }).observe(document.getElementById('log'), {childList: true, subtree: true, characterData: true});
        }""")
        self.ask(QUESTION)
        self.wait_until_idle()
        answer = page.inner_text(".message.assistant >> nth=-1")
        expected = json.loads(request(self.base_url, "/v1/chat/completions",
                                      {"messages": [{"role": "user", "content": QUESTION}], "temperature": 0, "max_tokens": 24}))
        self.assertEqual(answer.strip(), expected["choices"][0]["message"]["content"].strip())
        self.assertIn("Paris", answer)
        lengths = sorted(set(page.evaluate("window.lengths")))
        self.assertGreaterEqual(len([n for n in lengths if 0 < n < len(answer)]), 3, f"not streamed: lengths {lengths}")
        stats = page.inner_text("#stats")
        self.assertRegex(stats, r"^\d+ tokens, \d+\.\d tokens/s$")
        self.assertGreater(float(stats.split(", ")[1].split()[0]), 0)

        # A second question sends the whole conversation; Stop ends it mid-stream.
        cancelled = metric(self.base_url, "twinfer_sequences_cancelled_total")
        page.fill("#max-tokens", "1500")
        self.ask(LONG_QUESTION)
        page.wait_for_function("document.querySelectorAll('.message.assistant')[1].textContent.length > 40", timeout=120_000)
        self.assertTrue(page.is_enabled("#stop"), "the answer ended before Stop could be pressed")
        page.click("#stop")
        self.wait_until_idle()
        self.assertTrue(page.is_disabled("#stop"))
        stopped = page.inner_text(".message.assistant >> nth=-1")
        self.assertTrue(stopped.endswith("[stopped]"), stopped)
        time.sleep(1)
        self.assertEqual(page.inner_text(".message.assistant >> nth=-1"), stopped)
        for _ in range(100):
            if metric(self.base_url, "twinfer_sequences_cancelled_total") > cancelled:
                break
            time.sleep(0.1)
        self.assertEqual(metric(self.base_url, "twinfer_sequences_cancelled_total"), cancelled + 1)
        self.assertEqual(metric(self.base_url, "twinfer_sequences_running"), 0)
        self.assertEqual([m["role"] for m in self.sent_bodies[-1]["messages"]], ["user", "assistant", "user"])
        self.assertEqual(self.sent_bodies[-1]["messages"][1]["content"].strip(), answer.strip())

        page.screenshot(path=ARGS.screenshot, full_page=True)

        # The server dies mid-answer: the answer is marked as failed, not shown as complete.
        self.ask(LONG_QUESTION)
        page.wait_for_function("document.querySelectorAll('.message.assistant').length == 3 && "
                               "document.querySelectorAll('.message.assistant')[2].textContent.length > 40", timeout=120_000)
        self.server.kill()
        self.wait_until_idle()
        self.assertEqual(page.locator(".message.error").count(), 2)
        self.assertNotIn("[stopped]", page.inner_text(".message.error >> nth=-1"))
        self.assertEqual(self.page_errors, [])


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--twinfer", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--screenshot", required=True)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    ARGS, rest = parser.parse_known_args()
    unittest.main(argv=[sys.argv[0]] + rest)
