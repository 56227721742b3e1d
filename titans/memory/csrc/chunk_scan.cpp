// The deep memory's chunk scan in plain loops over raw pointers: the forward walk over a call's chunks and the
// backward walk back over them, each one call from Python, with no ATen op inside the walk.
//
// It computes exactly what `_scan_forward` / `_scan_backward` of titans/memory/chunk_fused.py compute, for an MLP
// memory of depth >= 2 with SiLU between the layers (with or without momentum, with or without the chunk step
// cap); read that file for the equations. titans/memory/chunk_native.py builds this file at first use and
// `ChunkScan` calls it; tests/memory/test_chunk_native.py holds it to the Python op in float64.
//
// Layout (all contiguous, row-major): g = (batch head) groups, k = chunks, C = chunk tokens, d = head_dim,
// layer l maps dims[l] -> dims[l+1] (dims[0] = dims[L] = d), W_l and S_l are [g, dims[l], dims[l+1]].
// The groups are independent recurrences, so each walk runs group by group, its state in the caller's cache (the
// groups split between torch's intra-op threads when there are several).
//
// The small matmuls (2C x 32 x 128 on the tiny model) are register-blocked loops over GCC/Clang vector types:
// each block keeps MR rows x NV vectors of C in registers across the whole inner dimension. No fast-math: the same
// IEEE arithmetic as the Python op up to the order of the sums (tests compare at 1e-10 in float64).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <type_traits>
#include <vector>

// the elementwise loops below read and write distinct buffers; without this GCC cannot prove it and keeps them scalar
#if defined(__clang__)
#define IVDEP _Pragma("clang loop vectorize(assume_safety)")
#else
#define IVDEP _Pragma("GCC ivdep")
#endif

