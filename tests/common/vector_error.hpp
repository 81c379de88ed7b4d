#pragma once
// The op tests' error measure: ||got - want|| / ||want|| over two float vectors (infinite when got
// holds a NaN or an infinity, so that a missed element of a NaN-poisoned output fails).
#include <cmath>
#include <vector>

namespace twinfer::test {

inline double l2_relative_error(const std::vector<float>& got, const std::vector<float>& want) {
    double diff = 0, norm = 0;
    for (size_t i = 0; i < want.size(); ++i) {
        if (!std::isfinite(got[i])) return INFINITY;
        diff += (double(got[i]) - want[i]) * (double(got[i]) - want[i]);
        norm += double(want[i]) * want[i];
    }
    return std::sqrt(diff / norm);
}

}  // namespace twinfer::test
