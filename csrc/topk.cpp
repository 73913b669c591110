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

#ifdef _OPENMP
#include <omp.h>
#else
inline int omp_get_num_threads() { return 1; }
inline int omp_get_thread_num() { return 0; }
#endif

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

// A key met while screening: bounds on its exact score from its bfloat16 score, and its column.
struct Candidate {
  float lo, hi;
  int64_t col;
};

// The k-th largest of the kept exact scores and the candidates' lower bounds: at least k keys
// score at least this, so no key whose upper bound is below it can reach the top-k. Returns the
// higher of it and `bar`, and drops the candidates under the result.
float tighten(float bar, const float* kept, int64_t k, std::vector<Candidate>& buffer,
              std::vector<float>& scratch) {
  if (!buffer.empty()) {
    scratch.assign(kept, kept + k);
    for (const Candidate& c : buffer) scratch.push_back(c.lo);
    std::nth_element(scratch.begin(), scratch.begin() + (k - 1), scratch.end(), std::greater<float>());
    bar = std::max(bar, scratch[k - 1]);
  }
  buffer.erase(std::remove_if(buffer.begin(), buffer.end(), [bar](const Candidate& c) { return c.hi < bar; }),
               buffer.end());
  return bar;
}

// The k-th largest of n bfloat16 values (bit patterns, none NaN; 1 <= k <= n) by a two-pass
// radix select over an order-preserving 16-bit key: O(n), no data movement.
float kth_largest_bf16(const uint16_t* values, int64_t n, int64_t k) {
  const auto order = [](uint16_t bits) -> uint16_t {
    return (bits & 0x8000u) ? static_cast<uint16_t>(~bits) : static_cast<uint16_t>(bits | 0x8000u);
  };
  int64_t counts[256] = {0};
  for (int64_t j = 0; j < n; ++j) ++counts[order(values[j]) >> 8];
  int high = 255;
  int64_t above = 0;
  while (above + counts[high] < k) above += counts[high--];
  std::memset(counts, 0, sizeof(counts));
  for (int64_t j = 0; j < n; ++j) {
    const uint16_t key = order(values[j]);
    if ((key >> 8) == high) ++counts[key & 0xFF];
  }
  int low = 255;
  while (above + counts[low] < k) above += counts[low--];
  const uint16_t key = static_cast<uint16_t>((high << 8) | low);
  return bf16_to_float((key & 0x8000u) ? static_cast<uint16_t>(key & 0x7FFFu) : static_cast<uint16_t>(~key));
}

// Screen one row of a tile by its bfloat16 scores. `approx` holds the row's cosines from a
// bfloat16 GEMM of unit vectors; the exact float32 cosine of a key with screening score a lies
// within delta + rel·|a| of a (kernels/topk.py derives both). The kept set (k slots, unsorted,
// empty slots (-inf, -1)) holds the best exact results so far; its minimum bounds the final k-th
// best from below, and so does the k-th best lower bound among the keys met (`tighten`).
//
// Keys whose upper bound clears that bar are buffered; the bar rises each time the buffer
// fills. The columns still above the bar at the end go to `survivors` (ascending); the bar is
// returned. Cost: O(n) comparisons plus O(k + buffer) per refill.
HEADWATER_SIMD_CLONES
float screen_row(const uint16_t* approx, int64_t n, float delta, float rel, const float* ks, int64_t k,
                 std::vector<Candidate>& buffer, std::vector<float>& scratch, std::vector<int32_t>& survivors) {
  constexpr int64_t kBlock = 16;
  float bar = *std::min_element(ks, ks + k);
  if (bar == -std::numeric_limits<float>::infinity() && n >= k) {
    // Nothing kept yet: start from the k-th best screening score of the tile, whose lower bound
    // k keys reach (the bound falls with the score), less a little for the rounding of the bound.
    const float a = kth_largest_bf16(approx, n, k);
    bar = a - (delta + rel * std::fabs(a)) - 1e-6f;
  }
  size_t cap = static_cast<size_t>(std::max<int64_t>(4 * k, 1024));
  buffer.clear();
  float values[kBlock], upper[kBlock];
  for (int64_t start = 0; start < n; start += kBlock) {
    const int64_t len = std::min(kBlock, n - start);
    // an OR of comparisons, not a running maximum: it vectorises without -ffast-math
    int any = 0;
    if (len == kBlock) {
      for (int64_t j = 0; j < kBlock; ++j) {
        values[j] = bf16_to_float(approx[start + j]);
        upper[j] = values[j] + (delta + rel * std::fabs(values[j]));
        any |= upper[j] >= bar;
      }
    } else {
      for (int64_t j = 0; j < len; ++j) {
        values[j] = bf16_to_float(approx[start + j]);
        upper[j] = values[j] + (delta + rel * std::fabs(values[j]));
        any |= upper[j] >= bar;
      }
    }
    if (!any) continue;
    for (int64_t j = 0; j < len; ++j) {
      if (upper[j] < bar) continue;
      buffer.push_back({values[j] - (delta + rel * std::fabs(values[j])), upper[j], start + j});
    }
    if (buffer.size() >= cap) {
      bar = tighten(bar, ks, k, buffer, scratch);
      if (buffer.size() * 2 > cap) cap *= 2;  // many near-equal keys: keep the work linear
    }
  }
  bar = tighten(bar, ks, k, buffer, scratch);
  survivors.clear();
  for (const Candidate& c : buffer) survivors.push_back(static_cast<int32_t>(c.col));
  return bar;
}

