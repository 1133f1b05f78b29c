// CPU kernels of the multiresolution hash grid: the same function as HashGridSampler with
// grid_gather (models/encodings/hashgrid_layout.py, gather.py), one pass per point and level
// instead of PyTorch's [corners, points, levels] intermediates.
//
// Why hand-written: no maintained library evaluates a hash grid on a CPU with gradients
// (tiny-cuda-nn and the Triton kernels are CUDA only), and PyTorch's own ops spend most of a
// CPU training step building and reading the intermediates. Plain C ABI, loaded with ctypes
// (models/encodings/cpu_hashgrid.py), so building it needs a C++ compiler only, not the PyTorch
// headers (seconds instead of a minute).
//
// Layout (tiny-cuda-nn's HashGrid, see models/encodings/hashgrid.py): 3-D points x [N, 3] float32;
// table [T, F] float32 with levels one after the other; features feats [N, L, F]; jacobian
// jac [3, N, L, F] (d feats / d x_d); corner c is the upper vertex along dimension d when bit
// 2 - d of c is set.
//
// Threads: std::thread, not OpenMP, so that this library does not bring a second OpenMP runtime
// into a process whose PyTorch has its own. The forward and the input gradient split the points;
// the table gradient splits the levels (each level owns its rows of the table), so no two
// threads add into the same row and the result does not depend on the thread count.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <thread>
#include <vector>

namespace {

struct Level {
  float scale;
  int64_t offset, size, res;
  bool hashed;
};

struct Axis {
  int64_t cell;
  float s, ds;  // interpolation fraction (after any smoothstep) and d s / d x (0 outside [0, 1])
};

inline Axis axis(float xr, float scale, bool smooth) {
  float x = (xr == xr) ? xr : 0.0f;  // NaN samples at 0
  x = std::min(std::max(x, 0.0f), 1.0f);
  float pos = x * scale + 0.5f;  // built with -ffp-contract=off: two roundings, as PyTorch's
  // pos >= 0.5, so truncation is floor (and needs no libm call)
  float cell = static_cast<float>(static_cast<int64_t>(pos));
  float frac = pos - cell;
  bool inside = xr >= 0.0f && xr <= 1.0f;  // the clamp has no gradient outside
  Axis a;
  a.cell = static_cast<int64_t>(cell);
  if (smooth) {
    a.s = frac * frac * (3.0f - 2.0f * frac);
    a.ds = 6.0f * frac * (1.0f - frac) * scale;
  } else {
    a.s = frac;
    a.ds = scale;
  }
  if (!inside) a.ds = 0.0f;
  return a;
}

// The 8 corners of a point in one level: table rows, weights and the weights' x-derivatives.
struct Corners {
  int64_t row[8];
  float w[8];
  float dw[3][8];
};

template <bool JAC>
inline void corners(const float* xp, const Level& lv, bool smooth, Corners& c) {
  Axis a[3];
  for (int d = 0; d < 3; ++d) a[d] = axis(xp[d], lv.scale, smooth);
  float fac[3][2], dfac[3][2];
  for (int d = 0; d < 3; ++d) {
    fac[d][0] = 1.0f - a[d].s;
    fac[d][1] = a[d].s;
    dfac[d][0] = -a[d].ds;
    dfac[d][1] = a[d].ds;
  }
  for (int k = 0; k < 8; ++k) {
    const int b0 = (k >> 2) & 1, b1 = (k >> 1) & 1, b2 = k & 1;
    const int64_t c0 = a[0].cell + b0, c1 = a[1].cell + b1, c2 = a[2].cell + b2;
    int64_t r;
    if (lv.hashed) {
      // uint32 products, as tiny-cuda-nn; the level size is a power of two
      uint32_t h = static_cast<uint32_t>(c0) ^ (static_cast<uint32_t>(c1) * 2654435761u) ^
                   (static_cast<uint32_t>(c2) * 805459861u);
      r = static_cast<int64_t>(h) & (lv.size - 1);
    } else {
      r = (c0 + c1 * lv.res + c2 * lv.res * lv.res) % lv.size;  // the upper edge wraps
    }
    c.row[k] = r + lv.offset;
    c.w[k] = (fac[0][b0] * fac[1][b1]) * fac[2][b2];
    if (JAC) {
      c.dw[0][k] = dfac[0][b0] * (fac[1][b1] * fac[2][b2]);
      c.dw[1][k] = (fac[0][b0] * dfac[1][b1]) * fac[2][b2];
      c.dw[2][k] = (fac[0][b0] * fac[1][b1]) * dfac[2][b2];
    }
  }
}

template <typename Fn>
void parallel_for(int64_t n, int n_threads, Fn fn) {
  n_threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(n_threads, n)));
  if (n_threads == 1) {
    fn(0, n);
    return;
  }
  std::vector<std::thread> pool;
  const int64_t step = (n + n_threads - 1) / n_threads;
  for (int t = 1; t < n_threads; ++t) {
    const int64_t s = t * step, e = std::min(n, s + step);
    if (s < e) pool.emplace_back(fn, s, e);
  }
  fn(0, std::min(n, step));
  for (auto& th : pool) th.join();
}

