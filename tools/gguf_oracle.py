#!/usr/bin/env python3
"""GGUF reference files and readings from gguf-py (the `gguf` package), for tests/format/gguf_test.cpp.

Usage:
  gguf_oracle.py write PATH   Writes a GGUF v3 file with gguf.GGUFWriter: every metadata value type,
                              arrays (nested too), unicode strings, general.alignment = 64, and
                              tensors F32, F16, Q8_0, Q4_0 (quantized with gguf.quants.quantize).
                              Each tensor's bytes also go to PATH.NAME.bin, so the test can compare
                              them without re-implementing the quantizers.
  gguf_oracle.py dump PATH    Reads PATH with gguf.GGUFReader and prints JSON:
      {"version", "alignment", "data_offset",
       "metadata": [{"key", "type", "value"}],   type: "uint8" ... "float64", "string", "array"
       "tensors":  [{"name", "type" (ggml id), "dims" (ggml order), "offset" (relative to the
                     data section), "n_elements", "n_bytes", "checksum"}]}
      Values: integers as numbers; floats as their IEEE bit pattern (an integer), so NaN, -0.0 and
      infinities compare exactly; strings as text, or {"hex": ...} when not valid UTF-8; arrays as
      {"element_type", "items"} (rebuilt from the reader's parts, so nesting is kept).
      checksum: see checksum64 below (twinfer's test computes the same).
"""
import json
import sys
import unittest.mock

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q
from gguf import GGUFValueType as V

TYPE_NAMES = {
    V.UINT8: "uint8", V.INT8: "int8", V.UINT16: "uint16", V.INT16: "int16", V.UINT32: "uint32",
    V.INT32: "int32", V.FLOAT32: "float32", V.BOOL: "bool", V.STRING: "string", V.ARRAY: "array",
    V.UINT64: "uint64", V.INT64: "int64", V.FLOAT64: "float64",
}

MASK64 = (1 << 64) - 1


