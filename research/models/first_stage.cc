// The first stage of a CNN on a one-channel input, for training on the CPU: convolution (stride
// 1, zero padding), BatchNorm with batch statistics, ReLU and non-overlapping max pooling, as
// two XLA FFI handlers (forward and backward). `research/models/native.py` builds, loads and
// wraps them; its docstring explains why they exist and what they compute.
//
// Layouts are NHWC: x (B, H, W, 1), kernel (KH, KW, 1, C), pooled (B, HO, WO, C).
// Nothing full-size is stored: BatchNorm's statistics come from the input's Gram matrix of
// kernel taps (`sum z = k'S`, `sum z^2 = k'Gk`), and each pooled output keeps the window
// position of its maximum (one byte). Work is split over the batch on XLA's intra-op thread
// pool; partial sums are combined in batch order, so results do not depend on the threads.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <type_traits>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kMaxTaps = 25;

struct Geometry {
  int64_t b, h, w, c, kh, kw, taps, ph, pw, ho, wo, pad_top, pad_left;
};

// Eight float32 lanes (one AVX register; two SSE or NEON ones elsewhere), GCC/Clang vectors.
using V = float __attribute__((vector_size(32)));
using VI = int32_t __attribute__((vector_size(32)));
constexpr int64_t kLanes = 8;

inline V Load(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}
inline void Store(float* p, V v) { std::memcpy(p, &v, sizeof(V)); }
inline V Broadcast(float x) { return V{x, x, x, x, x, x, x, x}; }
inline V Select(VI mask, V yes, V no) { return (V)((mask & (VI)yes) | (~mask & (VI)no)); }
inline VI SelectI(VI mask, VI yes, VI no) { return (mask & yes) | (~mask & no); }

// The sum of a[i * wp + j] * b[i * wp + j] over the H x W outputs, in eight lanes per row
// (float sums per row, a double across rows).
inline double ShiftedDot(const float* a, const float* b, const Geometry& g, int64_t wp) {
  double total = 0.0;
  for (int64_t i = 0; i < g.h; ++i) {
    const float* ar = a + i * wp;
    const float* br = b + i * wp;
    V row = Broadcast(0.0f);
    int64_t j = 0;
    for (; j + kLanes <= g.w; j += kLanes) row += Load(ar + j) * Load(br + j);
    float tail = 0.0f;
    for (; j < g.w; ++j) tail += ar[j] * br[j];
    for (int64_t l = 0; l < kLanes; ++l) tail += row[l];
    total += tail;
  }
  return total;
}

// Runs fn(i) for i in [0, n): the calling thread and up to num_threads - 1 pool tasks take
// indices from a shared counter, so the caller never waits on work nobody has picked up.
template <typename F>
void ParallelFor(ffi::ThreadPool& pool, int64_t n, const F& fn) {
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    std::mutex mu;
    std::condition_variable cv;
  };
  auto state = std::make_shared<State>();
  const F* f = &fn;
  auto run = [state, n, f]() {
    for (int64_t i; (i = state->next.fetch_add(1)) < n;) {
      (*f)(i);
      if (state->done.fetch_add(1) + 1 == n) {
        std::lock_guard<std::mutex> lock(state->mu);
        state->cv.notify_all();
      }
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), n) - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule(decltype(run)(run));
  run();
  std::unique_lock<std::mutex> lock(state->mu);
  state->cv.wait(lock, [&] { return state->done.load() == n; });
}

// Image `img` copied into `pad` with zeros around it, so every kernel tap is a plain load:
// row r of the padded image is row r - pad_top of the image.
void PadImage(const float* img, const Geometry& g, float* pad) {
  const int64_t hp = g.h + g.kh - 1, wp = g.w + g.kw - 1;
  std::fill(pad, pad + hp * wp, 0.0f);
  for (int64_t r = 0; r < g.h; ++r)
    std::copy(img + r * g.w, img + (r + 1) * g.w, pad + (r + g.pad_top) * wp + g.pad_left);
}