std::vector<Level> levels_of(const float* scale, const int32_t* offset, const int32_t* size,
                             const int32_t* res, const int32_t* hashed, int L) {
  std::vector<Level> lv(L);
  for (int l = 0; l < L; ++l) lv[l] = {scale[l], offset[l], size[l], res[l], hashed[l] != 0};
  return lv;
}

template <int F, bool JAC>
void forward_range(const float* x, int64_t n, const float* table, const std::vector<Level>& lv,
                   bool smooth, float* feats, float* jac, int64_t s, int64_t e) {
  const int L = static_cast<int>(lv.size());
  const int64_t plane = n * L * F;
  Corners c;
  for (int64_t i = s; i < e; ++i) {
    for (int l = 0; l < L; ++l) {
      corners<JAC>(x + 3 * i, lv[l], smooth, c);
      float acc[F] = {}, j0[F] = {}, j1[F] = {}, j2[F] = {};
      for (int k = 0; k < 8; ++k) {
        const float* v = table + c.row[k] * F;
        for (int f = 0; f < F; ++f) {
          acc[f] += c.w[k] * v[f];
          if (JAC) {
            j0[f] += c.dw[0][k] * v[f];
            j1[f] += c.dw[1][k] * v[f];
            j2[f] += c.dw[2][k] * v[f];
          }
        }
      }
      const int64_t o = (i * L + l) * F;
      for (int f = 0; f < F; ++f) {
        feats[o + f] = acc[f];
        if (JAC) {
          jac[o + f] = j0[f];
          jac[plane + o + f] = j1[f];
          jac[2 * plane + o + f] = j2[f];
        }
      }
    }
  }
}

// table gradient of the levels [ls, le): every point's corners of those levels
template <int F>
void table_grad_levels(const float* x, int64_t n, const std::vector<Level>& lv, bool smooth,
                       const float* gfeat, const float* gjac, float* gtable, int ls, int le) {
  const int L = static_cast<int>(lv.size());
  const int64_t plane = n * L * F;
  Corners c;
  // point-major: each point's gradients (one cache line for all levels) are read once
  for (int64_t i = 0; i < n; ++i) {
    for (int l = ls; l < le; ++l) {
      const int64_t o = (i * L + l) * F;
      if (gjac != nullptr) {
        corners<true>(x + 3 * i, lv[l], smooth, c);
      } else {
        corners<false>(x + 3 * i, lv[l], smooth, c);
      }
      for (int k = 0; k < 8; ++k) {
        float* g = gtable + c.row[k] * F;
        for (int f = 0; f < F; ++f) {
          float src = 0.0f;
          if (gfeat != nullptr) src += c.w[k] * gfeat[o + f];
          if (gjac != nullptr) {
            src += c.dw[0][k] * gjac[o + f];
            src += c.dw[1][k] * gjac[plane + o + f];
            src += c.dw[2][k] * gjac[2 * plane + o + f];
          }
          g[f] += src;
        }
      }
    }
  }
}

