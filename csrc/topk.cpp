// Running top-k selection for exact cosine search on the CPU, bound with pybind11 as headwater._C.
//
// The Python side (headwater/kernels/topk.py) computes each score tile with BLAS (torch matmul of
// the normalised queries against a raw key tile); this file scans the tile, scales every column by
// its key's inverse norm on the fly (so keys are never normalised as a separate pass), and merges
// the candidates into one binary heap per query row. The root of a heap is the worst result kept,
// so an element that does not enter the top-k costs one comparison. Rows run in parallel (OpenMP).
//
// Order: a result ranks above another when its score is higher, or the scores are equal and its
// index is lower. An empty slot holds (-inf, -1) and ranks below everything.
//
// Arrays arrive as numpy views of torch tensors (no copy); the heap arrays are updated in place.

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace py = pybind11;

// target_clones builds an AVX2+FMA copy of a hot loop next to the baseline one and picks it at
// load time on CPUs that have it; the extension itself stays portable (no -march flag).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define HEADWATER_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define HEADWATER_SIMD_CLONES
#endif

namespace {

// Empty slots carry index -1; for ordering they count as the largest index.
inline uint64_t index_key(int64_t index) {
  return index < 0 ? std::numeric_limits<uint64_t>::max() : static_cast<uint64_t>(index);
}

// True when (s_a, i_a) ranks strictly below (s_b, i_b).
inline bool ranks_below(float s_a, int64_t i_a, float s_b, int64_t i_b) {
  return s_a < s_b || (s_a == s_b && index_key(i_a) > index_key(i_b));
}

// Replace the root (the worst kept result) of a heap of size k by (s, i) and restore the heap.
inline void replace_root(float* hs, int64_t* hi, int64_t k, float s, int64_t i) {
  int64_t pos = 0;
  while (true) {
    int64_t child = 2 * pos + 1;
    if (child >= k) break;
    if (child + 1 < k && ranks_below(hs[child + 1], hi[child + 1], hs[child], hi[child])) ++child;
    if (!ranks_below(hs[child], hi[child], s, i)) break;  // the new entry is the worst: stop
    hs[pos] = hs[child];
    hi[pos] = hi[child];
    pos = child;
  }
  hs[pos] = s;
  hi[pos] = i;
}

// Merge one row of scores into its heap. Blocks of 16 are first reduced to their maximum, a loop
// the compiler vectorises; only a block that can hold a candidate is scanned element by element.
HEADWATER_SIMD_CLONES
void merge_row(const float* raw, const float* inv, int64_t n, int64_t offset, float* hs,
                      int64_t* hi, int64_t k) {
  constexpr int64_t kBlock = 16;
  float scaled[kBlock];
  for (int64_t start = 0; start < n; start += kBlock) {
    const int64_t len = std::min(kBlock, n - start);
    float block_max = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < len; ++j) {
      scaled[j] = raw[start + j] * inv[start + j];
      block_max = std::max(block_max, scaled[j]);
    }
    if (block_max < hs[0]) continue;  // equal to the root may still win on a lower index
    for (int64_t j = 0; j < len; ++j) {
      const int64_t index = offset + start + j;
      if (ranks_below(hs[0], hi[0], scaled[j], index)) replace_root(hs, hi, k, scaled[j], index);
    }
  }
}

std::string describe(const py::array& a) {
  std::ostringstream out;
  out << "dtype " << std::string(py::str(a.dtype())) << ", shape (";
  for (py::ssize_t d = 0; d < a.ndim(); ++d) out << (d ? ", " : "") << a.shape(d);
  out << (a.ndim() == 1 ? ",)" : ")");
  out << ((a.flags() & py::array::c_style) ? "" : ", not C-contiguous");
  return out.str();
}

// Boundary check: dtype, rank and C layout of one argument, with a message naming it.
template <typename T>
void check_array(const char* fn, const char* name, const py::array& a, py::ssize_t ndim,
                 bool writeable) {
  const bool ok = a.dtype().is(py::dtype::of<T>()) && a.ndim() == ndim &&
                  (a.flags() & py::array::c_style) && (!writeable || a.writeable());
  if (!ok) {
    std::ostringstream out;
    out << fn << ": " << name << " must be a C-contiguous " << (writeable ? "writeable " : "")
        << std::string(py::str(py::dtype::of<T>())) << " array with " << ndim
        << " dimension(s), got " << describe(a);
    throw py::value_error(out.str());
  }
}