// Adds a padded image's tap sums S (taps) and Gram matrix G (upper triangle, taps x taps) over
// all H x W outputs: G[t][u] is the dot product of the image shifted by tap t and by tap u.
void GramOfImage(const float* pad, const Geometry& g, double* s, double* gram) {
  const int64_t wp = g.w + g.kw - 1;
  std::vector<float> ones(wp * (g.h + g.kh - 1), 1.0f);
  for (int64_t t = 0; t < g.taps; ++t) {
    const float* a = pad + (t / g.kw) * wp + t % g.kw;
    for (int64_t u = t; u < g.taps; ++u)
      gram[t * g.taps + u] += ShiftedDot(a, pad + (u / g.kw) * wp + u % g.kw, g, wp);
    s[t] += ShiftedDot(a, ones.data(), g, wp);
  }
}

// Batch-order sums of S and G over the images (G symmetrised).
void Gram(ffi::ThreadPool& pool, const float* x, const Geometry& g, std::vector<double>& s,
          std::vector<double>& gram) {
  const int64_t t2 = g.taps * g.taps;
  const int64_t padded = (g.h + g.kh - 1) * (g.w + g.kw - 1);
  std::vector<double> part(g.b * (g.taps + t2), 0.0);
  ParallelFor(pool, g.b, [&](int64_t n) {
    std::vector<float> pad(padded);
    PadImage(x + n * g.h * g.w, g, pad.data());
    double* p = part.data() + n * (g.taps + t2);
    GramOfImage(pad.data(), g, p, p + g.taps);
  });
  s.assign(g.taps, 0.0);
  gram.assign(t2, 0.0);
  for (int64_t n = 0; n < g.b; ++n) {
    const double* p = part.data() + n * (g.taps + t2);
    for (int64_t t = 0; t < g.taps; ++t) s[t] += p[t];
    for (int64_t t = 0; t < t2; ++t) gram[t] += p[g.taps + t];
  }
  for (int64_t t = 0; t < g.taps; ++t)
    for (int64_t u = 0; u < t; ++u) gram[t * g.taps + u] = gram[u * g.taps + t];
}

// BatchNorm's folded affine map as the JAX model computes it in float32:
// a = scale * rsqrt(var + eps), b = bias - mean * a.
void Affine(const float* scale, const float* bias, const float* mean, const float* var,
            float eps, int64_t c, float* a, float* b) {
  for (int64_t k = 0; k < c; ++k) {
    a[k] = scale[k] * (1.0f / std::sqrt(var[k] + eps));
    b[k] = bias[k] - mean[k] * a[k];
  }
}

// z = conv at one output for channels [8 nb, 8 nb + 8), nb < kBlocks; also returns the taps.
template <int64_t kBlocks>
inline void ConvAt(const float* base, const int64_t* off, int64_t taps, const V* kv, V* z,
                   float* v) {
  for (int64_t nb = 0; nb < kBlocks; ++nb) z[nb] = Broadcast(0.0f);
  for (int64_t t = 0; t < taps; ++t) {
    v[t] = base[off[t]];
    const V vt = Broadcast(v[t]);
    for (int64_t nb = 0; nb < kBlocks; ++nb) z[nb] += vt * kv[t * kBlocks + nb];
  }
}

