#!/usr/bin/env python3
"""Writes llama.cpp's token ids for the tokenizer corpus: the goldens tests/tokenizer/corpus_test.cpp
checks twinfer against.

  tests/data/tokenizer_corpus/goldens/<vocabulary>.txt
      every vocabulary in tests/data/third_party/tokenizers/*.gguf on every corpus file;
  tests/data/tokenizer_corpus/goldens/pre/<pre>.txt
      every `tokenizer.ggml.pre` name llama.cpp knows (read from its src/llama-vocab.cpp), set in a
      copy of a real vocabulary: ggml-vocab-qwen2 for byte-level BPE, ggml-vocab-gemma-4 (as model
      gpt2) for the pre-tokenizers that keep raw UTF-8.

Each line is `<corpus file>\t<ids separated by spaces>`: the file's bytes as they are, no BOS/EOS,
special tokens left as text (llama-tokenize --no-bos --no-parse-special --no-escape).

usage: tools/make_tokenizer_goldens.py [--llama-tokenize PATH] [--llama-src DIR]
"""
import argparse
import concurrent.futures
import pathlib
import re
import struct
import subprocess
import tempfile

import gguf

REPO = pathlib.Path(__file__).resolve().parent.parent
VOCABS = REPO / "tests/data/third_party/tokenizers"
CORPUS = REPO / "tests/data/tokenizer_corpus"
GOLDENS = CORPUS / "goldens"
# Pre-tokenizers that keep words as raw UTF-8 (llama.cpp: byte_encode = false), so they are
# checked on a SentencePiece-style BPE vocabulary.
RAW_UTF8_PRES = {"gemma4", "granite-embed-multi-311m", "sarvam-moe"}
# "whitespace" belongs to tokenizer.ggml.model = whitespace (a tokenizer twinfer does not have);
# under gpt2, llama.cpp aborts on the first space or newline its BPE merge lookup sees.
UNCHECKED_PRES = {"whitespace"}


def llama_ids(tool, vocab, text_file):
    out = subprocess.run([tool, "-m", str(vocab), "-f", str(text_file), "--ids", "--no-bos", "--no-parse-special",
                          "--no-escape", "--log-disable"], check=True, capture_output=True, text=True).stdout
    match = re.search(r"^\[([0-9, ]*)\]$", out, re.M)
    if not match:
        raise RuntimeError(f"{tool} on {vocab} and {text_file}: no id list in its output:\n{out}")
    return match.group(1).replace(",", "")


def write_goldens(tool, vocab, golden):
    lines = [f"{text.name}\t{llama_ids(tool, vocab, text)}\n" for text in sorted(CORPUS.glob("*.txt"))]
    golden.parent.mkdir(parents=True, exist_ok=True)
    golden.write_text("".join(lines), encoding="utf-8")
    return golden


def as_gpt2(source, target):
    """A copy of the vocabulary-only GGUF `source` that says tokenizer.ggml.model = gpt2, pre = default."""
    reader = gguf.GGUFReader(source)
    writer = gguf.GGUFWriter(target, arch=None)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in ("tokenizer.ggml.model", "tokenizer.ggml.pre"):
            continue
        kind = field.types[0]
        if kind == gguf.GGUFValueType.ARRAY:
            sub = field.types[1]
            values = [bytes(field.parts[i]) if sub == gguf.GGUFValueType.STRING else field.parts[i][0].item()
                      for i in field.data]
            writer.add_key_value(key, values, kind, sub_type=sub)
        elif kind == gguf.GGUFValueType.STRING:
            writer.add_key_value(key, bytes(field.parts[field.data[0]]).decode("utf-8"), kind)
        else:
            writer.add_key_value(key, field.parts[field.data[0]][0].item(), kind)
    writer.add_key_value("tokenizer.ggml.model", "gpt2", gguf.GGUFValueType.STRING)
    writer.add_key_value("tokenizer.ggml.pre", "default", gguf.GGUFValueType.STRING)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def with_pre(source, target, pre):
    """`source` with the string value of tokenizer.ggml.pre replaced, spliced in place: rewriting a
    150k-token vocabulary with the gguf package for each of ~90 names would take half an hour.
    The files have no tensors, so nothing after the key-value section moves."""
    data = source.read_bytes()
    key = b"tokenizer.ggml.pre"
    header = struct.pack("<Q", len(key)) + key + struct.pack("<I", gguf.GGUFValueType.STRING)
    start = data.index(header) + len(header)
    (old_length,) = struct.unpack_from("<Q", data, start)
    value = pre.encode("utf-8")
    target.write_bytes(data[:start] + struct.pack("<Q", len(value)) + value + data[start + 8 + old_length:])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llama-tokenize", default="/work/llama/build/bin/llama-tokenize")
    parser.add_argument("--llama-src", default="/work/llama/llama_cpp_python-0.3.36/vendor/llama.cpp")
    args = parser.parse_args()

    vocab_source = (pathlib.Path(args.llama_src) / "src/llama-vocab.cpp").read_text(encoding="utf-8")
    pres = list(dict.fromkeys(re.findall(r'tokenizer_pre == "([^"]+)"', vocab_source)))

    with tempfile.TemporaryDirectory() as tmp, concurrent.futures.ThreadPoolExecutor(2) as pool:
        tmp = pathlib.Path(tmp)
        jobs = [pool.submit(write_goldens, args.llama_tokenize, vocab, GOLDENS / f"{vocab.stem}.txt")
                for vocab in sorted(VOCABS.glob("*.gguf"))]
        raw_base = tmp / "gemma-4-as-gpt2.gguf"
        as_gpt2(VOCABS / "ggml-vocab-gemma-4.gguf", raw_base)
        for pre in (p for p in pres if p not in UNCHECKED_PRES):
            vocab = tmp / f"{pre}.gguf"
            with_pre(raw_base if pre in RAW_UTF8_PRES else VOCABS / "ggml-vocab-qwen2.gguf", vocab, pre)
            jobs.append(pool.submit(write_goldens, args.llama_tokenize, vocab, GOLDENS / "pre" / f"{pre}.txt"))
        for job in jobs:
            print(job.result().relative_to(REPO))


if __name__ == "__main__":
    main()