void check_heaps(const char* fn, const py::array& heap_scores, const py::array& heap_indices) {
  check_array<float>(fn, "heap_scores", heap_scores, 2, true);
  check_array<int64_t>(fn, "heap_indices", heap_indices, 2, true);
  if (heap_scores.shape(0) != heap_indices.shape(0) || heap_scores.shape(1) != heap_indices.shape(1)) {
    throw py::value_error(std::string(fn) + ": heap_scores and heap_indices must have the same shape, got " +
                          describe(heap_scores) + " and " + describe(heap_indices));
  }
}

void topk_merge_tile(const py::array& scores, const py::array& inv_norms, int64_t offset,
                     py::array& heap_scores, py::array& heap_indices) {
  const char* fn = "topk_merge_tile";
  check_array<float>(fn, "scores", scores, 2, false);
  check_array<float>(fn, "inv_norms", inv_norms, 1, false);
  check_heaps(fn, heap_scores, heap_indices);
  const int64_t q = scores.shape(0), n = scores.shape(1), k = heap_scores.shape(1);
  if (inv_norms.shape(0) != n) {
    throw py::value_error(std::string(fn) + ": inv_norms must have one entry per score column (" +
                          std::to_string(n) + "), got " + std::to_string(inv_norms.shape(0)));
  }
  if (heap_scores.shape(0) != q) {
    throw py::value_error(std::string(fn) + ": heap rows (" + std::to_string(heap_scores.shape(0)) +
                          ") must equal score rows (" + std::to_string(q) + ")");
  }
  if (offset < 0) throw py::value_error(std::string(fn) + ": offset must be >= 0, got " + std::to_string(offset));
  if (k == 0 || n == 0 || q == 0) return;
  const float* raw = static_cast<const float*>(scores.data());
  const float* inv = static_cast<const float*>(inv_norms.data());
  float* hs = static_cast<float*>(heap_scores.mutable_data());
  int64_t* hi = static_cast<int64_t*>(heap_indices.mutable_data());
  py::gil_scoped_release release;
#pragma omp parallel for schedule(static) if (q * n > 65536)
  for (int64_t row = 0; row < q; ++row) {
    merge_row(raw + row * n, inv, n, offset, hs + row * k, hi + row * k, k);
  }
}

void topk_sort_rows(py::array& heap_scores, py::array& heap_indices) {
  check_heaps("topk_sort_rows", heap_scores, heap_indices);
  const int64_t q = heap_scores.shape(0), k = heap_scores.shape(1);
  float* hs = static_cast<float*>(heap_scores.mutable_data());
  int64_t* hi = static_cast<int64_t*>(heap_indices.mutable_data());
  py::gil_scoped_release release;
#pragma omp parallel for schedule(static) if (q * k > 4096)
  for (int64_t row = 0; row < q; ++row) {
    std::vector<std::pair<float, int64_t>> entries(k);
    for (int64_t j = 0; j < k; ++j) entries[j] = {hs[row * k + j], hi[row * k + j]};
    std::sort(entries.begin(), entries.end(), [](const auto& a, const auto& b) {
      return ranks_below(b.first, b.second, a.first, a.second);
    });
    for (int64_t j = 0; j < k; ++j) {
      hs[row * k + j] = entries[j].first;
      hi[row * k + j] = entries[j].second;
    }
  }
}

// Sum over c < d of a[c] * b[c] in float32 with 16 independent partial sums: the compiler turns
// the lane loop into SIMD code, and the independent chains hide the latency of the additions.
HEADWATER_SIMD_CLONES
float dot16(const float* a, const float* b, int64_t d) {
  float lanes[16] = {0};
  int64_t c = 0;
  for (; c + 16 <= d; c += 16) {
    for (int l = 0; l < 16; ++l) lanes[l] += a[c + l] * b[c + l];
  }
  float total = 0;
  for (; c < d; ++c) total += a[c] * b[c];
  for (int l = 0; l < 16; ++l) total += lanes[l];
  return total;
}