def checksum64(data: bytes) -> int:
    """Position-dependent 64-bit checksum, vectorized so a 100 MB model takes well under a second.
    Bytes are zero-padded to whole little-endian u64 words w[i]; each word is mixed
    (m = (w ^ (w >> 31)) * 0x9E3779B97F4A7C15) and weighted by the odd number 2i+1; the sum of all
    terms (mod 2^64) is xor-ed with the byte length."""
    padded = data + b"\0" * (-len(data) % 8)
    w = np.frombuffer(padded, dtype="<u8")
    with np.errstate(over="ignore"):
        m = (w ^ (w >> np.uint64(31))) * np.uint64(0x9E3779B97F4A7C15)
        k = np.arange(len(w), dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        total = int(np.sum(m * k, dtype=np.uint64))
    return (total ^ len(data)) & MASK64


# --------------------------------------------------------------------------------------------
# write

F32_SPECIAL = [0.0, -0.0, 1.5, -2.25, float("inf"), float("-inf"), 1e-45, 3.4028234663852886e38, float("nan")]


def oracle_tensors() -> dict:
    """name -> (data for add_tensor, raw_dtype or None). Quantized data comes as uint8 rows of
    blocks; gguf-py derives the element shape from it."""
    rng = np.random.default_rng(260)
    # F32 values i * 0.25 - 3 (the test recomputes them), numpy shape (3, 5): ggml dims [5, 3].
    f32 = (np.arange(15, dtype=np.float32) * np.float32(0.25) - np.float32(3)).reshape(3, 5)
    f32_4d = rng.standard_normal((2, 1, 3, 2)).astype(np.float32)
    f16 = rng.standard_normal(7).astype(np.float16)            # 14 bytes: padding follows
    q8 = rng.standard_normal((4, 64)).astype(np.float32)
    q4 = rng.standard_normal((2, 32)).astype(np.float32)
    return {
        "blk.0.f32": (f32, None),
        "blk.0.f16": (f16, None),
        "blk.0.q8_0": (gguf.quants.quantize(q8, Q.Q8_0), Q.Q8_0),
        "blk.1.f32_4d": (f32_4d, None),
        "blk.1.q4_0": (gguf.quants.quantize(q4, Q.Q4_0), Q.Q4_0),
    }


def write(path: str) -> None:
    w = gguf.GGUFWriter(path, arch="oracle")
    w.add_custom_alignment(64)
    w.add_uint8("test.u8", 255)
    w.add_int8("test.i8", -128)
    w.add_uint16("test.u16", 65535)
    w.add_int16("test.i16", -32768)
    w.add_uint32("test.u32", 4294967295)
    w.add_int32("test.i32", -2147483648)
    w.add_float32("test.f32", 3.14159274101257324)   # exactly float32(pi)
    w.add_bool("test.bool_true", True)
    w.add_bool("test.bool_false", False)
    w.add_string("test.string", "hello")
    w.add_string("test.unicode", "h\u00e9llo w\u00f6rld \u2713 \u65e5\u672c\u8a9e \U0001F999")
    w.add_key_value("test.empty_string", "", V.STRING)   # add_string() skips empty strings
    w.add_uint64("test.u64", 18446744073709551615)
    w.add_int64("test.i64", -9223372036854775808)
    w.add_float64("test.f64", 2.718281828459045)
    w.add_array("test.arr_i32", [1, -2, 3, 2147483647])
    w.add_key_value("test.arr_u8", [0, 1, 254, 255], V.ARRAY, sub_type=V.UINT8)
    w.add_key_value("test.arr_i64", [-9223372036854775808, 0, 9223372036854775807], V.ARRAY, sub_type=V.INT64)
    w.add_key_value("test.arr_u64", [0, 18446744073709551615], V.ARRAY, sub_type=V.UINT64)
    w.add_key_value("test.arr_i16", [-32768, 32767], V.ARRAY, sub_type=V.INT16)
    w.add_array("test.arr_f32", F32_SPECIAL)
    w.add_key_value("test.arr_f64", [0.1, -1e300, 5e-324], V.ARRAY, sub_type=V.FLOAT64)
    w.add_array("test.arr_bool", [True, False, True])
    w.add_array("test.arr_str", ["a", "", "\u00fcnicode \U0001F999", "with\nnewline"])
    w.add_array("test.arr_nested", [[1, 2, 3], [4, 5]])
    w.add_array("test.arr_nested_str", [["x", "yz"], ["\u00e9"]])
    for name, (data, raw_dtype) in oracle_tensors().items():
        w.add_tensor(name, data, raw_dtype=raw_dtype)
        with open(f"{path}.{name}.bin", "wb") as f:
            f.write(data.tobytes())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# --------------------------------------------------------------------------------------------
# dump

def scalar_json(part: np.ndarray, vtype: V):
    if vtype == V.FLOAT32:
        return int(part.view(np.uint32)[0])
    if vtype == V.FLOAT64:
        return int(part.view(np.uint64)[0])
    if vtype == V.BOOL:
        return bool(part[0])
    return int(part[0])


def string_json(data: np.ndarray):
    raw = data.tobytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return {"hex": raw.hex()}


def decode(parts: list, i: int, vtype: V):
    """The value of type `vtype` whose parts start at parts[i]; returns (json, next index)."""
    if vtype == V.STRING:
        return string_json(parts[i + 1]), i + 2      # length, bytes
    if vtype == V.ARRAY:
        element_type = V(int(parts[i][0]))
        count = int(parts[i + 1][0])
        i += 2
        items = []
        for _ in range(count):
            item, i = decode(parts, i, element_type)
            items.append(item)
        return {"element_type": TYPE_NAMES[element_type], "items": items}, i
    return scalar_json(parts[i], vtype), i + 1


def open_reader(path: str) -> gguf.GGUFReader:
    """gguf.GGUFReader over a plain ndarray view of its mapping: the reader slices its np.memmap
    once per array item, and memmap's per-slice bookkeeping makes a 128k-token vocabulary take a
    minute; the view reads the same bytes about three times faster."""
    memmap = np.memmap

    def mapped_ndarray(file, mode="r"):
        return memmap(file, mode=mode).view(np.ndarray)

    with unittest.mock.patch.object(np, "memmap", mapped_ndarray):
        return gguf.GGUFReader(path)


def dump(path: str) -> None:
    reader = open_reader(path)
    metadata = []
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        vtype = field.types[0]
        # field.parts: key length, key bytes, value type, then the value's parts.
        value, end = decode(field.parts, 3, vtype)
        assert end == len(field.parts), key
        metadata.append({"key": key, "type": TYPE_NAMES[vtype], "value": value})
    tensors = []
    for t in reader.tensors:
        raw = reader.data[t.data_offset:t.data_offset + int(t.n_bytes)].tobytes()
        tensors.append({
            "name": t.name,
            "type": int(t.tensor_type),
            "dims": [int(d) for d in t.shape],
            "offset": int(t.data_offset) - int(reader.data_offset),
            "n_elements": int(t.n_elements),
            "n_bytes": int(t.n_bytes),
            "checksum": checksum64(raw),
        })
    out = {
        "version": int(reader.fields["GGUF.version"].parts[0][0]),
        "alignment": int(reader.alignment),
        "data_offset": int(reader.data_offset),
        "metadata": metadata,
        "tensors": tensors,
    }
    json.dump(out, sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")


def main() -> None:
    if len(sys.argv) != 3 or sys.argv[1] not in ("write", "dump"):
        sys.exit(__doc__)
    if sys.argv[1] == "write":
        write(sys.argv[2])
    else:
        dump(sys.argv[2])


if __name__ == "__main__":
    main()