namespace titans_chunk_scan {

using i64 = int64_t;

#if defined(__AVX512F__)
constexpr int kVecBytes = 64;
constexpr int kRows = 8;  // 32 vector registers: 8 x 2 accumulators, the B row and the broadcast
#else
constexpr int kVecBytes = 32;
constexpr int kRows = 4;  // 16 vector registers
#endif

template <typename T>
struct Vec {
  typedef T type __attribute__((vector_size(kVecBytes)));
  static constexpr int n = kVecBytes / sizeof(T);
};

template <typename T>
static inline typename Vec<T>::type splat(T x) {
  return x - typename Vec<T>::type{};  // x − 0 is x exactly: one broadcast
}

// C[MR x NV*n] (+)= A[MR x K] B[K x NV*n]; A row-major with leading dim lda (AT: A stored transposed, A(m, k) at
// A[k*lda + m]); B and C row-major.
template <typename T, int MR, int NV, bool AT>
static inline void gemm_block(i64 K, const T* __restrict A, i64 lda, const T* __restrict B, i64 ldb,
                              T* __restrict C, i64 ldc, bool acc) {
  using V = typename Vec<T>::type;
  constexpr int n = Vec<T>::n;
  V c[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) c[r][v] = V{};
  const T* __restrict a_k = A;
  for (i64 k = 0; k < K; ++k, B += ldb) {
    V b[NV];
    for (int v = 0; v < NV; ++v) std::memcpy(&b[v], B + v * n, sizeof(V));
    for (int r = 0; r < MR; ++r) {
      const V a = splat<T>(AT ? a_k[r] : A[r * lda + k]);
      for (int v = 0; v < NV; ++v) c[r][v] += a * b[v];
    }
    if (AT) a_k += lda;
  }
  for (int r = 0; r < MR; ++r) {
    for (int v = 0; v < NV; ++v) {
      T* out = C + r * ldc + v * n;
      if (acc) {
        V old;
        std::memcpy(&old, out, sizeof(V));
        c[r][v] += old;
      }
      std::memcpy(out, &c[r][v], sizeof(V));
    }
  }
}

template <typename T, int NV, bool AT>
static inline void gemm_cols(i64 M, i64 K, const T* A, i64 lda, const T* B, i64 ldb, T* C, i64 ldc, bool acc) {
  const i64 step = AT ? 1 : lda;  // from row m to row m+1 of A
  i64 m = 0;
  for (; m + kRows <= M; m += kRows) gemm_block<T, kRows, NV, AT>(K, A + m * step, lda, B, ldb, C + m * ldc, ldc, acc);
  for (; m + 4 <= M; m += 4) gemm_block<T, 4, NV, AT>(K, A + m * step, lda, B, ldb, C + m * ldc, ldc, acc);
  for (; m < M; ++m) gemm_block<T, 1, NV, AT>(K, A + m * step, lda, B, ldb, C + m * ldc, ldc, acc);
}

template <typename T, bool AT>
static void gemm_impl(i64 M, i64 N, i64 K, const T* A, i64 lda, const T* B, i64 ldb, T* C, i64 ldc, bool acc) {
  constexpr int n = Vec<T>::n;
  i64 j = 0;
  for (; j + 2 * n <= N; j += 2 * n) gemm_cols<T, 2, AT>(M, K, A, lda, B + j, ldb, C + j, ldc, acc);
  for (; j + n <= N; j += n) gemm_cols<T, 1, AT>(M, K, A, lda, B + j, ldb, C + j, ldc, acc);
  for (; j < N; ++j) {  // columns left over (N not a multiple of the vector width)
    for (i64 m = 0; m < M; ++m) {
      T s = 0;
      for (i64 k = 0; k < K; ++k) s += (AT ? A[k * lda + m] : A[m * lda + k]) * B[k * ldb + j];
      C[m * ldc + j] = acc ? C[m * ldc + j] + s : s;
    }
  }
}

// C[M x N] (+)= A[M x K] B[K x N], A(m, k) = A[m*sam + k*sak] (sak == 1: row-major, sam == 1: stored transposed);
// B, C row-major with leading dims ldb, ldc.
template <typename T>
static void gemm(i64 M, i64 N, i64 K, const T* A, i64 sam, i64 sak, const T* B, i64 ldb, T* C, i64 ldc, bool acc) {
  if (sak == 1)
    gemm_impl<T, false>(M, N, K, A, sam, B, ldb, C, ldc, acc);
  else
    gemm_impl<T, true>(M, N, K, A, sak, B, ldb, C, ldc, acc);
}

// Σ_e a[e]·b[e] in vector lanes (the sums of a chunk's state-sized inner products; one scalar chain would wait on
// every add)
template <typename T>
static inline T dot(i64 n, const T* __restrict a, const T* __restrict b) {
  using V = typename Vec<T>::type;
  constexpr int w = Vec<T>::n;
  V acc0 = V{}, acc1 = V{};
  i64 e = 0;
  for (; e + 2 * w <= n; e += 2 * w) {
    V x0, y0, x1, y1;
    std::memcpy(&x0, a + e, sizeof(V));
    std::memcpy(&y0, b + e, sizeof(V));
    std::memcpy(&x1, a + e + w, sizeof(V));
    std::memcpy(&y1, b + e + w, sizeof(V));
    acc0 += x0 * y0;
    acc1 += x1 * y1;
  }
  acc0 += acc1;
  T s = 0;
  for (int i = 0; i < w; ++i) s += acc0[i];
  for (; e < n; ++e) s += a[e] * b[e];
  return s;
}

// The decay/momentum carries of one layer's state, one pass: dots = (⟨gW', W⟩, ⟨gW', S⟩, ⟨gS', S⟩), then
// gS = E·gS' + c_S·gW' and gW = A·gW' in place.
template <typename T>
static inline void carry_backward(i64 n, T* __restrict gw, T* __restrict gm, const T* __restrict w,
                                  const T* __restrict s, T dec, T cm, T cs, T* dots) {
  using V = typename Vec<T>::type;
  constexpr int lanes = Vec<T>::n;
  V a = V{}, b = V{}, c = V{};
  const V vdec = splat<T>(dec), vcm = splat<T>(cm), vcs = splat<T>(cs);
  i64 e = 0;
  for (; e + lanes <= n; e += lanes) {
    V gwv, gmv, wv, sv;
    std::memcpy(&gwv, gw + e, sizeof(V));
    std::memcpy(&gmv, gm + e, sizeof(V));
    std::memcpy(&wv, w + e, sizeof(V));
    std::memcpy(&sv, s + e, sizeof(V));
    a += gwv * wv;
    b += gwv * sv;
    c += gmv * sv;
    const V gm_new = gmv * vcs + gwv * vcm;
    const V gw_new = gwv * vdec;
    std::memcpy(gm + e, &gm_new, sizeof(V));
    std::memcpy(gw + e, &gw_new, sizeof(V));
  }
  T sa = 0, sb = 0, sc = 0;
  for (int i = 0; i < lanes; ++i) {
    sa += a[i];
    sb += b[i];
    sc += c[i];
  }
  for (; e < n; ++e) {
    sa += gw[e] * w[e];
    sb += gw[e] * s[e];
    sc += gm[e] * s[e];
    gm[e] = gm[e] * cs + gw[e] * cm;
    gw[e] = gw[e] * dec;
  }
  dots[0] = sa;
  dots[1] = sb;
  dots[2] = sc;
}

#if defined(__AVX512F__) && !defined(__clang__)  // __builtin_shuffle is GCC's
// One n x n tile (n = the vector width) transposed in registers: log2(n) butterfly stages, each swapping one bit of
// the row index with the same bit of the column index through two-source shuffles (vpermt2ps/pd).
template <typename T>
static inline void transpose_tile(const T* __restrict in, i64 ldi, T* __restrict out, i64 ldo) {
  using V = typename Vec<T>::type;
  constexpr int n = Vec<T>::n;
  using I = typename std::conditional<sizeof(T) == 4, int32_t, int64_t>::type;
  typedef I VI __attribute__((vector_size(kVecBytes)));
  struct Masks {
    VI lo[n], hi[n];
    Masks() {
      for (int bit = 1; bit < n; bit <<= 1) {
        for (int c = 0; c < n; ++c) {
          lo[bit][c] = (c & bit) ? n + (c ^ bit) : c;
          hi[bit][c] = (c & bit) ? n + c : (c ^ bit);
        }
      }
    }
  };
  static const Masks m;
  V row[n];
  for (int i = 0; i < n; ++i) std::memcpy(&row[i], in + i * ldi, sizeof(V));
  for (int bit = n / 2; bit >= 1; bit >>= 1) {
    for (int i = 0; i < n; ++i) {
      if (i & bit) continue;
      const V a = row[i], b = row[i | bit];
      row[i] = __builtin_shuffle(a, b, m.lo[bit]);
      row[i | bit] = __builtin_shuffle(a, b, m.hi[bit]);
    }
  }
  for (int i = 0; i < n; ++i) std::memcpy(out + i * ldo, &row[i], sizeof(V));
}
#endif

// out[c x r] = in[r x c]ᵀ (in tiles of the vector width where AVX-512 has two-source shuffles)
template <typename T>
static void transpose(i64 r, i64 c, const T* __restrict in, T* __restrict out) {
  i64 a0 = 0;
#if defined(__AVX512F__) && !defined(__clang__)
  constexpr int n = Vec<T>::n;
  for (; a0 + n <= r; a0 += n) {
    i64 b0 = 0;
    for (; b0 + n <= c; b0 += n) transpose_tile<T>(in + a0 * c + b0, c, out + b0 * r + a0, r);
    for (i64 a = a0; a < a0 + n; ++a)
      for (i64 b = b0; b < c; ++b) out[b * r + a] = in[a * c + b];
  }
#endif
  for (i64 a = a0; a < r; ++a)
    for (i64 b = 0; b < c; ++b) out[b * r + a] = in[a * c + b];
}

// exp in vector lanes (the sigmoids of the forward; glibc's exp is scalar without -ffast-math): Cody-Waite range
// reduction x = n·ln2 + r, |r| ≤ ln2/2, and the Taylor polynomial of exp(r) to degree 7 (float: error < 1e-8) or 12
// (double: < 2e-16), times 2^n built in the exponent bits. x is clamped to [lo, hi] so 2^n stays a normal number;
// the sigmoid there is 1 or below 1e-38 (float), 1e-307 (double) either way.
template <typename T>
struct ExpConst;
template <>
struct ExpConst<float> {
  using I = int32_t;
  static constexpr float lo = -87.0f, hi = 88.0f, magic = 12582912.0f;  // 1.5·2^23: adding it rounds to an integer
  static constexpr float ln2_hi = 0.693145751953125f, ln2_lo = 1.428606765330187e-06f;
  static constexpr int shift = 23, bias = 127, degree = 7;
};
template <>
struct ExpConst<double> {
  using I = int64_t;
  static constexpr double lo = -708.0, hi = 709.0, magic = 6755399441055744.0;  // 1.5·2^52
  static constexpr double ln2_hi = 6.93147180369123816490e-01, ln2_lo = 1.90821492927058770002e-10;
  static constexpr int shift = 52, bias = 1023, degree = 12;
};

template <typename T>
static inline typename Vec<T>::type vexp(typename Vec<T>::type x) {
  using V = typename Vec<T>::type;
  using K = ExpConst<T>;
  using I = typename K::I;
  typedef I VI __attribute__((vector_size(kVecBytes)));
  const V lo = splat<T>(K::lo), hi = splat<T>(K::hi), magic = splat<T>(K::magic);
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const V t = x * splat<T>(T(1.4426950408889634)) + magic;  // n + magic, n = round(x / ln2)
  const V nf = t - magic;
  V r = x - nf * splat<T>(K::ln2_hi);
  r = r - nf * splat<T>(K::ln2_lo);
  T inv_fact[K::degree + 1];
  inv_fact[0] = T(1);
  for (int i = 1; i <= K::degree; ++i) inv_fact[i] = inv_fact[i - 1] / T(i);
  V p = splat<T>(inv_fact[K::degree]);
  for (int i = K::degree - 1; i >= 0; --i) p = p * r + splat<T>(inv_fact[i]);
  VI tb, mb;
  std::memcpy(&tb, &t, sizeof(V));
  std::memcpy(&mb, &magic, sizeof(V));
  const VI e = ((tb - mb) + static_cast<I>(K::bias)) << K::shift;  // the bits of 2^n
  V scale;
  std::memcpy(&scale, &e, sizeof(V));
  return p * scale;
}

// s = σ(z), h = z·σ(z) over n elements
template <typename T>
static void silu_forward(i64 n, const T* __restrict z, T* __restrict s, T* __restrict h) {
  using V = typename Vec<T>::type;
  constexpr int w = Vec<T>::n;
  const V one = splat<T>(T(1));
  i64 e = 0;
  for (; e + w <= n; e += w) {
    V zv;
    std::memcpy(&zv, z + e, sizeof(V));
    const V sv = one / (one + vexp<T>(-zv));
    const V hv = zv * sv;
    std::memcpy(s + e, &sv, sizeof(V));
    std::memcpy(h + e, &hv, sizeof(V));
  }
  for (; e < n; ++e) {
    const V zv = splat<T>(z[e]);
    const T sv = (one / (one + vexp<T>(-zv)))[0];
    s[e] = sv;
    h[e] = z[e] * sv;
  }
}

// act'(z) of SiLU from σ(z) and act(z) = h: σ + h·(1 − σ) (chunk_fused._act_grad_at)
template <typename T>
static inline T silu_grad(T s, T h) {
  return s + h * (T(1) - s);
}

// act''(z) of SiLU: σ(1 − σ)·(z(1 − 2σ) + 2) (chunk_fused._act_grad2_at)
template <typename T>
static inline T silu_grad2(T s, T z) {
  const T om = T(1) - s;
  return (s * om) * (z * (om - s) + T(2));
}

template <typename T>
static const T* ptr_or_null(const c10::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? t->data_ptr<T>() : nullptr;
}

struct Dims {
  i64 G, K, C, L;
  std::vector<i64> dims;  // L + 1 entries
  i64 in(int l) const { return dims[l]; }
  i64 out(int l) const { return dims[l + 1]; }
  i64 size(int l) const { return dims[l] * dims[l + 1]; }
  i64 max_dim() const { return *std::max_element(dims.begin(), dims.end()); }
};

// rows of a state tile that the forward's update walks together: ~16K elements a row block (64 KB of float: its
// right-hand sides and the tile's W and S rows in cache together), a multiple of the register block; a small state
// (the tiny model's 32 x 128) is one tile
static inline i64 tile_rows(i64 cols) {
  constexpr i64 kTileElems = 16384;
  return std::max<i64>(kRows, kTileElems / std::max<i64>(cols, 1) / kRows * kRows);
}

// ---------------------------------------------------------------------------------------------------------------
// Forward: `_scan_forward` over all chunks of every group.
//
// Where the state streams from memory (Qwen3-0.6B's 256 x 1024 per layer and head: 1 MB, beyond the caches), each
// chunk touches it as few times as it can: the MLP reads W_l once per product, the update runs in row tiles of
// `tile_rows` (its right-hand sides h_kᵀ(û δ) for a tile computed into a small buffer and applied while the tile's
// W and S rows are in cache, instead of a state-sized sums buffer written and read back), and with `keep` the state
// lives in the kept buffers: chunk k reads its slot and writes chunk k+1's (no copy of the chunk-start state).
// `large`: p_l = δ_l W_lᵀ as (W_l δ_lᵀ)ᵀ — two small transposes instead of a state-sized one (and W_lᵀ is not kept;
// the backward does the same); small states keep the transposed copy, whose products are faster there.
template <typename T>
static void forward_impl(const Dims& D, bool momentum, bool capped, bool keep, bool large, const T* x, const T* v,
                         const T* coef, const T* weight, const T* limit, const T* decay, const T* carry_m,
                         const T* carry_s, std::vector<const T*> Win, std::vector<const T*> Sin, std::vector<T*> W,
                         std::vector<T*> S, T* reads, T* errors, T* scale_out,
                         T* surprise, T* kappa_out, T* total_out, std::vector<T*> Wsave, std::vector<T*> Ssave,
                         std::vector<T*> Zsave, std::vector<T*> Sigsave, std::vector<T*> Hsave,
                         std::vector<T*> Psave, std::vector<T*> WTsave) {
  const i64 G = D.G, K = D.K, C = D.C, L = D.L, d = D.dims[0], C2 = 2 * C, md = D.max_dim();
  // the groups are independent: with more than one intra-op thread they are split between the threads
  at::parallel_for(0, G, 1, [&](i64 g_begin, i64 g_end) {
    // scratch of one chunk (used when the backward keeps nothing, and for what it recomputes)
    std::vector<std::vector<T>> zb(L), sb(L), hb(L), pb(L), delta(L);
    for (int l = 0; l < L - 1; ++l) {
      zb[l].resize(C2 * D.out(l));
      sb[l].resize(C2 * D.out(l));
      hb[l].resize(C2 * D.out(l));
      pb[l].resize(C * D.out(l));
    }
    for (int l = 0; l < L; ++l) delta[l].resize(C * D.out(l));
    i64 sums_n = 0;
    for (int l = 0; l < L; ++l) sums_n = std::max(sums_n, tile_rows(D.out(l)) * 2 * D.out(l));
    std::vector<T> wt(large ? 0 : md * md), rhs(C * 2 * md), sums(sums_n), dsq(L * C), hsq(L * C), sq(C),
        out2(C2 * d), deltaT(large ? md * C : 0), pT(large ? md * C : 0);
    std::vector<const T*> h(L);
    std::vector<T*> z(L), sg(L), p(L);  // this chunk's z_l, σ(z_l), p_l
    std::vector<T*> cw(L), cs(L), nw(L), ns(L);  // the state at the chunk start, and where the update writes it
    for (i64 g = g_begin; g < g_end; ++g) {
      std::vector<T*> w(L), s(L);
      for (int l = 0; l < L; ++l) {
        w[l] = W[l] + g * D.size(l);
        s[l] = S[l] + g * D.size(l);
      }
      for (i64 k = 0; k < K; ++k) {
        const i64 idx = g * K + k;
        const bool last = k + 1 == K;
        for (int l = 0; l < L; ++l) {
          const i64 n = D.size(l);
          if (keep) {  // chunk k's state in its kept slot (the first copied there from the call's input)
            cw[l] = Wsave[l] + idx * n;
            if (k == 0) std::memcpy(cw[l], Win[l] + g * n, n * sizeof(T));
            nw[l] = last ? w[l] : cw[l] + n;
            if (momentum) {
              cs[l] = Ssave[l] + idx * n;
              if (k == 0) std::memcpy(cs[l], Sin[l] + g * n, n * sizeof(T));
              ns[l] = last ? s[l] : cs[l] + n;
            } else {
              cs[l] = ns[l] = s[l];
            }
          } else {  // in place
            cw[l] = nw[l] = w[l];
            cs[l] = ns[l] = s[l];
          }
        }
        const T* X = x + idx * C2 * d;
        // the MLP on [queries | keys]: z_l = h_l W_l, h_{l+1} = z_l·σ(z_l)
        h[0] = X;
        for (int l = 0; l < L - 1; ++l) {
          const i64 o = D.out(l), n = C2 * o;
          z[l] = keep ? Zsave[l] + idx * n : zb[l].data();
          sg[l] = keep ? Sigsave[l] + idx * n : sb[l].data();
          T* hn = keep ? Hsave[l] + idx * n : hb[l].data();
          p[l] = keep ? Psave[l] + idx * C * o : pb[l].data();
          gemm<T>(C2, o, D.in(l), h[l], D.in(l), 1, cw[l], o, z[l], o, false);
          silu_forward<T>(n, z[l], sg[l], hn);
          h[l + 1] = hn;
        }
        // the last layer, one product over both halves: reads on the query rows, errors M(k) − v on the key rows
        const i64 il = D.in(L - 1);
        T* R = reads + idx * C * d;
        T* E = errors + idx * C * d;
        gemm<T>(C2, d, il, h[L - 1], il, 1, cw[L - 1], d, out2.data(), d, false);
        std::memcpy(R, out2.data(), C * d * sizeof(T));
        const T* Vc = v + idx * C * d;
        const T* Ok = out2.data() + C * d;
        IVDEP
        for (i64 e = 0; e < C * d; ++e) {
          E[e] = Ok[e] - Vc[e];
          delta[L - 1][e] = T(2) * E[e];  // dℓ/dM(k) of Eq. 12
        }
        // δ_{l-1} = (δ_l W_lᵀ) ⊙ act'(z_{l-1}) on the key rows
        for (int l = L - 1; l >= 1; --l) {
          const i64 i = D.in(l), o = D.out(l);
          if (large) {  // pᵀ = W_l δ_lᵀ
            transpose<T>(C, o, delta[l].data(), deltaT.data());
            gemm<T>(i, C, o, cw[l], o, 1, deltaT.data(), C, pT.data(), C, false);
            transpose<T>(i, C, pT.data(), p[l - 1]);
          } else {
            T* wtl = keep ? WTsave[l - 1] + idx * D.size(l) : wt.data();  // W_lᵀ, kept for the backward's d/d h_l
            transpose<T>(i, o, cw[l], wtl);
            gemm<T>(C, i, o, delta[l].data(), o, 1, wtl, i, p[l - 1], i, false);
          }
          const T* sk = sg[l - 1] + C * i;
          const T* hk = h[l] + C * i;
          IVDEP
          for (i64 e = 0; e < C * i; ++e) delta[l - 1][e] = p[l - 1][e] * silu_grad(sk[e], hk[e]);
        }
        // ‖∇ℓ_t‖² = Σ_l ‖h_l‖²‖δ_l‖² on the key rows
        for (int l = 0; l < L; ++l) {
          const i64 i = D.in(l), o = D.out(l);
          const T* hk = h[l] + C * i;
          for (i64 j = 0; j < C; ++j) {
            dsq[l * C + j] = dot<T>(o, delta[l].data() + j * o, delta[l].data() + j * o);
            hsq[l * C + j] = dot<T>(i, hk + j * i, hk + j * i);
          }
        }
        for (i64 j = 0; j < C; ++j) {
          T acc = hsq[j] * dsq[j];
          for (int l = 1; l < L; ++l) acc = acc + hsq[l * C + j] * dsq[l * C + j];
          sq[j] = acc;
          surprise[idx * C + j] = acc;
        }
        T scl = T(1);
        if (capped) {  // titans.memory.chunk.cap_steps: scale = min(1, limit / Σ_j weight_j κ_j)
          T total = 0;
          for (i64 j = 0; j < C; ++j) {
            const T kap = sq[j] / std::max(dsq[(L - 1) * C + j], T(1e-30));
            kappa_out[idx * C + j] = kap;
            total += weight[idx * C + j] * kap;
          }
          total_out[idx] = total;
          const T ratio = limit[idx] / std::max(total, T(1e-12));
          scl = ratio > T(1) ? T(1) : ratio;
        }
        scale_out[idx] = scl;
        const T* cf = coef + idx * C * 2;
        const T dec = decay[idx];
        const T cm = momentum ? carry_m[idx] : T(0), csc = momentum ? carry_s[idx] : T(0);
        // W_l' = A·W_l + c_S·S_l − h_lᵀ(û ⊙ δ_l),  S_l' = E·S_l − h_lᵀ(ŝ ⊙ δ_l), in row tiles
        for (int l = 0; l < L; ++l) {
          const i64 i = D.in(l), o = D.out(l), rt = tile_rows(o);
          for (i64 j = 0; j < C; ++j) {
            const T c0 = cf[2 * j] * scl, c1 = cf[2 * j + 1] * scl;
            IVDEP
            for (i64 e = 0; e < o; ++e) {
              rhs[j * 2 * o + e] = delta[l][j * o + e] * c0;
              rhs[j * 2 * o + o + e] = delta[l][j * o + e] * c1;
            }
          }
          for (i64 a0 = 0; a0 < i; a0 += rt) {
            const i64 m = std::min(rt, i - a0);
            gemm<T>(m, 2 * o, C, h[l] + C * i + a0, 1, i, rhs.data(), 2 * o, sums.data(), 2 * o, false);
            for (i64 a = a0; a < a0 + m; ++a) {
              const T* sw = sums.data() + (a - a0) * 2 * o;
              const T* sm = sw + o;
              const T* wr = cw[l] + a * o;  // source and destination: the same rows when the walk runs in place
              const T* sr = cs[l] + a * o;
              T* wd = nw[l] + a * o;
              T* sd = ns[l] + a * o;
              if (momentum) {
                IVDEP
                for (i64 b = 0; b < o; ++b) {
                  const T wv = wr[b], mv = sr[b];
                  wd[b] = (sw[b] + dec * wv) + cm * mv;
                  sd[b] = sm[b] + csc * mv;
                }
              } else {
                IVDEP
                for (i64 b = 0; b < o; ++b) wd[b] = sw[b] + dec * wr[b];
                if (last || !keep) std::memcpy(sd, sm, o * sizeof(T));  // S does not carry: only the last counts
              }
            }
          }
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------------------------
// Backward: `_scan_backward` over all chunks of every group, in reverse.
template <typename T>
static void backward_impl(const Dims& D, bool momentum, const T* x, const T* coef, const T* scale, const T* decay,
                          const T* carry_m, const T* carry_s, const T* errors, std::vector<const T*> Wsave,
                          std::vector<const T*> Ssave, std::vector<const T*> Zsave, std::vector<const T*> Sigsave,
                          std::vector<const T*> Hsave, std::vector<const T*> Psave, std::vector<const T*> WTsave,
                          const T* g_reads,
                          const T* g_errors, std::vector<T*> gW, std::vector<T*> gM, T* g_x, T* g_v, T* g_coef,
                          T* g_decay, T* g_carry_m, T* g_carry_s) {
  const i64 G = D.G, K = D.K, C = D.C, L = D.L, d = D.dims[0], C2 = 2 * C, md = D.max_dim();
  // the groups are independent: with more than one intra-op thread they are split between the threads
  at::parallel_for(0, G, 1, [&](i64 g_begin, i64 g_end) {
    std::vector<std::vector<T>> delta(L), gdelta(L), ghkT(L), gzx(L);
    for (int l = 0; l < L; ++l) {
      delta[l].resize(C * D.out(l));
      gdelta[l].resize(C * D.out(l));
      ghkT[l].resize(D.in(l) * C);
      gzx[l].resize(C * D.out(l));
    }
    // large: the forward kept no W_lᵀ (it computed p_l as (W_l δ_lᵀ)ᵀ); d/d h_l is computed the same way
    const bool large = L > 1 && WTsave[0] == nullptr;
    std::vector<T> grw(C * md), grm(C * md), rhs(C * 2 * md), rhsT(2 * md * C), ghk(C * md), wt(large ? 0 : md * md),
        gz(C2 * md), gh(C2 * md), mbuf(C * md), c0(C), c1(C), gzT(large ? md * C2 : 0), outT(large ? md * C2 : 0);
    std::vector<const T*> h(L), w(L), s(L), z(L), sg(L), p(L);  // this chunk's kept tensors
    for (i64 g = g_begin; g < g_end; ++g) {
      std::vector<T*> gw(L), gm(L);
      for (int l = 0; l < L; ++l) {
        gw[l] = gW[l] + g * D.size(l);
        gm[l] = gM[l] + g * D.size(l);
      }
      for (i64 k = K - 1; k >= 0; --k) {
        const i64 idx = g * K + k;
        h[0] = x + idx * C2 * d;
        for (int l = 0; l < L; ++l) {
          w[l] = Wsave[l] + idx * D.size(l);
          s[l] = momentum ? Ssave[l] + idx * D.size(l) : nullptr;
        }
        for (int l = 0; l < L - 1; ++l) {
          const i64 o = D.out(l);
          z[l] = Zsave[l] + idx * C2 * o;
          sg[l] = Sigsave[l] + idx * C2 * o;
          h[l + 1] = Hsave[l] + idx * C2 * o;
          p[l] = Psave[l] + idx * C * o;
        }
        // the forward's δ_l, again from what it kept
        const T* E = errors + idx * C * d;
        IVDEP
        for (i64 e = 0; e < C * d; ++e) delta[L - 1][e] = T(2) * E[e];
        for (int l = L - 1; l >= 1; --l) {
          const i64 i = D.in(l);
          const T* sk = sg[l - 1] + C * i;
          const T* hk = h[l] + C * i;
          IVDEP
          for (i64 e = 0; e < C * i; ++e) delta[l - 1][e] = p[l - 1][e] * silu_grad(sk[e], hk[e]);
        }
        const T scl = scale[idx];
        for (i64 j = 0; j < C; ++j) {
          c0[j] = coef[idx * C * 2 + 2 * j] * scl;
          c1[j] = coef[idx * C * 2 + 2 * j + 1] * scl;
        }
        T* gcoef = g_coef + idx * C * 2;
        IVDEP
        for (i64 e = 0; e < 2 * C; ++e) gcoef[e] = 0;
        // the update: W' = A·W + c_S·S + h_kᵀ(−û δ), S' = E·S + h_kᵀ(−ŝ δ): d/d rhs = h_k [gW' | gS'], d/d h_k =
        // rhs [gW' | gS']ᵀ (as its transpose), then the decay and momentum carries — d/dA = ⟨gW', W⟩,
        // d/dc_S = ⟨gW', S⟩, d/dE = ⟨gS', S⟩; gW = A·gW', gS = c_S·gW' + E·gS' (zero without momentum) — in place.
        // Whole-state products: in row tiles (to keep a tile in cache between them) the backward was 5-10% slower,
        // the products' inner dimension cut to a tile's rows
        const T dec = decay[idx];
        const T cm = momentum ? carry_m[idx] : T(0), cs = momentum ? carry_s[idx] : T(0);
        T sd = 0, scm = 0, scs = 0;
        for (int l = 0; l < L; ++l) {
          const i64 i = D.in(l), o = D.out(l), n = D.size(l);
          const T* hk = h[l] + C * i;
          for (i64 j = 0; j < C; ++j) {
            const T* dj = delta[l].data() + j * o;
            T* rr = rhs.data() + j * 2 * o;
            IVDEP
            for (i64 e = 0; e < o; ++e) {
              rr[e] = dj[e] * c0[j];
              rr[o + e] = dj[e] * c1[j];
            }
          }
          transpose<T>(C, 2 * o, rhs.data(), rhsT.data());
          gemm<T>(C, o, i, hk, i, 1, gw[l], o, grw.data(), o, false);  // d/d rhs_w = h_k gW'
          gemm<T>(C, o, i, hk, i, 1, gm[l], o, grm.data(), o, false);  // d/d rhs_m = h_k gS'
          gemm<T>(i, C, o, gw[l], o, 1, rhsT.data(), C, ghkT[l].data(), C, false);
          gemm<T>(i, C, o, gm[l], o, 1, rhsT.data() + o * C, C, ghkT[l].data(), C, true);
          if (momentum) {
            T dots[3];
            carry_backward<T>(n, gw[l], gm[l], w[l], s[l], dec, cm, cs, dots);
            sd += dots[0];
            scm += dots[1];
            scs += dots[2];
          } else {
            T* gwl = gw[l];
            T* gml = gm[l];
            sd += dot<T>(n, gwl, w[l]);
            IVDEP
            for (i64 e = 0; e < n; ++e) gml[e] = 0;
            IVDEP
            for (i64 e = 0; e < n; ++e) gwl[e] *= dec;
          }
          for (i64 j = 0; j < C; ++j) {
            const T* dj = delta[l].data() + j * o;
            const T* rw = grw.data() + j * o;
            const T* rm = grm.data() + j * o;
            T* gd = gdelta[l].data() + j * o;
            gcoef[2 * j] += dot<T>(o, rw, dj);
            gcoef[2 * j + 1] += dot<T>(o, rm, dj);
            IVDEP
            for (i64 e = 0; e < o; ++e) gd[e] = rw[e] * c0[j] + rm[e] * c1[j];
          }
        }
        g_decay[idx] = sd;
        if (momentum) {
          g_carry_m[idx] = scm;
          g_carry_s[idx] = scs;
        }
        // δ_l = p_l ⊙ act'(z_l), p_l = δ_{l+1} W_{l+1}ᵀ: forward through the layers
        for (int l = 0; l < L - 1; ++l) {
          const i64 o = D.out(l), o2 = D.out(l + 1);
          const T* sk = sg[l] + C * o;
          const T* hk = h[l + 1] + C * o;
          const T* zk = z[l] + C * o;
          IVDEP
          for (i64 e = 0; e < C * o; ++e) {
            mbuf[e] = gdelta[l][e] * silu_grad(sk[e], hk[e]);
            gzx[l][e] = gdelta[l][e] * p[l][e] * silu_grad2(sk[e], zk[e]);
          }
          gemm<T>(C, o2, o, mbuf.data(), o, 1, w[l + 1], o2, gdelta[l + 1].data(), o2, true);
          gemm<T>(o, o2, C, mbuf.data(), 1, o, delta[l + 1].data(), o2, gw[l + 1], o2, true);
        }
        // e = out − v, δ_{L−1} = 2e; the MLP's backward from [d/d reads | d/d errors]
        T* GV = g_v + idx * C * d;
        const T* gE = g_errors + idx * C * d;
        const T* gR = g_reads + idx * C * d;
        IVDEP
        for (i64 e = 0; e < C * d; ++e) {
          const T ge = gE[e] + T(2) * gdelta[L - 1][e];  // d/d e
          GV[e] = -ge;
          gz[e] = gR[e];
          gz[C * d + e] = ge;
        }
        for (int l = L - 1; l >= 0; --l) {
          const i64 i = D.in(l), o = D.out(l);
          gemm<T>(i, o, C2, h[l], 1, i, gz.data(), o, gw[l], o, true);  // gW_l += h_lᵀ gz
          T* out = l == 0 ? g_x + idx * C2 * d : gh.data();
          if (large) {  // d/d h_l = (W_l gzᵀ)ᵀ: two small transposes, not a state-sized one
            transpose<T>(C2, o, gz.data(), gzT.data());
            gemm<T>(i, C2, o, w[l], o, 1, gzT.data(), C2, outT.data(), C2, false);
            transpose<T>(i, C2, outT.data(), out);
          } else {
            const T* wtl = wt.data();  // W_lᵀ: the forward's for l ≥ 1
            if (l == 0)
              transpose<T>(i, o, w[l], wt.data());
            else
              wtl = WTsave[l - 1] + idx * D.size(l);
            gemm<T>(C2, i, o, gz.data(), o, 1, wtl, i, out, i, false);  // d/d h_l = gz W_lᵀ
          }
          transpose<T>(i, C, ghkT[l].data(), ghk.data());  // d/d h_k of the update, [C x i]
          T* ok = out + C * i;
          IVDEP
          for (i64 e = 0; e < C * i; ++e) ok[e] += ghk[e];
          if (l == 0) break;
          const T* zs = sg[l - 1];
          const T* hh = h[l];
          IVDEP
          for (i64 e = 0; e < C2 * i; ++e) gz[e] = out[e] * silu_grad(zs[e], hh[e]);
          IVDEP
          for (i64 e = 0; e < C * i; ++e) gz[C * i + e] += gzx[l - 1][e];
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------------------------
// The buffers a forward keeps for its backward (the state at every chunk start: megabytes per call; at Qwen3-0.6B's
// shapes ~130 MB per memory call, and a training step holds several calls' at once) come from a pool: glibc hands
// freed blocks of that size back to the system, so each call would fault its pages in afresh (~1 µs a 4 KB page; in a
// training step the forward walk took twice its time alone, and at Qwen3-0.6B's shapes the step 3.8x the swa step
// instead of 2.2x). A block returns to the pool when its tensor's storage is freed (after the backward, or when the
// graph is dropped), so nothing is reused while a saved view still points into it. The pool keeps freed blocks up to
// the peak of bytes its blocks held live at once (at least kPoolFloor): what the process already needed at one time,
// so the pool does not raise the peak by more than itself; `pool_trim` frees every pooled block.
constexpr size_t kPoolFloor = size_t(256) << 20;

struct Pool {
  std::mutex mutex;
  std::vector<std::pair<size_t, void*>> blocks;  // (bytes, pointer) of free blocks
  size_t bytes = 0;                              // pooled (free) bytes
  size_t live = 0, peak = 0;                     // bytes handed out and not yet released, and their peak
};

static Pool& pool() {
  static Pool* p = new Pool();  // never destroyed: tensors may be freed during interpreter shutdown
  return *p;
}

static void pool_release(size_t bytes, void* ptr) {
  Pool& p = pool();
  {
    std::lock_guard<std::mutex> lock(p.mutex);
    p.live -= bytes;
    if (p.bytes + bytes <= std::max(kPoolFloor, p.peak)) {
      p.blocks.emplace_back(bytes, ptr);
      p.bytes += bytes;
      return;
    }
  }
  std::free(ptr);
}

// frees every pooled block; returns the bytes freed (torch.ops.titans_chunk_scan.pool_trim)
int64_t pool_trim() {
  std::vector<std::pair<size_t, void*>> blocks;
  {
    Pool& p = pool();
    std::lock_guard<std::mutex> lock(p.mutex);
    blocks.swap(p.blocks);
    p.bytes = 0;
    p.peak = p.live;
  }
  int64_t freed = 0;
  for (auto& b : blocks) {
    freed += static_cast<int64_t>(b.first);
    std::free(b.second);
  }
  return freed;
}

// an uninitialised 1-d tensor of n elements from the pool (the smallest free block that fits and wastes at most
// half of itself, else a new one)
static at::Tensor pooled_empty(i64 n, const at::TensorOptions& opt) {
  const size_t want = static_cast<size_t>(std::max<i64>(n, 1)) * c10::elementSize(opt.dtype().toScalarType());
  void* ptr = nullptr;
  size_t got = 0;
  {
    Pool& p = pool();
    std::lock_guard<std::mutex> lock(p.mutex);
    size_t best = p.blocks.size();
    for (size_t j = 0; j < p.blocks.size(); ++j) {
      const size_t b = p.blocks[j].first;
      if (b >= want && b <= 2 * want && (best == p.blocks.size() || b < p.blocks[best].first)) best = j;
    }
    if (best < p.blocks.size()) {
      got = p.blocks[best].first;
      ptr = p.blocks[best].second;
      p.blocks.erase(p.blocks.begin() + static_cast<std::ptrdiff_t>(best));
      p.bytes -= got;
    }
  }
  if (ptr == nullptr) {
    got = (want + 63) / 64 * 64;
    ptr = std::aligned_alloc(64, got);
    TORCH_CHECK(ptr != nullptr, "titans_chunk_scan: out of memory allocating ", got, " bytes");
  }
  {
    Pool& p = pool();
    std::lock_guard<std::mutex> lock(p.mutex);
    p.live += got;
    p.peak = std::max(p.peak, p.live);
  }
  return at::from_blob(ptr, {n}, [got](void* q) { pool_release(got, q); }, opt);
}

// the state-sized outputs (the state after the walk, its gradient before it: megabytes at Qwen3-0.6B's shapes, faulted
// in afresh from glibc each call) from the pool too
static at::Tensor pooled_like(const at::Tensor& t) {
  return pooled_empty(t.numel(), t.options()).view(t.sizes());
}

static at::Tensor pooled_copy(const at::Tensor& t) {
  at::Tensor out = pooled_like(t);
  out.copy_(t);
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// The ops (torch.ops.titans_chunk_scan.*): tensors in, tensors out; shapes and dtypes are checked by the caller
// (titans/memory/chunk_native.py), the checks here are internal invariants.

static Dims dims_of(const at::Tensor& x, const std::vector<at::Tensor>& weights) {
  Dims D;
  D.G = x.size(0);
  D.K = x.size(1);
  D.C = x.size(2) / 2;
  D.L = static_cast<i64>(weights.size());
  D.dims.push_back(weights[0].size(1));
  for (const auto& w : weights) D.dims.push_back(w.size(2));
  return D;
}

template <typename T>
static std::vector<T*> ptrs(std::vector<at::Tensor>& ts) {
  std::vector<T*> out;
  for (auto& t : ts) out.push_back(t.defined() && t.numel() ? t.data_ptr<T>() : nullptr);
  return out;
}

template <typename T>
static std::vector<const T*> const_ptrs(const std::vector<T*>& ps) {
  return std::vector<const T*>(ps.begin(), ps.end());
}

// Returns [reads (g, k, C, d), errors (g, k, C, d), scale (g, k), surprise² (g, k, C), κ (g, k, C), total (g, k),
// W_0..W_{L-1}, S_0..S_{L-1} after the last chunk, then with keep: per chunk W_l, S_l (empty without momentum) at
// the chunk start (g, k, i, o), z_l, σ(z_l), act(z_l) (g, k, 2C, o) and p_l (g, k, C, o) of the hidden layers, and
// W_lᵀ (g, k, o, i) of the layers after the first (empty with `large`: see forward_impl)].
std::vector<at::Tensor> scan_forward(const at::Tensor& x, const at::Tensor& v, const at::Tensor& coef,
                                     const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& limit,
                                     const at::Tensor& decay, const c10::optional<at::Tensor>& carry_m,
                                     const c10::optional<at::Tensor>& carry_s, at::TensorList weights,
                                     at::TensorList moms, bool keep, bool large) {
  std::vector<at::Tensor> w0(weights.begin(), weights.end());
  const Dims D = dims_of(x, w0);
  const bool momentum = carry_m.has_value() && carry_m->defined();
  const bool capped = limit.has_value() && limit->defined();
  TORCH_CHECK(D.L >= 2 && x.is_contiguous() && v.is_contiguous() && coef.is_contiguous(), "scan_forward: layout");
  const i64 G = D.G, K = D.K, C = D.C, d = D.dims[0];
  auto opt = x.options();
  at::Tensor reads = at::empty({G, K, C, d}, opt), errors = at::empty({G, K, C, d}, opt);
  at::Tensor scale = at::empty({G, K}, opt), surprise = at::empty({G, K, C}, opt);
  at::Tensor kappa = capped ? at::empty({G, K, C}, opt) : at::empty({0}, opt);
  at::Tensor total = capped ? at::empty({G, K}, opt) : at::empty({0}, opt);
  std::vector<at::Tensor> W, S, Wsave, Ssave, Z, Sig, H, P, WT;
    // what the backward keeps, as views of one pooled block (`pooled_empty`)
  i64 kept = 0;
  for (i64 l = 0; l < D.L; ++l) {
    const i64 n = D.size(l);
    kept += (momentum ? 2 : 1) * n + (l >= 1 && !large ? n : 0) + (l < D.L - 1 ? (3 * 2 * C + C) * D.dims[l + 1] : 0);
  }
  at::Tensor arena = keep ? pooled_empty(G * K * kept, opt) : at::empty({0}, opt);
  i64 offset = 0;
  auto take = [&](at::IntArrayRef shape) {
    i64 n = 1;
    for (auto e : shape) n *= e;
    at::Tensor t = arena.narrow(0, offset, n).view(shape);
    offset += n;
    return t;
  };
  // the walk updates W, S in place without keep; with it the state lives in the kept buffers (the input copied into
  // the first chunk's slot) and W, S receive the last chunk's update
  const bool in_place = !keep || K == 0;
  std::vector<at::Tensor> w_in, s_in;
  for (i64 l = 0; l < D.L; ++l) {
    w_in.push_back(weights[l].contiguous());
    s_in.push_back(moms[l].contiguous());
    W.push_back(in_place ? pooled_copy(w_in.back()) : pooled_like(w_in.back()));
    S.push_back(in_place ? pooled_copy(s_in.back()) : pooled_like(s_in.back()));
    const i64 i = D.dims[l], o = D.dims[l + 1];
    Wsave.push_back(keep ? take({G, K, i, o}) : at::Tensor());
    Ssave.push_back(keep && momentum ? take({G, K, i, o}) : at::Tensor());
    if (l < D.L - 1) {
      Z.push_back(keep ? take({G, K, 2 * C, o}) : at::Tensor());
      Sig.push_back(keep ? take({G, K, 2 * C, o}) : at::Tensor());
      H.push_back(keep ? take({G, K, 2 * C, o}) : at::Tensor());
      P.push_back(keep ? take({G, K, C, o}) : at::Tensor());
    }
    if (l >= 1) WT.push_back(keep && !large ? take({G, K, o, i}) : at::Tensor());
  }
  TORCH_CHECK(offset == (keep ? G * K * kept : 0), "scan_forward: kept buffers");
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "titans_chunk_scan_forward", [&] {
    forward_impl<scalar_t>(D, momentum, capped, keep, large, x.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
                           coef.data_ptr<scalar_t>(), ptr_or_null<scalar_t>(weight), ptr_or_null<scalar_t>(limit),
                           decay.data_ptr<scalar_t>(), ptr_or_null<scalar_t>(carry_m),
                           ptr_or_null<scalar_t>(carry_s), const_ptrs(ptrs<scalar_t>(w_in)),
                           const_ptrs(ptrs<scalar_t>(s_in)),
                           ptrs<scalar_t>(W), ptrs<scalar_t>(S),
                           reads.data_ptr<scalar_t>(), errors.data_ptr<scalar_t>(), scale.data_ptr<scalar_t>(),
                           surprise.data_ptr<scalar_t>(), capped ? kappa.data_ptr<scalar_t>() : nullptr,
                           capped ? total.data_ptr<scalar_t>() : nullptr, ptrs<scalar_t>(Wsave),
                           ptrs<scalar_t>(Ssave), ptrs<scalar_t>(Z), ptrs<scalar_t>(Sig), ptrs<scalar_t>(H),
                           ptrs<scalar_t>(P), ptrs<scalar_t>(WT));
  });
  std::vector<at::Tensor> out{reads, errors, scale, surprise, kappa, total};
  for (auto* group : {&W, &S}) out.insert(out.end(), group->begin(), group->end());
  if (keep) {
    for (auto* group : {&Wsave, &Ssave, &Z, &Sig, &H, &P, &WT}) {
      for (auto& t : *group) out.push_back(t.defined() ? t : at::empty({0}, opt));
    }
  }
  return out;
}

// saved: what scan_forward returned after the state (the per-chunk tensors); g_w, g_m: d/d(state after the last
// chunk). Returns [d/dx (g, k, 2C, d), d/dv = −d/d errors (g, k, C, d), d/d(capped coef) (g, k, C, 2),
// d/d decay (g, k),
// d/d carry_m, d/d carry_s (g, k; empty without momentum), d/dW_l, d/dS_l before the first chunk].
std::vector<at::Tensor> scan_backward(const at::Tensor& x, const at::Tensor& coef, const at::Tensor& scale,
                                      const at::Tensor& decay, const c10::optional<at::Tensor>& carry_m,
                                      const c10::optional<at::Tensor>& carry_s, const at::Tensor& errors,
                                      at::TensorList saved, const at::Tensor& g_reads, const at::Tensor& g_errors,
                                      at::TensorList g_w, at::TensorList g_m) {
  const i64 L = static_cast<i64>(g_w.size());
  std::vector<at::Tensor> sv(saved.begin(), saved.end());
  TORCH_CHECK(static_cast<i64>(sv.size()) == 2 * L + 5 * (L - 1), "scan_backward: saved tensors");
  std::vector<at::Tensor> Wsave(sv.begin(), sv.begin() + L);
  const Dims D = [&] {
    Dims out;
    out.G = x.size(0);
    out.K = x.size(1);
    out.C = x.size(2) / 2;
    out.L = L;
    out.dims.push_back(Wsave[0].size(2));
    for (const auto& w : Wsave) out.dims.push_back(w.size(3));
    return out;
  }();
  const bool momentum = carry_m.has_value() && carry_m->defined();
  const i64 G = D.G, K = D.K, C = D.C, d = D.dims[0];
  auto opt = x.options();
  at::Tensor g_x = at::empty({G, K, 2 * C, d}, opt), g_v = at::empty({G, K, C, d}, opt);
  at::Tensor g_coef = at::empty({G, K, C, 2}, opt), g_decay = at::empty({G, K}, opt);
  at::Tensor g_cm = momentum ? at::empty({G, K}, opt) : at::empty({0}, opt);
  at::Tensor g_cs = momentum ? at::empty({G, K}, opt) : at::empty({0}, opt);
  std::vector<at::Tensor> gW, gM;
  for (i64 l = 0; l < L; ++l) {
    gW.push_back(pooled_copy(g_w[l]));
    gM.push_back(pooled_copy(g_m[l]));
  }
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "titans_chunk_scan_backward", [&] {
    using T = scalar_t;
    auto cptrs = [&](i64 start, i64 n) {
      std::vector<const T*> out;
      for (i64 j = start; j < start + n; ++j) out.push_back(sv[j].numel() ? sv[j].data_ptr<T>() : nullptr);
      return out;
    };
    backward_impl<T>(D, momentum, x.data_ptr<T>(), coef.data_ptr<T>(), scale.data_ptr<T>(), decay.data_ptr<T>(),
                     ptr_or_null<T>(carry_m), ptr_or_null<T>(carry_s), errors.data_ptr<T>(), cptrs(0, L),
                     cptrs(L, L), cptrs(2 * L, L - 1), cptrs(3 * L - 1, L - 1), cptrs(4 * L - 2, L - 1),
                     cptrs(5 * L - 3, L - 1), cptrs(6 * L - 4, L - 1), g_reads.data_ptr<T>(),
                     g_errors.data_ptr<T>(), ptrs<T>(gW), ptrs<T>(gM), g_x.data_ptr<T>(), g_v.data_ptr<T>(),
                     g_coef.data_ptr<T>(),
                     g_decay.data_ptr<T>(), momentum ? g_cm.data_ptr<T>() : nullptr,
                     momentum ? g_cs.data_ptr<T>() : nullptr);
  });
  std::vector<at::Tensor> out{g_x, g_v, g_coef, g_decay, g_cm, g_cs};
  out.insert(out.end(), gW.begin(), gW.end());
  out.insert(out.end(), gM.begin(), gM.end());
  return out;
}

}  // namespace titans_chunk_scan

TORCH_LIBRARY(titans_chunk_scan, m) {
  m.def("scan_forward", &titans_chunk_scan::scan_forward);
  m.def("scan_backward", &titans_chunk_scan::scan_backward);
  m.def("pool_trim", &titans_chunk_scan::pool_trim);
}