// input gradient of the points [s, e) from the features' gradient
template <int F>
void x_grad_range(const float* x, int64_t n, const float* table, const std::vector<Level>& lv,
                  bool smooth, const float* gfeat, float* gx, int64_t s, int64_t e) {
  const int L = static_cast<int>(lv.size());
  Corners c;
  for (int64_t i = s; i < e; ++i) {
    float g[3] = {0.0f, 0.0f, 0.0f};
    for (int l = 0; l < L; ++l) {
      corners<true>(x + 3 * i, lv[l], smooth, c);
      const int64_t o = (i * L + l) * F;
      for (int k = 0; k < 8; ++k) {
        const float* v = table + c.row[k] * F;
        float t = 0.0f;
        for (int f = 0; f < F; ++f) t += v[f] * gfeat[o + f];
        for (int d = 0; d < 3; ++d) g[d] += c.dw[d][k] * t;
      }
    }
    for (int d = 0; d < 3; ++d) gx[3 * i + d] = g[d];
  }
}

template <int F>
void forward_f(const float* x, int64_t n, const float* table, const std::vector<Level>& lv,
               bool smooth, float* feats, float* jac, int n_threads) {
  parallel_for(n, n_threads, [&](int64_t s, int64_t e) {
    if (jac != nullptr) {
      forward_range<F, true>(x, n, table, lv, smooth, feats, jac, s, e);
    } else {
      forward_range<F, false>(x, n, table, lv, smooth, feats, jac, s, e);
    }
  });
}

template <int F>
void backward_f(const float* x, int64_t n, const float* table, const std::vector<Level>& lv,
                bool smooth, const float* gfeat, const float* gjac, float* gtable, float* gx,
                int n_threads) {
  if (gtable != nullptr) {
    parallel_for(static_cast<int64_t>(lv.size()), n_threads, [&](int64_t s, int64_t e) {
      table_grad_levels<F>(x, n, lv, smooth, gfeat, gjac, gtable, static_cast<int>(s),
                           static_cast<int>(e));
    });
  }
  if (gx != nullptr && gfeat != nullptr) {
    parallel_for(n, n_threads, [&](int64_t s, int64_t e) {
      x_grad_range<F>(x, n, table, lv, smooth, gfeat, gx, s, e);
    });
  }
}

}  // namespace

extern "C" {

// Version of this ABI; the Python side refuses a library with another one.
int hg_abi_version() { return 1; }

// feats [N, L, F] (and jac [3, N, L, F] unless jac is null) of the points x [N, 3].
// Returns 0, or -1 for an unsupported F.
int hg_forward(const float* x, int64_t n, const float* table, int F, const float* scale,
               const int32_t* offset, const int32_t* size, const int32_t* res,
               const int32_t* hashed, int L, int smooth, float* feats, float* jac, int n_threads) {
  const std::vector<Level> lv = levels_of(scale, offset, size, res, hashed, L);
  switch (F) {
    case 1: forward_f<1>(x, n, table, lv, smooth != 0, feats, jac, n_threads); return 0;
    case 2: forward_f<2>(x, n, table, lv, smooth != 0, feats, jac, n_threads); return 0;
    case 4: forward_f<4>(x, n, table, lv, smooth != 0, feats, jac, n_threads); return 0;
    case 8: forward_f<8>(x, n, table, lv, smooth != 0, feats, jac, n_threads); return 0;
    default: return -1;
  }
}

// gtable [T, F] += the table gradient of feats' gradient gfeat [N, L, F] and jac's gradient
// gjac [3, N, L, F] (either may be null); gx [N, 3] = the input gradient from gfeat (when gx and
// gfeat are not null). gtable may be null. Returns 0, or -1 for an unsupported F.
int hg_backward(const float* x, int64_t n, const float* table, int F, const float* scale,
                const int32_t* offset, const int32_t* size, const int32_t* res,
                const int32_t* hashed, int L, int smooth, const float* gfeat, const float* gjac,
                float* gtable, float* gx, int n_threads) {
  const std::vector<Level> lv = levels_of(scale, offset, size, res, hashed, L);
  switch (F) {
    case 1: backward_f<1>(x, n, table, lv, smooth != 0, gfeat, gjac, gtable, gx, n_threads); return 0;
    case 2: backward_f<2>(x, n, table, lv, smooth != 0, gfeat, gjac, gtable, gx, n_threads); return 0;
    case 4: backward_f<4>(x, n, table, lv, smooth != 0, gfeat, gjac, gtable, gx, n_threads); return 0;
    case 8: backward_f<8>(x, n, table, lv, smooth != 0, gfeat, gjac, gtable, gx, n_threads); return 0;
    default: return -1;
  }
}

}  // extern "C"
