// Paged attention on CPU that reads keys and values where they lie in the paged cache.
//
// Same contract as kernels/attention_ref.py: a flattened batch of sequences, each with
// query_len query rows that are the last rows of a seq_len-token context whose keys and values
// sit in the cache at its block-table entries; row r attends causally to context positions
// [0, seq_len - query_len + r]. Decode rows (query_len 1) and prefill chunks over a cached
// prefix go through the same loop.
//
// Work item: one sequence, one kv head, a tile of up to TILE query rows. The tile's queries
// (all `group` query heads of the kv head) walk the context one block at a time, so each key
// and value is loaded once per tile and used by every row and head of it (GQA and prefill
// rows share it). Softmax is online, rescaled once per block. Accumulation in fp32.
//
// The cache holds the query's dtype, or is quantized (kernels/kv_quant.py): int8 or fp8 e4m3
// values, each (slot, kv head) row followed by its float32 scale. Quantized rows are widened to
// fp32 as they are loaded and their scale applied once per row: to a key's dot product, and to
// the softmax weight of a value (the denominator keeps the unscaled weight).
//
// Plain C ABI (loaded with ctypes, which releases the GIL for the call); compiled on first use
// by kernels/native.py with -O3 -march=native. No torch headers: it builds in about a second.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace {

constexpr int TILE = 16;       // query rows per work item
constexpr int MAX_BLOCK = 64;  // largest block size supported
constexpr int LANES = 16;      // floats per vector value
constexpr int64_t SCALE_BYTES = 4;  // a quantized row's float32 scale, after its values

// A byte of float8_e4m3fn: sign, 4 exponent bits (bias 7), 3 mantissa bits; no infinities,
// 0x7f and 0xff are NaN.
struct Fp8E4m3 {
  uint8_t bits;
};

template <typename C>
constexpr bool is_quantized = std::is_same_v<C, int8_t> || std::is_same_v<C, Fp8E4m3>;

// The scale stored after a quantized row's dim values.
template <typename C>
inline float row_scale(const C* row, int64_t dim) {
  float scale;
  std::memcpy(&scale, row + dim, sizeof scale);
  return scale;
}

inline float to_float(float x) { return x; }
inline float to_float(uint16_t bf16) {
  uint32_t bits = static_cast<uint32_t>(bf16) << 16;
  float x;
  std::memcpy(&x, &bits, sizeof x);
  return x;
}
inline void from_float(float x, float* out) { *out = x; }
inline void from_float(float x, uint16_t* out) {  // round to nearest even, as torch does
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  if (std::isnan(x)) {
    *out = 0x7fc0;
    return;
  }
  bits += 0x7fff + ((bits >> 16) & 1);
  *out = static_cast<uint16_t>(bits >> 16);
}

// LANES floats as one value: GCC/Clang vector extensions, lowered to AVX-512, AVX2 or SSE.
typedef float vfloat __attribute__((vector_size(LANES * sizeof(float))));
typedef uint16_t vbf16 __attribute__((vector_size(LANES * sizeof(uint16_t))));
typedef uint32_t vbits __attribute__((vector_size(LANES * sizeof(uint32_t))));

