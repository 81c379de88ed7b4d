#!/usr/bin/env python3
"""Reference data for twinfer's quantization tests, made with gguf-py (gguf.quants).

Usage: quant_oracle.py OUT_DIR

Writes raw little-endian files into OUT_DIR (tests/format/quant_test.cpp reads them):
  {TYPE}.input.f32            the float32 rows quantized (the plain types get one more row of
                              special values: infinities, half overflow, rounding ties)
  {TYPE}.quant.bytes          gguf.quants.quantize(input, TYPE)       (F32 F16 BF16 Q4_0..Q8_0)
  {TYPE}.quant.f32            gguf.quants.dequantize of those bytes
  {TYPE}.random.bytes         random blocks (half-precision scales kept finite, MXFP4's exponents
                              below float overflow) for every type
  {TYPE}.random.f32           gguf.quants.dequantize of those bytes
"""
import sys
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T
from gguf import quants

QUANTIZABLE = [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0]
DEQUANTIZABLE = QUANTIZABLE + [T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.MXFP4]

# Byte offsets of the fp16 scale fields in each block; random bytes there are replaced by finite
# halves, so no NaN scale makes the comparison depend on NaN payload propagation.
HALF_FIELDS = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
}

ROW_LENGTH = 512  # two K-quant blocks, sixteen 32-element blocks


def input_rows(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    n = ROW_LENGTH
    rows = [
        np.zeros(n),                                                  # all zero: d = 0
        rng.standard_normal(n),                                       # typical weights
        rng.standard_normal(n) * 10.0 ** rng.uniform(-4, 4, n),       # large dynamic range
        -np.abs(rng.standard_normal(n)) * 3.0,                        # all negative
        rng.standard_normal(n) * 1e-6,                                # tiny: subnormal half scales
        np.repeat(rng.uniform(-5, 5, n // 32), 32),                   # constant blocks: max == min
        rng.uniform(-3e4, 3e4, n),                                    # large, still finite in half
        np.round(rng.uniform(-8, 8, n)) * 0.25,                       # exact grid values: ties
    ]
    data = np.stack(rows).astype(np.float32)
    data[1, :5] = [0.0, -0.0, 1.0, -1.0, 0.5]
    # Special values for the plain types: half overflow, rounding ties, subnormals, infinities.
    special = np.array([65504, 65519.99, 65520, 1e5, -1e5, np.inf, -np.inf, 2.0 ** -24,
                        2.0 ** -25, 3 * 2.0 ** -26, 1e-8, -0.0, 1 + 2.0 ** -11, 1 + 3 * 2.0 ** -11,
                        1 + 2.0 ** -8, 1 + 3 * 2.0 ** -8], dtype=np.float32)
    plain_row = rng.standard_normal(n).astype(np.float32)
    plain_row[:special.size] = special
    return data, plain_row


def random_blocks(rng: np.random.Generator, qtype: T, n_blocks: int) -> np.ndarray:
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    if qtype == T.F16:
        halves = raw.reshape(-1).view(np.float16)
        halves[np.isnan(halves)] = np.float16(1.5)
    for offset in HALF_FIELDS.get(qtype, []):
        magnitude = 2.0 ** rng.uniform(-20, 8, n_blocks)
        sign = np.where(rng.random(n_blocks) < 0.25, -1.0, 1.0)
        scale = (sign * magnitude).astype(np.float16)
        scale[0] = 0.0
        raw[:, offset:offset + 2] = scale.view(np.uint8).reshape(n_blocks, 2)
    if qtype == T.MXFP4:
        # E8M0 exponents: the two that are float subnormals (0, 1), the largest whose codes all stay
        # finite in float (252: 12 * 2^124), and the rest at random below it.
        raw[:, 0] = rng.integers(0, 253, size=n_blocks, dtype=np.uint8)
        raw[:3, 0] = [0, 1, 252]
    return raw.reshape(1, -1)


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20240607)

    data, plain_row = input_rows(rng)
    for qtype in QUANTIZABLE:
        rows = np.concatenate([data, plain_row[None, :]]) if qtype in (T.F32, T.F16, T.BF16) else data
        with np.errstate(over="ignore"):  # the special row overflows half on purpose
            packed = quants.quantize(rows, qtype)
        expected = quants.dequantize(packed, qtype).astype(np.float32)
        (out / f"{qtype.name}.input.f32").write_bytes(rows.astype("<f4").tobytes())
        (out / f"{qtype.name}.quant.bytes").write_bytes(packed.tobytes())
        (out / f"{qtype.name}.quant.f32").write_bytes(expected.astype("<f4").tobytes())

    for qtype in DEQUANTIZABLE:
        block_size, _ = GGML_QUANT_SIZES[qtype]
        raw = random_blocks(rng, qtype, 4096 // block_size if block_size > 1 else 4096)
        expected = quants.dequantize(raw, qtype).astype(np.float32)
        (out / f"{qtype.name}.random.bytes").write_bytes(raw.tobytes())
        (out / f"{qtype.name}.random.f32").write_bytes(expected.astype("<f4").tobytes())


if __name__ == "__main__":
    main()