// bfloat16 bits (the upper half of a float32) to float32: exact.
inline float bf16_to_float(uint16_t bits) {
  const uint32_t wide = static_cast<uint32_t>(bits) << 16;
  float out;
  std::memcpy(&out, &wide, sizeof(out));
  return out;
}

// Merge one row using screening scores: `approx` holds the row's cosines from a bfloat16 GEMM of
// unit vectors, each within `eps` of the float32 cosine. A key can rank in the top-k only if its
// approximate score is at least (root - eps); only those keys get their exact score
// dot(query, key) * inv_norm in float32 (the few-query path's formula) and meet the heap (see
// kernels/topk.py for the bound). Expected exact scores per row and tile: about k·ln(n/k) heap
// entries plus the keys that land within eps below the root.
HEADWATER_SIMD_CLONES
void screened_merge_row(const uint16_t* approx, const float* query, const float* keys, int64_t d,
                        const float* inv, int64_t n, int64_t offset, float eps, float* hs,
                        int64_t* hi, int64_t k) {
  constexpr int64_t kBlock = 16;
  // Until the heap is full every key is scored exactly; from then on the bar follows the root.
  float bar = hi[0] >= 0 ? hs[0] - eps : -std::numeric_limits<float>::infinity();
  float values[kBlock];
  for (int64_t start = 0; start < n; start += kBlock) {
    const int64_t len = std::min(kBlock, n - start);
    float block_max = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < len; ++j) {
      values[j] = bf16_to_float(approx[start + j]);
      block_max = std::max(block_max, values[j]);
    }
    if (block_max < bar) continue;
    for (int64_t j = 0; j < len; ++j) {
      if (values[j] < bar) continue;
      const int64_t col = start + j;
      const float exact = dot16(query, keys + col * d, d) * inv[col];
      if (ranks_below(hs[0], hi[0], exact, offset + col)) {
        replace_root(hs, hi, k, exact, offset + col);
        if (hi[0] >= 0) bar = std::max(bar, hs[0] - eps);
      }
    }
  }
}