inline vfloat load(const float* p) {
  vfloat v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline vfloat load(const uint16_t* p) {
  vbf16 half;
  std::memcpy(&half, p, sizeof half);
  const vbits bits = __builtin_convertvector(half, vbits) << 16;
  vfloat v;
  std::memcpy(&v, &bits, sizeof v);
  return v;
}
typedef int8_t vint8 __attribute__((vector_size(LANES)));
typedef int16_t vint16 __attribute__((vector_size(LANES * sizeof(int16_t))));
typedef int32_t vint32 __attribute__((vector_size(LANES * sizeof(int32_t))));
typedef uint8_t vuint8 __attribute__((vector_size(LANES)));

// Bytes widen in two doubling steps: GCC vectorizes those, but scalarizes an 8-to-32-bit
// conversion in one.
inline vfloat load(const int8_t* p) {
  vint8 q;
  std::memcpy(&q, p, sizeof q);
  const vint32 wide = __builtin_convertvector(__builtin_convertvector(q, vint16), vint32);
  return __builtin_convertvector(wide, vfloat);
}

// Exact, without a table: a normal's exponent is rebiased from 7 to 127 and its mantissa
// shifted into place; a subnormal 0.m * 2^-6 is (1.m * 2^-6) - 2^-6, which fp32 holds exactly.
inline vfloat load(const Fp8E4m3* p) {
  static_assert(sizeof(Fp8E4m3) == 1);
  vuint8 bytes;
  std::memcpy(&bytes, p, sizeof bytes);
  const vbits b = __builtin_convertvector(__builtin_convertvector(bytes, vbf16), vbits);
  const vbits magnitude = b & 0x7f;
  const vbits normal = (magnitude << 20) + (120u << 23);
  const vbits shifted = (magnitude << 20) | (121u << 23);
  vfloat subnormal;
  std::memcpy(&subnormal, &shifted, sizeof subnormal);
  subnormal -= 0x1p-6f;
  vbits sub_bits;
  std::memcpy(&sub_bits, &subnormal, sizeof sub_bits);
  vbits bits = magnitude < 8 ? sub_bits : normal;
  bits = magnitude == 0x7f ? vbits{} + 0x7fc00000u : bits;
  bits |= (b & 0x80) << 24;
  vfloat v;
  std::memcpy(&v, &bits, sizeof v);
  return v;
}

typedef float vhalf __attribute__((vector_size(LANES / 2 * sizeof(float))));
typedef float vquarter __attribute__((vector_size(LANES / 4 * sizeof(float))));

// Halving adds, not a running sum: each level is one vector add of the two halves.
inline float sum(vfloat v) {
  vhalf lo, hi;
  std::memcpy(&lo, &v, sizeof lo);
  std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof lo, sizeof hi);
  const vhalf h = lo + hi;
  vquarter a, b;
  std::memcpy(&a, &h, sizeof a);
  std::memcpy(&b, reinterpret_cast<const char*>(&h) + sizeof a, sizeof b);
  const vquarter q = a + b;
  return (q[0] + q[2]) + (q[1] + q[3]);
}

// head_dim is a multiple of LANES (checked in run).
template <typename T>
inline float dot(const float* q, const T* k, int64_t dim) {
  vfloat acc = load(q) * load(k);
  for (int64_t d = LANES; d < dim; d += LANES) acc += load(q + d) * load(k + d);
  return sum(acc);
}

// acc = acc * rescale + sum_j p[j] * v_j, one LANES-wide slice of acc at a time so that the
// slice stays in a register while every value of the block adds into it.
template <typename T>
inline void accumulate(float* acc, const float* p, const T* values, int64_t count,
                       int64_t stride, int64_t dim, float rescale) {
  for (int64_t d = 0; d < dim; d += LANES) {
    vfloat slice = load(acc + d) * rescale;
    for (int64_t j = 0; j < count; ++j) slice += p[j] * load(values + j * stride + d);
    std::memcpy(acc + d, &slice, sizeof slice);
  }
}

// exp(x) for x <= 0, as 2^n * 2^f with a degree-6 polynomial for 2^f (relative error about
// 2e-7, below fp32 rounding of the softmax), written without branches so that a loop of it
// vectorizes; std::exp does not. Below -87 it returns 0.
inline float exp_nonpositive(float x) {
  // Comparisons written so that NaN takes the clamp: no float-to-int conversion out of range.
  const float t = (x > -87.0f ? x : -87.0f) * 1.44269504f;  // log2(e)
  const float n = std::floor(t + 0.5f);
  const float f = t - n;  // [-0.5, 0.5]
  float p = 1.5403530e-4f;
  p = p * f + 1.3333558e-3f;
  p = p * f + 9.6181291e-3f;
  p = p * f + 5.5504109e-2f;
  p = p * f + 2.4022651e-1f;
  p = p * f + 6.9314718e-1f;
  p = p * f + 1.0f;
  uint32_t bits;
  std::memcpy(&bits, &p, sizeof bits);
  bits += static_cast<uint32_t>(static_cast<int32_t>(n)) << 23;  // unsigned: no UB on n < 0
  float y;
  std::memcpy(&y, &bits, sizeof y);
  return x != x ? x : (x < -87.0f ? 0.0f : y);  // NaN stays NaN, as in the reference
}

