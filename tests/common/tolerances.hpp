#pragma once
// One table of the tolerances the model and CLI tests hold the fast paths to.

namespace twinfer::test {

// The error budgets of the float32 models against the float64 reference, max |error| / max |logit|
// per position: docs/choosing-a-model.md ("Accuracy") documents each figure, measured over the
// agreement set (bench/agreement/, BENCHMARKS.md "Trust"), and each tolerance is that figure with
// the headroom said here.
// - float32 activations: rounding only, documented 1e-5 (measured ~2e-6 on SmolLM2); 10x.
// - int8x2 activations (the CPU's default): each value within 1/64,516 of its block's largest,
//   documented 2e-3; 2.5x.
// - int8 activations (as llama.cpp): each value within 1/254 of its block's largest, and the
//   residual stream carries that through every layer; documented 1.5e-1; 1.33x.
constexpr double kFloat32Tolerance = 1e-4;
constexpr double kInt8x2Tolerance = 5e-3;
constexpr double kInt8Tolerance = 2e-1;

}  // namespace twinfer::test
