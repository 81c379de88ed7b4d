#pragma once
// One table of the tolerances the model and CLI tests hold the fast paths to.

namespace twinfer::test {

// The error budgets of the float32 models against the float64 reference, max |error| / max |logit|
// per position: docs/choosing-a-model.md documents each figure as measured over the agreement set
// (bench/agreement/, SmolLM2 Q4_1, 10,240 decode positions; BENCHMARKS.md "Current"), and each
// tolerance is that figure with the headroom said here (other models and texts stray differently).
// - float32 activations: rounding only, documented 3.2e-6; 1e-4 (30x).
// - int8x2 activations (the CPU's default): each value within 1/32,512 of its block's largest,
//   documented 1.1e-3; 5e-3 (4.5x).
// - a float16 KV cache (int8x2 activations, --cache-type f16): documented 3.9e-3 (BENCHMARKS.md,
//   "Long contexts"); 1e-2 (2.6x).
// - a Q8_0 KV cache (int8x2 activations, --cache-type q8_0): every cached key and value within
//   1/254 of its block's largest; documented 1.3e-1 (BENCHMARKS.md, "Q8_0 KV cache"); 2e-1 (1.6x).
// - int8 activations (as llama.cpp): each value within 1/254 of its block's largest, and the
//   residual stream carries that through every layer; documented 1.6e-1; 2e-1 (1.25x).
constexpr double kFloat32Tolerance = 1e-4;
constexpr double kInt8x2Tolerance = 5e-3;
// A float16 KV cache (--cache-type f16): every cached key and value rounded to 11 significant bits.
constexpr double kFloat16CacheTolerance = 1e-2;
constexpr double kQ8_0CacheTolerance = 2e-1;
constexpr double kInt8Tolerance = 2e-1;

}  // namespace twinfer::test