struct Shape {
  int64_t num_heads, num_kv_heads, head_dim, block_size, table_width;
  float scale;
};

template <typename C>
void prefetch_block(const C* k_cache, const C* v_cache, int64_t offset, int64_t count) {
  constexpr int64_t line = 64 / sizeof(C);
  for (int64_t i = 0; i < count; i += line) {
    __builtin_prefetch(k_cache + offset + i);
    __builtin_prefetch(v_cache + offset + i);
  }
}

// T: the query's and output's element type; C: the cache's (T, or a quantized one).
template <typename T, typename C>
void attend_tile(const T* query, const C* k_cache, const C* v_cache, T* out,
                 const int32_t* blocks, int64_t first_row, int64_t num_rows,
                 int64_t first_pos, const Shape& s) {
  const int64_t heads = s.num_heads, dim = s.head_dim, bs = s.block_size;
  const int64_t group = heads / s.num_kv_heads;
  const int64_t lanes = num_rows * heads;  // lane = (row, query head)
  std::vector<float> q(lanes * dim), acc(lanes * dim, 0.0f), score(bs);
  std::vector<float> running_max(lanes, -INFINITY), denom(lanes, 0.0f);
  const T* src = query + first_row * heads * dim;  // the tile's rows are consecutive
  for (int64_t i = 0; i < lanes * dim; ++i) q[i] = to_float(src[i]) * s.scale;
  const int64_t last_pos = first_pos + num_rows - 1;  // the last row sees the most keys
  // One (slot, kv head) row of the cache: its values, then its scale if quantized.
  const int64_t row = is_quantized<C> ? dim + SCALE_BYTES : dim;
  const int64_t kv_stride = s.num_kv_heads * row;  // from one token to the next in a block
  const int64_t block_elems = bs * kv_stride;
  float scaled[MAX_BLOCK];  // a quantized block's softmax weights times its value scales
  for (int64_t b = 0; b * bs <= last_pos; ++b) {
    const int64_t start = b * bs;
    if ((b + 1) * bs <= last_pos)  // the next block's ids are random: no hardware prefetch
      prefetch_block(k_cache, v_cache, blocks[b + 1] * block_elems, block_elems);
    const int64_t n = std::min(bs, last_pos - start + 1);
    for (int64_t r = 0; r < num_rows; ++r) {
      const int64_t visible = std::min(n, first_pos + r - start + 1);  // causal, may be <= 0
      if (visible <= 0) continue;
      for (int64_t h = 0; h < heads; ++h) {
        const int64_t lane = r * heads + h;
        const int64_t base = blocks[b] * block_elems + (h / group) * row;
        const float* ql = &q[lane * dim];
        float* sc = score.data();
        float block_max = -INFINITY;
        for (int64_t j = 0; j < visible; ++j) {
          const C* key = k_cache + base + j * kv_stride;
          sc[j] = dot(ql, key, dim);
          if constexpr (is_quantized<C>) sc[j] *= row_scale(key, dim);
          block_max = std::max(block_max, sc[j]);
        }
        const float new_max = std::max(running_max[lane], block_max);
        const float rescale = exp_nonpositive(running_max[lane] - new_max);  // 0 at first
        float total = 0;
        for (int64_t j = 0; j < visible; ++j) sc[j] = exp_nonpositive(sc[j] - new_max);
        for (int64_t j = 0; j < visible; ++j) total += sc[j];
        denom[lane] = denom[lane] * rescale + total;
        running_max[lane] = new_max;
        const float* weight = sc;
        if constexpr (is_quantized<C>) {
          for (int64_t j = 0; j < visible; ++j)
            scaled[j] = sc[j] * row_scale(v_cache + base + j * kv_stride, dim);
          weight = scaled;
        }
        accumulate(&acc[lane * dim], weight, v_cache + base, visible, kv_stride, dim, rescale);
      }
    }
  }
  T* dst = out + first_row * heads * dim;
  for (int64_t lane = 0; lane < lanes; ++lane) {
    const float inv = 1.0f / denom[lane];
    for (int64_t d = 0; d < dim; ++d) from_float(acc[lane * dim + d] * inv, dst + lane * dim + d);
  }
}