// Round a float32 to the nearest bfloat16 (ties to even); inputs here are finite.
inline uint16_t float_to_bf16(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  bits += 0x7FFFu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

// One pass over a key tile: each row's inverse norm (0 for a zero row) and the row scaled to unit
// length, rounded to bfloat16, for the screening GEMM. Returns the first row whose norm is not
// finite, or -1.
HEADWATER_SIMD_CLONES
int64_t unit_rows_bf16(const py::array& keys, py::array& inv_norms_out, py::array& unit_out) {
  const char* fn = "unit_rows_bf16";
  check_array<float>(fn, "keys", keys, 2, false);
  check_array<float>(fn, "inv_norms_out", inv_norms_out, 1, true);
  check_array<int16_t>(fn, "unit_out (bfloat16 bits)", unit_out, 2, true);
  const int64_t n = keys.shape(0), d = keys.shape(1);
  if (inv_norms_out.shape(0) != n || unit_out.shape(0) != n || unit_out.shape(1) != d) {
    throw py::value_error(std::string(fn) + ": inv_norms_out [n] and unit_out [n, d] must match keys " + describe(keys));
  }
  const float* xb = static_cast<const float*>(keys.data());
  float* inv = static_cast<float*>(inv_norms_out.mutable_data());
  uint16_t* unit = static_cast<uint16_t*>(unit_out.mutable_data());
  int64_t first_bad = std::numeric_limits<int64_t>::max();
  py::gil_scoped_release release;
#pragma omp parallel for schedule(static) reduction(min : first_bad) if (n * d > 65536)
  for (int64_t r = 0; r < n; ++r) {
    const float* row = xb + r * d;
    const float norm = std::sqrt(dot16(row, row, d));
    if (!std::isfinite(norm)) {
      first_bad = std::min(first_bad, r);
      inv[r] = 0.0f;
      continue;
    }
    const float scale = norm > 0.0f ? 1.0f / norm : 0.0f;
    inv[r] = scale;
    for (int64_t c = 0; c < d; ++c) unit[r * d + c] = float_to_bf16(row[c] * scale);
  }
  return first_bad == std::numeric_limits<int64_t>::max() ? -1 : first_bad;
}

void topk_merge_tile_screened(const py::array& approx, const py::array& queries, const py::array& keys,
                              const py::array& inv_norms, int64_t offset, double eps,
                              py::array& heap_scores, py::array& heap_indices) {
  const char* fn = "topk_merge_tile_screened";
  check_array<int16_t>(fn, "approx (bfloat16 bits)", approx, 2, false);
  check_array<float>(fn, "queries", queries, 2, false);
  check_array<float>(fn, "keys", keys, 2, false);
  check_array<float>(fn, "inv_norms", inv_norms, 1, false);
  check_heaps(fn, heap_scores, heap_indices);
  const int64_t q = approx.shape(0), n = approx.shape(1), k = heap_scores.shape(1), d = queries.shape(1);
  if (queries.shape(0) != q || heap_scores.shape(0) != q) {
    throw py::value_error(std::string(fn) + ": approx, queries and heaps must have the same number of rows");
  }
  if (keys.shape(0) != n || inv_norms.shape(0) != n || keys.shape(1) != d) {
    throw py::value_error(std::string(fn) + ": keys [n, d] and inv_norms [n] must match approx [q, n] and queries [q, d]");
  }
  if (offset < 0) throw py::value_error(std::string(fn) + ": offset must be >= 0, got " + std::to_string(offset));
  if (!(eps >= 0)) throw py::value_error(std::string(fn) + ": eps must be >= 0");
  if (k == 0 || n == 0 || q == 0) return;
  const uint16_t* s = static_cast<const uint16_t*>(approx.data());
  const float* xq = static_cast<const float*>(queries.data());
  const float* xb = static_cast<const float*>(keys.data());
  const float* inv = static_cast<const float*>(inv_norms.data());
  float* hs = static_cast<float*>(heap_scores.mutable_data());
  int64_t* hi = static_cast<int64_t*>(heap_indices.mutable_data());
  const float margin = static_cast<float>(eps);
  py::gil_scoped_release release;
#pragma omp parallel for schedule(static) if (q * n > 65536)
  for (int64_t row = 0; row < q; ++row) {
    screened_merge_row(s + row * n, xq + row * d, xb, d, inv, n, offset, margin, hs + row * k,
                       hi + row * k, k);
  }
}

// For a few queries, BLAS has nothing to reuse and the search is bound by memory bandwidth: one
// pass over each key row computes its dot products with every query and its inverse norm (so the
// keys are read once, not once for the norms and once for the matmul). Returns the first row whose
// norm is not finite (inf/NaN in the row, or overflow), or -1.
int64_t cosine_scores_few_queries(const py::array& queries, const py::array& keys,
                                  py::array& raw_out, py::array& inv_norms_out) {
  const char* fn = "cosine_scores_few_queries";
  check_array<float>(fn, "queries", queries, 2, false);
  check_array<float>(fn, "keys", keys, 2, false);
  check_array<float>(fn, "raw_out", raw_out, 2, true);
  check_array<float>(fn, "inv_norms_out", inv_norms_out, 1, true);
  const int64_t q = queries.shape(0), d = queries.shape(1), n = keys.shape(0);
  if (keys.shape(1) != d) {
    throw py::value_error(std::string(fn) + ": keys must have d=" + std::to_string(d) +
                          " columns like queries, got " + describe(keys));
  }
  if (raw_out.shape(0) != q || raw_out.shape(1) != n) {
    throw py::value_error(std::string(fn) + ": raw_out must be [" + std::to_string(q) + ", " +
                          std::to_string(n) + "], got " + describe(raw_out));
  }
  if (inv_norms_out.shape(0) != n) {
    throw py::value_error(std::string(fn) + ": inv_norms_out must be [" + std::to_string(n) +
                          "], got " + describe(inv_norms_out));
  }
  const float* xq = static_cast<const float*>(queries.data());
  const float* xb = static_cast<const float*>(keys.data());
  float* raw = static_cast<float*>(raw_out.mutable_data());
  float* inv = static_cast<float*>(inv_norms_out.mutable_data());
  int64_t first_bad = n;
  py::gil_scoped_release release;
#pragma omp parallel for schedule(static) reduction(min : first_bad) if (n * d > 65536)
  for (int64_t j = 0; j < n; ++j) {
    const float* row = xb + j * d;
    const float norm = std::sqrt(dot16(row, row, d));
    if (!std::isfinite(norm)) first_bad = std::min(first_bad, j);
    inv[j] = norm > 0 ? 1.0f / norm : 0.0f;
    for (int64_t r = 0; r < q; ++r) raw[r * n + j] = dot16(xq + r * d, row, d);
  }
  return first_bad == n ? -1 : first_bad;
}

// 1/|x_j| for every row of keys [n, d] (0 for a zero row), rows in parallel. Returns the first
// row whose norm is not finite, or -1.
int64_t inverse_row_norms(const py::array& keys, py::array& inv_norms_out) {
  const char* fn = "inverse_row_norms";
  check_array<float>(fn, "keys", keys, 2, false);
  check_array<float>(fn, "inv_norms_out", inv_norms_out, 1, true);
  const int64_t n = keys.shape(0), d = keys.shape(1);
  if (inv_norms_out.shape(0) != n) {
    throw py::value_error(std::string(fn) + ": inv_norms_out must be [" + std::to_string(n) +
                          "], got " + describe(inv_norms_out));
  }
  const float* xb = static_cast<const float*>(keys.data());
  float* inv = static_cast<float*>(inv_norms_out.mutable_data());
  int64_t first_bad = n;
  py::gil_scoped_release release;
#pragma omp parallel for schedule(static) reduction(min : first_bad) if (n * d > 65536)
  for (int64_t j = 0; j < n; ++j) {
    const float norm = std::sqrt(dot16(xb + j * d, xb + j * d, d));
    if (!std::isfinite(norm)) first_bad = std::min(first_bad, j);
    inv[j] = norm > 0 ? 1.0f / norm : 0.0f;
  }
  return first_bad == n ? -1 : first_bad;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "headwater CPU kernels (OpenMP): running top-k selection for exact cosine search.";
  m.def("topk_merge_tile", &topk_merge_tile, py::arg("scores"), py::arg("inv_norms"),
        py::arg("offset"), py::arg("heap_scores"), py::arg("heap_indices"),
        "Merge scores[q, n] * inv_norms[n] (global indices offset + column) into per-row heaps "
        "heap_scores/heap_indices [q, k], in place.");
  m.def("topk_merge_tile_screened", &topk_merge_tile_screened, py::arg("approx"), py::arg("queries"),
        py::arg("keys"), py::arg("inv_norms"), py::arg("offset"), py::arg("eps"), py::arg("heap_scores"),
        py::arg("heap_indices"),
        "Merge a tile screened by approximate (bfloat16) cosines: exact float32 scores only for keys "
        "within eps of the running k-th best.");
  m.def("unit_rows_bf16", &unit_rows_bf16, py::arg("keys"), py::arg("inv_norms_out"), py::arg("unit_out"),
        "Inverse norms of keys[n, d] and the unit rows in bfloat16 bits; returns the first row with a "
        "non-finite norm, or -1.");
  m.def("topk_sort_rows", &topk_sort_rows, py::arg("heap_scores"), py::arg("heap_indices"),
        "Sort each heap row by (score descending, index ascending), in place; (-inf, -1) last.");
  m.def("cosine_scores_few_queries", &cosine_scores_few_queries, py::arg("queries"),
        py::arg("keys"), py::arg("raw_out"), py::arg("inv_norms_out"),
        "raw_out[q, n] = queries[q, d] . keys[n, d]^T and inv_norms_out[n] = 1/|keys[j]| (0 for a "
        "zero row) in one pass over the keys (float32); returns the first non-finite row or -1.");
  m.def("inverse_row_norms", &inverse_row_norms, py::arg("keys"), py::arg("inv_norms_out"),
        "inv_norms_out[n] = 1/|keys[j]| (0 for a zero row), float32; returns the first non-finite "
        "row or -1.");
}