// One image's pooled outputs and window positions, channels in kBlocks blocks of 8.
template <int64_t kBlocks>
void ForwardImage(const float* pad, const float* k, const float* a, const float* b,
                  const Geometry& g, float* out, uint8_t* pos, float* z_at) {
  constexpr int64_t c = kBlocks * kLanes;
  const int64_t wp = g.w + g.kw - 1;
  int64_t off[kMaxTaps];
  V kv[kMaxTaps * kBlocks], av[kBlocks], bv[kBlocks];
  for (int64_t t = 0; t < g.taps; ++t) {
    off[t] = (t / g.kw) * wp + t % g.kw;
    for (int64_t nb = 0; nb < kBlocks; ++nb) kv[t * kBlocks + nb] = Load(k + t * c + nb * kLanes);
  }
  for (int64_t nb = 0; nb < kBlocks; ++nb) {
    av[nb] = Load(a + nb * kLanes);
    bv[nb] = Load(b + nb * kLanes);
  }
  for (int64_t i = 0; i < g.ho; ++i) {
    for (int64_t j = 0; j < g.wo; ++j) {
      V best[kBlocks] = {}, z[kBlocks], z_best[kBlocks] = {};
      VI where[kBlocks] = {};
      float v[kMaxTaps];
      for (int64_t p = 0; p < g.ph * g.pw; ++p) {
        ConvAt<kBlocks>(pad + (i * g.ph + p / g.pw) * wp + j * g.pw + p % g.pw, off, g.taps,
                        kv, z, v);
        for (int64_t nb = 0; nb < kBlocks; ++nb) {
          V y = z[nb] * av[nb] + bv[nb];
          y = Select(y < 0.0f, Broadcast(0.0f), y);  // NaN stays NaN, as jax.nn.relu
          if (p == 0) {
            best[nb] = y;
            z_best[nb] = z[nb];
            where[nb] = VI{};
            continue;
          }
          // The first maximum in row-major window order; a NaN wins, as in max_pool.
          const VI take = (y > best[nb]) | (y != y);
          best[nb] = Select(take, y, best[nb]);
          z_best[nb] = Select(take, z[nb], z_best[nb]);
          where[nb] = SelectI(take, VI{} + int32_t(p), where[nb]);
        }
      }
      const int64_t o = (i * g.wo + j) * c;
      for (int64_t nb = 0; nb < kBlocks; ++nb) {
        Store(out + o + nb * kLanes, best[nb]);
        Store(z_at + o + nb * kLanes, z_best[nb]);
        for (int64_t l = 0; l < kLanes; ++l) pos[o + nb * kLanes + l] = uint8_t(where[nb][l]);
      }
    }
  }
}

// One image's sums for the backward pass, added to acc (2 + taps rows of c): the pooled
// gradient that reaches z (at its window's maximum, where the ReLU passed it), that times z,
// and that times each kernel tap of the input there. Only the pooled outputs are read: each
// window's z at its maximum and position come from the forward pass.
template <int64_t kBlocks>
void BackwardImage(const float* pad, const float* a, const float* b, const Geometry& g,
                   const float* g_pooled, const uint8_t* pos, const float* z_at,
                   double* acc) {
  constexpr int64_t c = kBlocks * kLanes;
  const int64_t wp = g.w + g.kw - 1;
  int64_t off[kMaxTaps];
  V av[kBlocks], bv[kBlocks];
  for (int64_t t = 0; t < g.taps; ++t) off[t] = (t / g.kw) * wp + t % g.kw;
  for (int64_t nb = 0; nb < kBlocks; ++nb) {
    av[nb] = Load(a + nb * kLanes);
    bv[nb] = Load(b + nb * kLanes);
  }
  const int64_t rows = 2 + g.taps;
  V sums[(2 + kMaxTaps) * kBlocks];
  for (int64_t i = 0; i < g.ho; ++i) {
    // Float sums over one pooled row, added to the doubles once per row.
    for (int64_t q = 0; q < rows * kBlocks; ++q) sums[q] = Broadcast(0.0f);
    for (int64_t j = 0; j < g.wo; ++j) {
      const int64_t o = (i * g.wo + j) * c;
      V gz[kBlocks];
      VI at[kBlocks];
      for (int64_t nb = 0; nb < kBlocks; ++nb) {
        const V z = Load(z_at + o + nb * kLanes);
        const V y = z * av[nb] + bv[nb];  // as in the forward pass: the same float32 ops
        gz[nb] = Select(y > 0.0f, Load(g_pooled + o + nb * kLanes), Broadcast(0.0f));
        sums[nb] += gz[nb];
        sums[kBlocks + nb] += gz[nb] * z;
        for (int64_t l = 0; l < kLanes; ++l) at[nb][l] = pos[o + nb * kLanes + l];
      }
      for (int64_t p = 0; p < g.ph * g.pw; ++p) {
        const float* base = pad + (i * g.ph + p / g.pw) * wp + j * g.pw + p % g.pw;
        V gp[kBlocks];
        for (int64_t nb = 0; nb < kBlocks; ++nb)
          gp[nb] = Select(at[nb] == int32_t(p), gz[nb], Broadcast(0.0f));
        for (int64_t t = 0; t < g.taps; ++t) {
          const V vt = Broadcast(base[off[t]]);
          for (int64_t nb = 0; nb < kBlocks; ++nb) sums[(2 + t) * kBlocks + nb] += gp[nb] * vt;
        }
      }
    }
    for (int64_t q = 0; q < rows; ++q)
      for (int64_t nb = 0; nb < kBlocks; ++nb)
        for (int64_t l = 0; l < kLanes; ++l) acc[q * c + nb * kLanes + l] += sums[q * kBlocks + nb][l];
  }
}

