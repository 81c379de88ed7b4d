#pragma once
// A contiguous, row-major CPU tensor that owns its data. Deliberately plain: the float64
// reference uses it for weights and activations; shapes are checked where they are built.
#include <cstddef>
#include <initializer_list>
#include <numeric>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

namespace twinfer {

template <class T>
class Tensor {
public:
    Tensor() = default;
    explicit Tensor(std::vector<size_t> shape) : shape_(std::move(shape)), data_(count(shape_)) {}
    Tensor(std::initializer_list<size_t> shape) : Tensor(std::vector<size_t>(shape)) {}

    const std::vector<size_t>& shape() const { return shape_; }
    size_t dim(size_t i) const { return shape_.at(i); }
    size_t rank() const { return shape_.size(); }
    size_t size() const { return data_.size(); }

    T* data() { return data_.data(); }
    const T* data() const { return data_.data(); }
    std::span<T> span() { return data_; }
    std::span<const T> span() const { return data_; }

    // Row r of a tensor viewed as [dim(0), size/dim(0)].
    std::span<T> row(size_t r) { const size_t n = data_.size() / shape_[0]; return {data_.data() + r * n, n}; }
    std::span<const T> row(size_t r) const { const size_t n = data_.size() / shape_[0]; return {data_.data() + r * n, n}; }

    T& operator[](size_t i) { return data_[i]; }
    const T& operator[](size_t i) const { return data_[i]; }

    std::string shape_string() const {
        std::string s = "[";
        for (size_t i = 0; i < shape_.size(); ++i) s += (i ? ", " : "") + std::to_string(shape_[i]);
        return s + "]";
    }

private:
    static size_t count(const std::vector<size_t>& shape) {
        return std::accumulate(shape.begin(), shape.end(), size_t{1}, std::multiplies<>());
    }
    std::vector<size_t> shape_;
    std::vector<T> data_;
};

}  // namespace twinfer
