// prunekit's compiled sparse kernel: out = x @ W.T + bias, W stored as CSR (int32 indices).
//
// Built on first use by prunekit/deploy/native_kernel.py with torch.utils.cpp_extension, for
// the CPU it runs on (-march=native). Work is split over blocks of rows with at::parallel_for,
// so it uses torch's own thread pool and thread count.
//
// A block of L rows (L = 32 bytes / element size: 8 floats or 4 doubles) is first copied
// feature-major into a small scratch buffer, so that one input feature's L values are one
// vector; each output unit is then the sum, over its row's nonzeros, of value * that vector. A
// call with a single row takes the plain gather-and-dot path instead.

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/csrc/utils/pybind.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace {

// below this many multiply-adds a call runs on one thread
constexpr int64_t kParallelWork = int64_t(1) << 16;

template <typename T>
struct Csr {
  const T* values;
  const int32_t* cols;
  const int32_t* offsets;
  const T* bias;  // nullptr: no bias
  int64_t n_out;
  int64_t n_in;
};

// Sum over output unit i's nonzeros of value * features[column]: Acc is a scalar for one row or a
// vector of several rows' values of one feature; four partial sums keep the multiply-adds from
// waiting on each other.
template <typename Acc, typename T>
Acc unit_sum(const Csr<T>& w, int64_t i, const Acc* features) {
  Acc a0 = {}, a1 = {}, a2 = {}, a3 = {};
  int64_t k = w.offsets[i];
  const int64_t end = w.offsets[i + 1];
  for (; k + 4 <= end; k += 4) {
    a0 += w.values[k] * features[w.cols[k]];
    a1 += w.values[k + 1] * features[w.cols[k + 1]];
    a2 += w.values[k + 2] * features[w.cols[k + 2]];
    a3 += w.values[k + 3] * features[w.cols[k + 3]];
  }
  for (; k < end; ++k) a0 += w.values[k] * features[w.cols[k]];
  return (a0 + a1) + (a2 + a3);
}

template <typename T>
void single_row(const Csr<T>& w, const T* x, T* out) {
  for (int64_t i = 0; i < w.n_out; ++i) out[i] = unit_sum(w, i, x) + (w.bias ? w.bias[i] : T(0));
}

template <typename T>
void row_block(const Csr<T>& w, const T* x, int64_t rows, int64_t first, T* scratch, T* out) {
  typedef T Vec __attribute__((vector_size(32)));
  constexpr int64_t lanes = 32 / sizeof(T);
  const int64_t used = std::min<int64_t>(lanes, rows - first);
  // lanes past the last row repeat it (their sums are computed and dropped); reading the rows
  // side by side, one feature at a time, writes the scratch in order
  const T* source[lanes];
  for (int64_t lane = 0; lane < lanes; ++lane) {
    source[lane] = x + (first + std::min(lane, used - 1)) * w.n_in;
  }
  for (int64_t c = 0; c < w.n_in; ++c) {
    T* to = scratch + c * lanes;
    for (int64_t lane = 0; lane < lanes; ++lane) to[lane] = source[lane][c];
  }
  const Vec* features = reinterpret_cast<const Vec*>(scratch);
  for (int64_t i = 0; i < w.n_out; ++i) {
    const Vec sum = unit_sum(w, i, features);
    const T b = w.bias ? w.bias[i] : T(0);
    for (int64_t lane = 0; lane < used; ++lane) out[(first + lane) * w.n_out + i] = sum[lane] + b;
  }
}

template <typename T>
void run(const Csr<T>& w, const T* x, int64_t rows, T* out) {
  if (rows == 1) {
    single_row(w, x, out);
    return;
  }
  constexpr int64_t lanes = 32 / sizeof(T);
  const int64_t blocks = (rows + lanes - 1) / lanes;
  // handing work to a second thread costs about as much as tens of thousands of multiply-adds: smaller
  // products run on the calling thread alone (a grain of all blocks keeps at::parallel_for inline)
  const int64_t work = static_cast<int64_t>(w.offsets[w.n_out]) * rows;
  const int64_t grain = work < kParallelWork ? blocks : 1;
  at::parallel_for(0, blocks, grain, [&](int64_t begin, int64_t end) {
    // lanes extra elements leave room to align the scratch to the vector size
    std::vector<T> buffer(w.n_in * lanes + lanes);
    auto address = reinterpret_cast<std::uintptr_t>(buffer.data());
    T* scratch = reinterpret_cast<T*>((address + 31) & ~std::uintptr_t(31));
    for (int64_t block = begin; block < end; ++block) {
      row_block(w, x, rows, block * lanes, scratch, out);
    }
  });
}

// x: (rows, in_features) contiguous; returns (rows, out_features)
at::Tensor sparse_linear(const at::Tensor& values, const at::Tensor& cols, const at::Tensor& offsets,
                         const at::Tensor& x, const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "x must be a contiguous 2-D tensor");
  for (const at::Tensor* tensor : {&values, &cols, &offsets, &x}) {
    TORCH_CHECK(tensor->device().is_cpu() && tensor->is_contiguous(),
                "prunekit's sparse kernel runs contiguous CPU tensors");
  }
  TORCH_CHECK(!bias.has_value() || (bias->device().is_cpu() && bias->is_contiguous()),
              "prunekit's sparse kernel runs contiguous CPU tensors");
  TORCH_CHECK(values.scalar_type() == x.scalar_type(), "values and x must have one dtype");
  TORCH_CHECK(cols.scalar_type() == at::kInt && offsets.scalar_type() == at::kInt,
              "CSR indices must be int32");
  TORCH_CHECK(!bias.has_value() || bias->scalar_type() == x.scalar_type(),
              "bias and x must have one dtype");
  // the CSR arrays must describe a matrix whose nonzeros lie in values / cols (O(out) checks;
  // the column bound, O(nonzeros), is checked by the Python wrapper, and SparseLinear builds its
  // own arrays)
  TORCH_CHECK(offsets.dim() == 1 && offsets.size(0) >= 1, "row offsets must be a non-empty 1-D tensor");
  const int64_t n_out = offsets.size(0) - 1;
  const int32_t* offset = offsets.data_ptr<int32_t>();
  TORCH_CHECK(offset[0] == 0 && offset[n_out] == values.numel() && values.numel() == cols.numel(),
              "row offsets must run from 0 to the number of values, one column index per value");
  for (int64_t i = 0; i < n_out; ++i) TORCH_CHECK(offset[i] <= offset[i + 1], "row offsets must not decrease");
  TORCH_CHECK(!bias.has_value() || bias->numel() == n_out, "bias must hold one value per output unit");
  const int64_t rows = x.size(0);
  at::Tensor out = at::empty({rows, n_out}, x.options());
  if (rows == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "prunekit_sparse_linear", [&] {
    const Csr<scalar_t> w{values.data_ptr<scalar_t>(), cols.data_ptr<int32_t>(),
                          offsets.data_ptr<int32_t>(),
                          bias.has_value() ? bias->data_ptr<scalar_t>() : nullptr, n_out, x.size(1)};
    run(w, x.data_ptr<scalar_t>(), rows, out.data_ptr<scalar_t>());
  });
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("sparse_linear", &sparse_linear, "out = x @ W.T + bias with W in CSR (int32 indices)");
}