// Calls fn.template operator()<kBlocks>() for the channel count (8, 16, 32 or 64).
template <typename F>
void ByBlocks(int64_t c, const F& fn) {
  switch (c / kLanes) {
    case 1: fn(std::integral_constant<int64_t, 1>{}); break;
    case 2: fn(std::integral_constant<int64_t, 2>{}); break;
    case 4: fn(std::integral_constant<int64_t, 4>{}); break;
    default: fn(std::integral_constant<int64_t, 8>{}); break;
  }
}

Geometry MakeGeometry(ffi::AnyBuffer::Dimensions xd, ffi::AnyBuffer::Dimensions kd,
                      int64_t ph, int64_t pw, int64_t pad_top, int64_t pad_left) {
  Geometry g;
  g.b = xd[0];
  g.h = xd[1];
  g.w = xd[2];
  g.kh = kd[0];
  g.kw = kd[1];
  g.c = kd[3];
  g.taps = g.kh * g.kw;
  g.ph = ph;
  g.pw = pw;
  g.ho = g.h / ph;
  g.wo = g.w / pw;
  g.pad_top = pad_top;
  g.pad_left = pad_left;
  return g;
}

ffi::Error CheckGeometry(const Geometry& g) {
  const bool channels_ok = g.c == 8 || g.c == 16 || g.c == 32 || g.c == 64;
  if (g.taps > kMaxTaps || !channels_ok || g.ph * g.pw > 255 || g.ph < 1 || g.pw < 1)
    return ffi::Error::InvalidArgument(
        "first_stage: needs at most 25 kernel taps, 8/16/32/64 channels, a pool of <= 255");
  return ffi::Error::Success();
}

// S and G travel from the forward to the backward pass as float32 pairs (hi, lo = the rest),
// about 48 bits of each float64 sum: row 0 holds the hi parts, row 1 the lo parts.
void PackSums(const std::vector<double>& s, const std::vector<double>& gram, float* out) {
  const int64_t n = int64_t(s.size() + gram.size());
  for (int64_t q = 0; q < n; ++q) {
    const double v = q < int64_t(s.size()) ? s[q] : gram[q - s.size()];
    out[q] = float(v);
    out[n + q] = float(v - double(out[q]));
  }
}