struct Item {
  int64_t seq, first_row, num_rows, first_pos;
};

template <typename T, typename C>
int run(const T* query, const void* k_cache, const void* v_cache, T* out,
        const int32_t* query_start_loc, const int32_t* seq_lens, const int32_t* block_table,
        int64_t num_seqs, const Shape& s, int num_threads) {
  if (s.block_size > MAX_BLOCK || s.num_heads % s.num_kv_heads != 0 || s.head_dim % LANES != 0)
    return 1;
  std::vector<Item> items;
  for (int64_t i = 0; i < num_seqs; ++i) {
    const int64_t rows = query_start_loc[i + 1] - query_start_loc[i];
    const int64_t first_pos = seq_lens[i] - rows;
    for (int64_t t = 0; t < rows; t += TILE)
      items.push_back(
          {i, query_start_loc[i] + t, std::min<int64_t>(TILE, rows - t), first_pos + t});
  }
  const int64_t count = static_cast<int64_t>(items.size());
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads) if (num_threads > 1)
  for (int64_t w = 0; w < count; ++w) {
    const Item& it = items[w];
    attend_tile(query, static_cast<const C*>(k_cache), static_cast<const C*>(v_cache), out,
                block_table + it.seq * s.table_width, it.first_row, it.num_rows, it.first_pos, s);
  }
  return 0;
}

// The cache as the query's type T, or quantized: cache_dtype 2 = int8, 3 = float8_e4m3fn.
template <typename T>
int run_for_cache(int cache_dtype, int query_dtype, const T* query, const void* k_cache,
                  const void* v_cache, T* out, const int32_t* query_start_loc,
                  const int32_t* seq_lens, const int32_t* block_table, int64_t num_seqs,
                  const Shape& s, int num_threads) {
  if (cache_dtype == query_dtype)
    return run<T, T>(query, k_cache, v_cache, out, query_start_loc, seq_lens, block_table,
                     num_seqs, s, num_threads);
  if (cache_dtype == 2)
    return run<T, int8_t>(query, k_cache, v_cache, out, query_start_loc, seq_lens, block_table,
                          num_seqs, s, num_threads);
  if (cache_dtype == 3)
    return run<T, Fp8E4m3>(query, k_cache, v_cache, out, query_start_loc, seq_lens,
                           block_table, num_seqs, s, num_threads);
  return 1;
}

}  // namespace

extern "C" {

// query_dtype (also the output's): 0 = float32, 1 = bfloat16. cache_dtype: the query's, or
// 2 = int8, 3 = float8_e4m3fn, whose rows are head_dim values and a float32 scale. Returns 0,
// or 1 for a dtype or shape the kernel does not support.
int kvfleet_paged_attention(int query_dtype, int cache_dtype, const void* query,
                            const void* k_cache, const void* v_cache, void* out,
                            const int32_t* query_start_loc, const int32_t* seq_lens,
                            const int32_t* block_table, int64_t num_seqs, int64_t num_heads,
                            int64_t num_kv_heads, int64_t head_dim, int64_t block_size,
                            int64_t table_width, float scale, int num_threads) {
  const Shape s{num_heads, num_kv_heads, head_dim, block_size, table_width, scale};
  if (query_dtype == 0)
    return run_for_cache(cache_dtype, query_dtype, static_cast<const float*>(query), k_cache,
                         v_cache, static_cast<float*>(out), query_start_loc, seq_lens,
                         block_table, num_seqs, s, num_threads);
  if (query_dtype == 1)
    return run_for_cache(cache_dtype, query_dtype, static_cast<const uint16_t*>(query), k_cache,
                         v_cache, static_cast<uint16_t*>(out), query_start_loc, seq_lens,
                         block_table, num_seqs, s, num_threads);
  return 1;
}

}  // extern "C"
