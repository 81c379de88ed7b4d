#!/usr/bin/env python3
"""The soak of bench/serve/soak.py, short: a server it starts, 8 clients for 25 s, some hanging up
mid-answer or before the first event, some sending bad requests (each kind at least once, a wrong
API key among them: --every-kind goes on past the 25 s until each was sent, so that a slow build
has them too). Correctness only, no memory or timing: the script's exit status, no
unintended error, every completed answer (greedy, or sampled with a fixed seed) equal to the same
request alone, the server's 4xx exactly the bad requests and no 5xx. Also that the comparison sees
a changed token and a changed logprob.

Usage: soak_test.py --twinfer build/apps/twinfer --model models/SmolLM2-135M-Instruct.Q4_1.gguf
Exits non-zero on the first failed check (unittest)."""
import argparse
import json
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "serve"
sys.path.insert(0, str(BENCH))
import soak  # noqa: E402

ARGS = None


class Soak(unittest.TestCase):
    def test_short_soak_every_answer_equals_the_request_alone(self):
        with tempfile.TemporaryDirectory() as scratch:
            out = Path(scratch) / "soak.json"
            run = subprocess.run([sys.executable, str(BENCH / "soak.py"), "--twinfer", ARGS.twinfer, "--model", ARGS.model,
                                  "--clients", "8", "--seconds", "25", "--pool", "12", "--max-tokens", "20", "--bad", "0.25",
                                  "--api-key", "soak-test-key", "--no-memory-check", "--no-fill", "--every-kind", "--json", str(out)],
                                 capture_output=True, text=True, timeout=400)
            sys.stdout.write(run.stdout)
            sys.stderr.write(run.stderr)
            self.assertEqual(run.returncode, 0, "soak.py failed: see its output above")
            result = json.loads(out.read_text())
        c = result["counts"]
        self.assertFalse(result["failed"])
        self.assertEqual(c["unintended"], 0, result["problems"][:5])
        self.assertEqual(c["mismatches"], 0, result["problems"][:5])
        # Each kind of traffic happened: streamed, plain and sampled answers, each kind of hang-up,
        # every kind of bad request (they come in turn).
        for key in ("answers_streamed", "answers_plain", "answers_sampled", "hangups_mid_stream",
                    "hangups_before_first_event", "hangups_plain"):
            self.assertGreater(c[key], 0, key)
        self.assertIn("wrong key", result["bad_counts"])
        for name, n in result["bad_counts"].items():
            self.assertGreater(n, 0, f"bad request '{name}' never sent")
        self.assertEqual(result["metrics_delta"]["twinfer_sequences_failed_total"], 0)
        self.assertFalse([k for k in result["server_responses"] if int(k.rsplit(" ", 1)[1]) >= 500])

    def test_the_comparison_sees_a_changed_token_and_a_changed_logprob(self):
        alone = ("Paris.", (("Paris", -0.25), (".", -0.5)), "stop", 30, 2)
        self.assertIsNone(soak.difference(alone, alone))
        self.assertIn("text, tokens differ", soak.difference(("Lyon.", (("Lyon", -0.25), (".", -0.5)), "stop", 30, 2), alone))
        self.assertIn("logprobs only", soak.difference(("Paris.", (("Paris", -0.25), (".", -0.5000001)), "stop", 30, 2), alone))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--twinfer", required=True)
    parser.add_argument("--model", required=True)
    ARGS, rest = parser.parse_known_args()
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)