void UnpackSums(const float* in, int64_t taps, std::vector<double>& s, std::vector<double>& gram) {
  const int64_t n = taps + taps * taps;
  s.resize(taps);
  gram.resize(taps * taps);
  for (int64_t q = 0; q < n; ++q) {
    const double v = double(in[q]) + double(in[n + q]);
    if (q < taps) s[q] = v;
    else gram[q - taps] = v;
  }
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> kernel,
                   ffi::Buffer<ffi::F32> scale, ffi::Buffer<ffi::F32> bias, float eps,
                   int64_t ph, int64_t pw, int64_t pad_top, int64_t pad_left,
                   ffi::ResultBuffer<ffi::F32> pooled, ffi::ResultBuffer<ffi::F32> mean,
                   ffi::ResultBuffer<ffi::F32> var, ffi::ResultBuffer<ffi::U8> argmax,
                   ffi::ResultBuffer<ffi::F32> z_at, ffi::ResultBuffer<ffi::F32> sums) {
  const Geometry g = MakeGeometry(x.dimensions(), kernel.dimensions(), ph, pw, pad_top,
                                  pad_left);
  if (ffi::Error e = CheckGeometry(g); e.failure()) return e;
  const float* xp = x.typed_data();
  const float* kp = kernel.typed_data();
  std::vector<double> s, gram;
  Gram(pool, xp, g, s, gram);
  PackSums(s, gram, sums->typed_data());
  const double n = double(g.b * g.h * g.w);
  for (int64_t ch = 0; ch < g.c; ++ch) {
    double sz = 0.0, szz = 0.0;
    for (int64_t t = 0; t < g.taps; ++t) {
      const double kt = kp[t * g.c + ch];
      sz += kt * s[t];
      double row = 0.0;
      for (int64_t u = 0; u < g.taps; ++u) row += gram[t * g.taps + u] * kp[u * g.c + ch];
      szz += kt * row;
    }
    const double m = sz / n;
    mean->typed_data()[ch] = float(m);
    var->typed_data()[ch] = float(std::max(0.0, szz / n - m * m));
  }
  std::vector<float> a(g.c), b(g.c);
  Affine(scale.typed_data(), bias.typed_data(), mean->typed_data(), var->typed_data(), eps,
         g.c, a.data(), b.data());
  const int64_t padded = (g.h + g.kh - 1) * (g.w + g.kw - 1);
  const int64_t per_image = g.ho * g.wo * g.c;
  ParallelFor(pool, g.b, [&](int64_t n) {
    std::vector<float> pad(padded);
    PadImage(xp + n * g.h * g.w, g, pad.data());
    const int64_t o = n * per_image;
    ByBlocks(g.c, [&](auto blocks) {
      ForwardImage<decltype(blocks)::value>(pad.data(), kp, a.data(), b.data(), g,
                                            pooled->typed_data() + o,
                                            argmax->typed_data() + o, z_at->typed_data() + o);
    });
  });
  return ffi::Error::Success();
}

ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                    ffi::Buffer<ffi::F32> kernel, ffi::Buffer<ffi::F32> scale,
                    ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::F32> mean,
                    ffi::Buffer<ffi::F32> var, ffi::Buffer<ffi::U8> argmax,
                    ffi::Buffer<ffi::F32> z_at, ffi::Buffer<ffi::F32> sums,
                    ffi::Buffer<ffi::F32> g_pooled, ffi::Buffer<ffi::F32> g_mean,
                    ffi::Buffer<ffi::F32> g_var, float eps, int64_t ph, int64_t pw,
                    int64_t pad_top, int64_t pad_left, ffi::ResultBuffer<ffi::F32> g_kernel,
                    ffi::ResultBuffer<ffi::F32> g_scale, ffi::ResultBuffer<ffi::F32> g_bias) {
  const Geometry g = MakeGeometry(x.dimensions(), kernel.dimensions(), ph, pw, pad_top,
                                  pad_left);
  if (ffi::Error e = CheckGeometry(g); e.failure()) return e;
  const float* xp = x.typed_data();
  const float* kp = kernel.typed_data();
  const float* mp = mean.typed_data();
  const float* vp = var.typed_data();
  std::vector<float> a(g.c), b(g.c);
  Affine(scale.typed_data(), bias.typed_data(), mp, vp, eps, g.c, a.data(), b.data());
  std::vector<double> s, gram;
  UnpackSums(sums.typed_data(), g.taps, s, gram);

  const int64_t stride = g.c * (2 + g.taps);
  const int64_t padded = (g.h + g.kh - 1) * (g.w + g.kw - 1);
  const int64_t per_image = g.ho * g.wo * g.c;
  std::vector<double> part(g.b * stride, 0.0);
  ParallelFor(pool, g.b, [&](int64_t n) {
    std::vector<float> pad(padded);
    PadImage(xp + n * g.h * g.w, g, pad.data());
    const int64_t o = n * per_image;
    ByBlocks(g.c, [&](auto blocks) {
      BackwardImage<decltype(blocks)::value>(pad.data(), a.data(), b.data(), g,
                                             g_pooled.typed_data() + o,
                                             argmax.typed_data() + o, z_at.typed_data() + o,
                                             part.data() + n * stride);
    });
  });
  std::vector<double> tot(stride, 0.0);
  for (int64_t n = 0; n < g.b; ++n)
    for (int64_t q = 0; q < stride; ++q) tot[q] += part[n * stride + q];

  // The chain rule through a = scale * r, b = bias - mean * a, r = rsqrt(var + eps),
  // var = E[z^2] - E[z]^2 (clamped at 0), mean = E[z]: dL/dz = a * gz + beta + gamma * z.
  const double n = double(g.b * g.h * g.w);
  for (int64_t ch = 0; ch < g.c; ++ch) {
    const double sg = tot[ch], sgz = tot[g.c + ch];
    const double m = mp[ch], r = 1.0 / std::sqrt(double(vp[ch]) + eps);
    const double sc = scale.typed_data()[ch];
    const double centred = sgz - m * sg;
    g_bias->typed_data()[ch] = float(sg);
    g_scale->typed_data()[ch] = float(r * centred);
    double gv = 0.0;  // a clamped variance passes no gradient
    if (vp[ch] > 0.0f) gv = g_var.typed_data()[ch] - 0.5 * r * r * r * sc * centred;
    const double gm = g_mean.typed_data()[ch] - sc * r * sg - 2.0 * m * gv;
    const double alpha = sc * r, beta = gm / n, gamma = 2.0 * gv / n;
    for (int64_t t = 0; t < g.taps; ++t) {
      double kg = 0.0;
      for (int64_t u = 0; u < g.taps; ++u) kg += gram[u * g.taps + t] * kp[u * g.c + ch];
      g_kernel->typed_data()[t * g.c + ch] =
          float(alpha * tot[(2 + t) * g.c + ch] + beta * s[t] + gamma * kg);
    }
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(FirstStageForward, Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x
                                  .Arg<ffi::Buffer<ffi::F32>>()  // kernel
                                  .Arg<ffi::Buffer<ffi::F32>>()  // scale
                                  .Arg<ffi::Buffer<ffi::F32>>()  // bias
                                  .Attr<float>("eps")
                                  .Attr<int64_t>("ph")
                                  .Attr<int64_t>("pw")
                                  .Attr<int64_t>("pad_top")
                                  .Attr<int64_t>("pad_left")
                                  .Ret<ffi::Buffer<ffi::F32>>()  // pooled
                                  .Ret<ffi::Buffer<ffi::F32>>()  // mean
                                  .Ret<ffi::Buffer<ffi::F32>>()  // var
                                  .Ret<ffi::Buffer<ffi::U8>>()   // window position
                                  .Ret<ffi::Buffer<ffi::F32>>()  // z there
                                  .Ret<ffi::Buffer<ffi::F32>>());  // S and G

XLA_FFI_DEFINE_HANDLER_SYMBOL(FirstStageBackward, Backward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x
                                  .Arg<ffi::Buffer<ffi::F32>>()  // kernel
                                  .Arg<ffi::Buffer<ffi::F32>>()  // scale
                                  .Arg<ffi::Buffer<ffi::F32>>()  // bias
                                  .Arg<ffi::Buffer<ffi::F32>>()  // mean
                                  .Arg<ffi::Buffer<ffi::F32>>()  // var
                                  .Arg<ffi::Buffer<ffi::U8>>()   // window position
                                  .Arg<ffi::Buffer<ffi::F32>>()  // z there
                                  .Arg<ffi::Buffer<ffi::F32>>()  // S and G
                                  .Arg<ffi::Buffer<ffi::F32>>()  // pooled gradient
                                  .Arg<ffi::Buffer<ffi::F32>>()  // mean gradient
                                  .Arg<ffi::Buffer<ffi::F32>>()  // var gradient
                                  .Attr<float>("eps")
                                  .Attr<int64_t>("ph")
                                  .Attr<int64_t>("pw")
                                  .Attr<int64_t>("pad_top")
                                  .Attr<int64_t>("pad_left")
                                  .Ret<ffi::Buffer<ffi::F32>>()  // kernel gradient
                                  .Ret<ffi::Buffer<ffi::F32>>()  // scale gradient
                                  .Ret<ffi::Buffer<ffi::F32>>());  // bias gradient