// Merge a row's rescored survivors (exact scores, global indices) into its kept set: one partial
// sort of the k kept entries and the survivors at or above the bar (those below cannot rank in
// the top-k).
void merge_survivors(const std::vector<int32_t>& survivors, const float* exact, float bar, int64_t offset,
                     float* ks, int64_t* ki, int64_t k, std::vector<std::pair<float, int64_t>>& merged) {
  merged.clear();
  for (int64_t s = 0; s < k; ++s) merged.emplace_back(ks[s], ki[s]);
  for (size_t c = 0; c < survivors.size(); ++c) {
    if (exact[c] >= bar) merged.emplace_back(exact[c], offset + survivors[c]);
  }
  const auto better = [](const std::pair<float, int64_t>& a, const std::pair<float, int64_t>& b) {
    return ranks_below(b.first, b.second, a.first, a.second);
  };
  if (static_cast<int64_t>(merged.size()) > k) {
    std::nth_element(merged.begin(), merged.begin() + (k - 1), merged.end(), better);
  }
  for (int64_t s = 0; s < k; ++s) {
    ks[s] = merged[s].first;
    ki[s] = merged[s].second;
  }
}

// Round a float32 to the nearest bfloat16 (ties to even); inputs here are finite.
inline uint16_t float_to_bf16(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  bits += 0x7FFFu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

// unit[c] = bf16(row[c] * scale); returns an upper bound on |unit - row * scale| (the real
// product). Each p = fl(row[c] * scale) is within 2^-24·|p| of the real product, and unit[c] - p is
// exact in float32 (the two are within a factor 1 ± 2^-8 of each other), so the bound is the
// float32 length of (unit - p), inflated for the rounding of its sum of squares, plus 2^-24·|p|.
// The lane loop vectorises like dot16.
HEADWATER_SIMD_CLONES
float unit_row_bf16(const float* row, float scale, int64_t d, uint16_t* unit) {
  float lanes[16] = {0}, sizes[16] = {0};
  int64_t c = 0;
  for (; c + 16 <= d; c += 16) {
    for (int l = 0; l < 16; ++l) {
      const float p = row[c + l] * scale;
      const uint16_t bits = float_to_bf16(p);
      unit[c + l] = bits;
      const float gap = bf16_to_float(bits) - p;
      lanes[l] += gap * gap;
      sizes[l] += p * p;
    }
  }
  float squared = 0, size = 0;
  for (; c < d; ++c) {
    const float p = row[c] * scale;
    unit[c] = float_to_bf16(p);
    const float gap = bf16_to_float(unit[c]) - p;
    squared += gap * gap;
    size += p * p;
  }
  for (int l = 0; l < 16; ++l) {
    squared += lanes[l];
    size += sizes[l];
  }
  const double slack = 1.0 + (static_cast<double>(d) + 64.0) * 0x1p-24;
  const double bound = std::sqrt(static_cast<double>(squared) * slack) +
                       0x1p-24 * std::sqrt(static_cast<double>(size) * slack);
  return std::nextafter(static_cast<float>(bound * (1.0 + 1e-7)), std::numeric_limits<float>::infinity());
}

// One pass over a key tile: each row's inverse norm (0 for a zero row), the row scaled to unit
// length and rounded to bfloat16 for the screening GEMM, and the length of that rounding error,
// |bf16(row * inv) - row * inv| (computed in float64, rounded up to float32), which bounds how
// far the screening score can be from the float32 one. Returns the first row whose norm is not
// finite, or -1.
HEADWATER_SIMD_CLONES
int64_t unit_rows_bf16(const py::array& keys, py::array& inv_norms_out, py::array& unit_out,
                       py::array& errors_out) {
  const char* fn = "unit_rows_bf16";
  check_array<float>(fn, "keys", keys, 2, false);
  check_array<float>(fn, "inv_norms_out", inv_norms_out, 1, true);
  check_array<int16_t>(fn, "unit_out (bfloat16 bits)", unit_out, 2, true);
  check_array<float>(fn, "errors_out", errors_out, 1, true);
  const int64_t n = keys.shape(0), d = keys.shape(1);
  if (inv_norms_out.shape(0) != n || unit_out.shape(0) != n || unit_out.shape(1) != d ||
      errors_out.shape(0) != n) {
    throw py::value_error(std::string(fn) + ": inv_norms_out [n], unit_out [n, d] and errors_out [n] must match keys " +
                          describe(keys));
  }
  const float* xb = static_cast<const float*>(keys.data());
  float* inv = static_cast<float*>(inv_norms_out.mutable_data());
  uint16_t* unit = static_cast<uint16_t*>(unit_out.mutable_data());
  float* err = static_cast<float*>(errors_out.mutable_data());
  int64_t first_bad = std::numeric_limits<int64_t>::max();
  py::gil_scoped_release release;
#pragma omp parallel for schedule(static) reduction(min : first_bad) if (n * d > 65536)
  for (int64_t r = 0; r < n; ++r) {
    const float* row = xb + r * d;
    const float norm = std::sqrt(dot16(row, row, d));
    if (!std::isfinite(norm)) {
      first_bad = std::min(first_bad, r);
      inv[r] = 0.0f;
      err[r] = 0.0f;
      continue;
    }
    const float scale = norm > 0.0f ? 1.0f / norm : 0.0f;
    inv[r] = scale;
    err[r] = unit_row_bf16(row, scale, d, unit + r * d);
  }
  return first_bad == std::numeric_limits<int64_t>::max() ? -1 : first_bad;
}

void topk_merge_tile_screened(const py::array& approx, const py::array& queries, const py::array& keys,
                              const py::array& inv_norms, int64_t offset, const py::array& deltas,
                              double rel, py::array& kept_scores, py::array& kept_indices) {
  const char* fn = "topk_merge_tile_screened";
  check_array<int16_t>(fn, "approx (bfloat16 bits)", approx, 2, false);
  check_array<float>(fn, "queries", queries, 2, false);
  check_array<float>(fn, "keys", keys, 2, false);
  check_array<float>(fn, "inv_norms", inv_norms, 1, false);
  check_array<float>(fn, "deltas", deltas, 1, false);
  check_heaps(fn, kept_scores, kept_indices);
  const int64_t q = approx.shape(0), n = approx.shape(1), k = kept_scores.shape(1), d = queries.shape(1);
  if (queries.shape(0) != q || kept_scores.shape(0) != q || deltas.shape(0) != q) {
    throw py::value_error(std::string(fn) + ": approx, queries, deltas and kept arrays must have the same number of rows");
  }
  if (keys.shape(0) != n || inv_norms.shape(0) != n || keys.shape(1) != d) {
    throw py::value_error(std::string(fn) + ": keys [n, d] and inv_norms [n] must match approx [q, n] and queries [q, d]");
  }
  if (offset < 0) throw py::value_error(std::string(fn) + ": offset must be >= 0, got " + std::to_string(offset));
  if (!(rel >= 0)) throw py::value_error(std::string(fn) + ": rel must be >= 0");
  if (k == 0 || n == 0 || q == 0) return;
  const uint16_t* s = static_cast<const uint16_t*>(approx.data());
  const float* xq = static_cast<const float*>(queries.data());
  const float* xb = static_cast<const float*>(keys.data());
  const float* inv = static_cast<const float*>(inv_norms.data());
  const float* delta = static_cast<const float*>(deltas.data());
  for (int64_t row = 0; row < q; ++row) {
    if (!(delta[row] >= 0)) throw py::value_error(std::string(fn) + ": deltas must be >= 0");
  }
  float* ks = static_cast<float*>(kept_scores.mutable_data());
  int64_t* ki = static_cast<int64_t*>(kept_indices.mutable_data());
  const float relative = static_cast<float>(rel);
  py::gil_scoped_release release;
  // Three passes. 1: each row screens its scores (rows in parallel). 2: the survivors get their
  // exact scores key by key, so each key row is read from memory once for all the query rows that
  // need it (the queries stay in cache); read row by row, a key row would be fetched again for
  // every row that kept it, which cost more than everything else at large k. 3: each row merges.
  std::vector<std::vector<int32_t>> survivors(q);
  std::vector<float> bars(q);
  const bool parallel = q * n > 65536;
#pragma omp parallel if (parallel)
  {
    std::vector<Candidate> buffer;
    std::vector<float> scratch;
#pragma omp for schedule(dynamic, 4)
    for (int64_t row = 0; row < q; ++row) {
      bars[row] = screen_row(s + row * n, n, delta[row], relative, ks + row * k, k, buffer, scratch, survivors[row]);
    }
  }
  // Exact scores, key by key: each thread takes a range of key columns, finds that range in every
  // row's (ascending) survivor list, groups the requests by key, and scores them.
  std::vector<int64_t> row_starts(q + 1, 0);
  for (int64_t row = 0; row < q; ++row) {
    row_starts[row + 1] = row_starts[row] + static_cast<int64_t>(survivors[row].size());
  }
  std::vector<float> exact(static_cast<size_t>(row_starts[q]));
#pragma omp parallel if (parallel && row_starts[q] > 4096)
  {
    const int64_t threads = omp_get_num_threads(), me = omp_get_thread_num();
    const int32_t first = static_cast<int32_t>(n * me / threads), last = static_cast<int32_t>(n * (me + 1) / threads);
    std::vector<int64_t> starts(static_cast<size_t>(last - first) + 1, 0);
    std::vector<std::pair<int32_t, int32_t>> spans(q);  // each row's survivors within [first, last)
    for (int64_t row = 0; row < q; ++row) {
      const std::vector<int32_t>& cols = survivors[row];
      const int32_t lo = static_cast<int32_t>(std::lower_bound(cols.begin(), cols.end(), first) - cols.begin());
      const int32_t hi = static_cast<int32_t>(std::lower_bound(cols.begin() + lo, cols.end(), last) - cols.begin());
      spans[row] = {lo, hi};
      for (int32_t p = lo; p < hi; ++p) ++starts[cols[p] - first + 1];
    }
    for (size_t j = 1; j < starts.size(); ++j) starts[j] += starts[j - 1];
    std::vector<std::pair<int32_t, int64_t>> requests(static_cast<size_t>(starts.back()));  // (row, slot)
    std::vector<int64_t> fill(starts.begin(), starts.end() - 1);
    for (int64_t row = 0; row < q; ++row) {
      const std::vector<int32_t>& cols = survivors[row];
      for (int32_t p = spans[row].first; p < spans[row].second; ++p) {
        requests[fill[cols[p] - first]++] = {static_cast<int32_t>(row), row_starts[row] + p};
      }
    }
    for (int32_t j = first; j < last; ++j) {
      const float* key = xb + static_cast<int64_t>(j) * d;
      for (int64_t r = starts[j - first]; r < starts[j - first + 1]; ++r) {
        exact[requests[r].second] = dot16(xq + static_cast<int64_t>(requests[r].first) * d, key, d) * inv[j];
      }
    }
  }
#pragma omp parallel if (parallel)
  {
    std::vector<std::pair<float, int64_t>> merged;
#pragma omp for schedule(dynamic, 4)
    for (int64_t row = 0; row < q; ++row) {
      if (survivors[row].empty()) continue;
      merge_survivors(survivors[row], exact.data() + row_starts[row], bars[row], offset, ks + row * k,
                      ki + row * k, k, merged);
    }
  }
}

// Boundary checks shared by the score passes: float32 queries [q, d] and keys [n, d], and a
// writeable float32 raw_out [q, n].
void check_score_arrays(const char* fn, const py::array& queries, const py::array& keys, const py::array& raw_out) {
  check_array<float>(fn, "queries", queries, 2, false);
  check_array<float>(fn, "keys", keys, 2, false);
  check_array<float>(fn, "raw_out", raw_out, 2, true);
  const int64_t q = queries.shape(0), d = queries.shape(1), n = keys.shape(0);
  if (keys.shape(1) != d) {
    throw py::value_error(std::string(fn) + ": keys must have d=" + std::to_string(d) +
                          " columns like queries, got " + describe(keys));
  }
  if (raw_out.shape(0) != q || raw_out.shape(1) != n) {
    throw py::value_error(std::string(fn) + ": raw_out must be [" + std::to_string(q) + ", " +
                          std::to_string(n) + "], got " + describe(raw_out));
  }
}

// For a few queries, BLAS has nothing to reuse and the search is bound by memory bandwidth: one
// pass over each key row computes its dot products with every query and its inverse norm (so the
// keys are read once, not once for the norms and once for the matmul). Returns the first row whose
// norm is not finite (inf/NaN in the row, or overflow), or -1.
int64_t cosine_scores_few_queries(const py::array& queries, const py::array& keys,
                                  py::array& raw_out, py::array& inv_norms_out) {
  const char* fn = "cosine_scores_few_queries";
  check_score_arrays(fn, queries, keys, raw_out);
  check_array<float>(fn, "inv_norms_out", inv_norms_out, 1, true);
  const int64_t q = queries.shape(0), d = queries.shape(1), n = keys.shape(0);
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

// raw_out[r, j] = dot16(queries[r], keys[j]) for keys whose inverse norms are known already
// (search-ready keys): the few-query pass without the norm, so each key row costs Q dot products
// and no squares. Rows in parallel.
void dot_scores(const py::array& queries, const py::array& keys, py::array& raw_out) {
  check_score_arrays("dot_scores", queries, keys, raw_out);
  const int64_t q = queries.shape(0), d = queries.shape(1), n = keys.shape(0);
  const float* xq = static_cast<const float*>(queries.data());
  const float* xb = static_cast<const float*>(keys.data());
  float* raw = static_cast<float*>(raw_out.mutable_data());
  py::gil_scoped_release release;
#pragma omp parallel for schedule(static) if (n * d > 65536)
  for (int64_t j = 0; j < n; ++j) {
    for (int64_t r = 0; r < q; ++r) raw[r * n + j] = dot16(xq + r * d, xb + j * d, d);
  }
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
        py::arg("keys"), py::arg("inv_norms"), py::arg("offset"), py::arg("deltas"), py::arg("rel"),
        py::arg("kept_scores"), py::arg("kept_indices"),
        "Merge a tile screened by bfloat16 cosines (each within deltas[row] + rel*|score| of the float32 "
        "cosine) into the kept sets kept_scores/kept_indices [q, k]: exact float32 scores only for keys "
        "that can still reach the top-k.");
  m.def("unit_rows_bf16", &unit_rows_bf16, py::arg("keys"), py::arg("inv_norms_out"), py::arg("unit_out"),
        py::arg("errors_out"),
        "Inverse norms of keys[n, d], the unit rows in bfloat16 bits and the length of each row's rounding "
        "error; returns the first row with a non-finite norm, or -1.");
  m.def("topk_sort_rows", &topk_sort_rows, py::arg("heap_scores"), py::arg("heap_indices"),
        "Sort each heap row by (score descending, index ascending), in place; (-inf, -1) last.");
  m.def("cosine_scores_few_queries", &cosine_scores_few_queries, py::arg("queries"),
        py::arg("keys"), py::arg("raw_out"), py::arg("inv_norms_out"),
        "raw_out[q, n] = queries[q, d] . keys[n, d]^T and inv_norms_out[n] = 1/|keys[j]| (0 for a "
        "zero row) in one pass over the keys (float32); returns the first non-finite row or -1.");
  m.def("dot_scores", &dot_scores, py::arg("queries"), py::arg("keys"), py::arg("raw_out"),
        "raw_out[q, n] = queries[q, d] . keys[n, d]^T (float32), for keys whose norms are known.");
  m.def("inverse_row_norms", &inverse_row_norms, py::arg("keys"), py::arg("inv_norms_out"),
        "inv_norms_out[n] = 1/|keys[j]| (0 for a zero row), float32; returns the first non-finite "
        "row or -1.");
}
