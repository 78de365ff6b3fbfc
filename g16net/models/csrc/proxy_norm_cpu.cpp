// LN/GN (no affine) -> gamma, beta -> SiLU -> (. - mu) * s for CPU, forward and backward, in one pass each over
// the activation (two in backward when dx is wanted). Built on first use by g16net/models/cpu_kernel.py.
//
// Why: with ATen ops the layer is group_norm, silu and a per-channel affine in forward, and a recompute, sums,
// silu_backward and group_norm_backward in backward; every op is another trip through memory, which is what the
// layer costs on a CPU. Here the statistics of (sample, group) are taken once and everything else is fused.
// Layout: contiguous (N, C, H*W), float or double (the caller converts half precision to fp32, as the ATen path
// does). Maps under 4x4 stay with the ATen path (see _KERNEL_MIN_PLANE in proxy_norm.py).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>

namespace {

// exp for float with Cephes' degree-6 polynomial after range reduction (about 1 ulp): unlike std::exp it lets the
// compiler vectorize the loops it is in (built with -fno-trapping-math). NaN passes through both clamps.
// The clamp is +-60, not exp's own range (-87, 88): GCC folds the clamped branch of sigmoid to a constant and
// multiplies every lane by it before blending, and 1 / (1 + exp(88)) is a denormal, which made every vector
// operation a microcode assist (8x slower forward on this repository's Xeon, family 6 model 207). Past +-60
// sigmoid is 0 or 1 to 1e-26.
// Always inlined: a call left in a loop is a scalar call per element, and GCC stopped inlining exp_ once it had a
// few scalar callers as well (the backward and the proxy moments ran 8x slower, measured).
#define G16_INLINE inline __attribute__((always_inline))
G16_INLINE float exp_(float x) {
  x = x < -60.0f ? -60.0f : x;
  x = x > 60.0f ? 60.0f : x;
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  return p * std::bit_cast<float>((static_cast<int32_t>(n) + 127) << 23);
}
G16_INLINE double exp_(double x) { return std::exp(x); }  // fp64 is for gradcheck, not speed

template <typename T>
G16_INLINE T sigmoid(T a) { return T(1) / (T(1) + exp_(-a)); }

// The loops over pixels live in small functions of plain (restrict) pointers and values: written inline in the
// parallel_for lambdas below, where every value is reached through the closure, GCC vectorized them only on paper
// and ran the scalar fallback (5x slower, measured).

// a = (x - m) A + B: centring first keeps a exact to an ulp of x - m even where |x| >> its spread (x A + B' would
// cancel two terms of size |m A|, as the backward's own xhat = (x - m) r does not).
template <typename T>
inline void plane_forward(const T* __restrict x, T* __restrict out, int64_t hw, T m, T A, T B, T S, T M) {
#pragma omp simd
  for (int64_t i = 0; i < hw; ++i) {
    const T a = (x[i] - m) * A + B;
    out[i] = a * sigmoid(a) * S - M;
  }
}

// sums[0..3] = sums over one plane of g (z - mu), g, ga xhat and ga (ga = g silu'(a)); ga itself into `ga_out` if
// kStore. z - mu, not z: ds = sum g (z - mu) taken as sum(g z) - mu sum(g) would cancel two terms of size |mu| sum|g|.
template <bool kStore, typename T>
inline void plane_backward_sums(const T* __restrict x, const T* __restrict g, T* __restrict ga_out, int64_t hw, T m,
                                T r, T gm, T bt, T mu, T* sums) {
  T s_gz = 0, s_g = 0, s_gax = 0, s_ga = 0;  // one plane: fp32 is what ATen's norm backward sums in too
#pragma omp simd reduction(+ : s_gz, s_g, s_gax, s_ga)
  for (int64_t i = 0; i < hw; ++i) {
    const T xh = (x[i] - m) * r, a = xh * gm + bt, sg = sigmoid(a), z = a * sg;
    const T ga = g[i] * (sg + z * (T(1) - sg));
    if constexpr (kStore) ga_out[i] = ga;
    s_gz += g[i] * (z - mu);
    s_g += g[i];
    s_gax += ga * xh;
    s_ga += ga;
  }
  sums[0] = s_gz, sums[1] = s_g, sums[2] = s_gax, sums[3] = s_ga;
}

template <typename T>
inline void plane_backward_dx(const T* __restrict x, T* __restrict dx, int64_t hw, T m, T r, T w, T m1, T m2) {
#pragma omp simd
  for (int64_t i = 0; i < hw; ++i) dx[i] = r * (dx[i] * w - m1 - (x[i] - m) * r * m2);
}

template <typename T>
inline void group_moments(const T* __restrict x, int64_t len, double* out) {
  double sum = 0, sq = 0;  // a group holds up to C * H * W values: fp32 sums would lose digits
#pragma omp simd reduction(+ : sum, sq)
  for (int64_t i = 0; i < len; ++i) {
    const double v = x[i];
    sum += v;
    sq += v * v;
  }
  out[0] = sum, out[1] = sq;
}

template <typename T>
void forward_impl(const T* x, const T* gamma, const T* beta, const T* mu, const T* s, T* out, T* mean, T* rstd,
                  int64_t N, int64_t C, int64_t HW, int64_t G, double eps) {
  const int64_t cg = C / G, len = cg * HW;
  at::parallel_for(0, N * G, 1, [&](int64_t begin, int64_t end) {
    for (int64_t ng = begin; ng < end; ++ng) {
      double mom[2];
      group_moments(x + ng * len, len, mom);
      const double m = mom[0] / len, var = std::max(mom[1] / len - m * m, 0.0), r = 1.0 / std::sqrt(var + eps);
      mean[ng] = T(m);
      rstd[ng] = T(r);
      for (int64_t k = 0; k < cg; ++k) {
        const int64_t c = (ng % G) * cg + k, off = ng * len + k * HW;
        plane_forward(x + off, out + off, HW, T(m), T(gamma[c] * r), beta[c], s[c], mu[c] * s[c]);
      }
    }
  });
}

// Per (n, c): sums of g (z - mu), g, ga xhat and ga into sums (4, N, C), with xhat the normalized input, a = gamma xhat +
// beta, z = silu(a) and ga = g silu'(a); then, if dx, dx = rstd (ga w - mean(ga w) - xhat mean(ga w xhat)) over
// each group with w = gamma s. dx holds ga between the two passes.
template <typename T>
void backward_impl(const T* g, const T* x, const T* gamma, const T* beta, const T* mean, const T* rstd, const T* mu,
                   const T* s, T* dx, T* sums, int64_t N, int64_t C, int64_t HW, int64_t G) {
  const int64_t cg = C / G, len = cg * HW, NC = N * C;
  at::parallel_for(0, N * G, 1, [&](int64_t begin, int64_t end) {
    for (int64_t ng = begin; ng < end; ++ng) {
      const T m = mean[ng], r = rstd[ng];
      double q1 = 0, q2 = 0;  // over the group: sums of w ga and of w ga xhat
      for (int64_t k = 0; k < cg; ++k) {
        const int64_t c = (ng % G) * cg + k, off = ng * len + k * HW;
        T t[4];
        if (dx) {
          plane_backward_sums<true>(x + off, g + off, dx + off, HW, m, r, gamma[c], beta[c], mu[c], t);
        } else {
          plane_backward_sums<false>(x + off, g + off, static_cast<T*>(nullptr), HW, m, r, gamma[c], beta[c], mu[c],
                                     t);
        }
        const int64_t nc = (ng / G) * C + c;
        for (int j = 0; j < 4; ++j) sums[j * NC + nc] = t[j];
        const double w = double(gamma[c]) * double(s[c]);
        q1 += w * t[3];
        q2 += w * t[2];
      }
      if (!dx) continue;
      const T m1 = T(q1 / len), m2 = T(q2 / len);
      for (int64_t k = 0; k < cg; ++k) {
        const int64_t c = (ng % G) * cg + k, off = ng * len + k * HW;
        plane_backward_dx(x + off, dx + off, HW, m, r, gamma[c] * s[c], m1, m2);
      }
    }
  });
}

// Sums over the n quantiles u of z = silu(a u + b), shifted by k = silu(b) (z at the median point u = 0):
// out[0..1] = sums of z - k and (z - k)^2; with `all`, also out[2..5] = sums of d u, (z - k) d u, d and (z - k) d
// for d = silu'(a u + b). The shift is the whole point: the variance as E z^2 - E[z]^2 cancels two terms of size
// mu^2, so where the proxy's spread is small against its mean (large s) fp32 lost 3-4 digits (1e-3 relative error
// in s on AVX2, 100x ATen's two-pass variance). With k inside the range of z, |E z - k| is of the order of the
// spread and nothing cancels: with it, fp32 sums in 8 (AVX2) or 16 (AVX-512) lanes stay within 3x ATen's fp32
// error (tests/kernel_exactness.py); double accumulators bought nothing more and made the call 1.6x slower.
template <typename T>
inline void proxy_sums(T ac, T bc, T k, const T* __restrict u, int64_t n, bool all, double* out) {
  T sz = 0, szz = 0, sdu = 0, szdu = 0, sd = 0, szd = 0;
  if (all) {
#pragma omp simd reduction(+ : sz, szz, sdu, szdu, sd, szd)
    for (int64_t i = 0; i < n; ++i) {
      const T y = ac * u[i] + bc, sg = sigmoid(y), z = y * sg, d = sg + z * (T(1) - sg), zk = z - k;
      sz += zk;
      szz += zk * zk;
      sdu += d * u[i];
      szdu += zk * d * u[i];
      sd += d;
      szd += zk * d;
    }
  } else {
#pragma omp simd reduction(+ : sz, szz)
    for (int64_t i = 0; i < n; ++i) {
      const T y = ac * u[i] + bc, zk = y * sigmoid(y) - k;
      sz += zk;
      szz += zk * zk;
    }
  }
  out[0] = sz, out[1] = szz, out[2] = sdu, out[3] = szdu, out[4] = sd, out[5] = szd;
}

// mu_c, s_c of silu(a_c u + b_c) over the n quantiles u (population variance, + eps), and, if `sums`, the four
// sums the closed-form backward (proxy_norm.proxy_moments_grad) needs, against u and against 1: of d = silu' and of
// (z - mu) d, centred on mu for the same reason as the variance.
template <typename T>
void proxy_moments_impl(const T* a, const T* b, const T* u, T* mu, T* s, T* sums, int64_t C, int64_t n, double eps) {
  at::parallel_for(0, C, 64, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      double t[6];
      const T k = b[c] * sigmoid(b[c]);  // silu(b): z at the median point, the shift
      proxy_sums(a[c], b[c], k, u, n, sums != nullptr, t);
      const double off = t[0] / n;  // E z - k
      if (sums) {
        sums[c] = T(t[2]);
        sums[C + c] = T(t[3] - off * t[2]);
        sums[2 * C + c] = T(t[4]);
        sums[3 * C + c] = T(t[5] - off * t[4]);
      }
      mu[c] = T(double(k) + off);
      s[c] = T(1.0 / std::sqrt(std::max(t[1] / n - off * off, 0.0) + eps));
    }
  });
}

void check(const at::Tensor& x, std::initializer_list<at::Tensor> per_channel, int64_t groups) {
  TORCH_CHECK(x.device().is_cpu() && x.is_contiguous() && x.dim() >= 2 && x.numel() > 0,
              "g16net_pn: a non-empty contiguous CPU (N, C, ...) tensor expected");
  TORCH_CHECK(groups > 0 && x.size(1) % groups == 0, "g16net_pn: channels ", x.size(1), " not divisible by groups ",
              groups);
  for (const auto& t : per_channel) {
    TORCH_CHECK(t.dtype() == x.dtype() && t.is_contiguous() && t.numel() == x.size(1),
                "g16net_pn: per-channel tensors must be contiguous, of x's dtype, with C elements");
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> pn_forward(const at::Tensor& x, const at::Tensor& gamma,
                                                          const at::Tensor& beta, const at::Tensor& mu,
                                                          const at::Tensor& s, int64_t groups, double eps) {
  check(x, {gamma, beta, mu, s}, groups);
  const int64_t N = x.size(0), C = x.size(1), HW = x.numel() / (N * C);
  auto out = at::empty_like(x);
  auto mean = at::empty({N, groups}, x.options()), rstd = at::empty({N, groups}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "g16net_pn_forward", [&] {
    forward_impl<scalar_t>(x.const_data_ptr<scalar_t>(), gamma.const_data_ptr<scalar_t>(),
                           beta.const_data_ptr<scalar_t>(), mu.const_data_ptr<scalar_t>(),
                           s.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
                           mean.mutable_data_ptr<scalar_t>(), rstd.mutable_data_ptr<scalar_t>(), N, C, HW, groups, eps);
  });
  return {out, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor> pn_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& gamma,
                                               const at::Tensor& beta, const at::Tensor& mean, const at::Tensor& rstd,
                                               const at::Tensor& mu, const at::Tensor& s, int64_t groups,
                                               bool need_dx) {
  check(x, {gamma, beta, mu, s}, groups);
  TORCH_CHECK(grad.sizes() == x.sizes() && grad.dtype() == x.dtype(), "g16net_pn: grad must match x");
  const int64_t N = x.size(0), C = x.size(1), HW = x.numel() / (N * C);
  TORCH_CHECK(mean.numel() == N * groups && rstd.numel() == N * groups, "g16net_pn: (N, groups) statistics expected");
  const auto g = grad.contiguous(), m = mean.contiguous(), r = rstd.contiguous();
  auto dx = need_dx ? at::empty_like(x) : at::empty({0}, x.options());  // a defined tensor: fakes match
  auto sums = at::empty({4, N, C}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "g16net_pn_backward", [&] {
    backward_impl<scalar_t>(g.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
                            gamma.const_data_ptr<scalar_t>(), beta.const_data_ptr<scalar_t>(),
                            m.const_data_ptr<scalar_t>(), r.const_data_ptr<scalar_t>(), mu.const_data_ptr<scalar_t>(),
                            s.const_data_ptr<scalar_t>(),
                            need_dx ? dx.mutable_data_ptr<scalar_t>() : nullptr, sums.mutable_data_ptr<scalar_t>(), N,
                            C, HW, groups);
  });
  return {dx, sums};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> pn_proxy_moments(const at::Tensor& a, const at::Tensor& b,
                                                                const at::Tensor& u, double eps, bool sums) {
  TORCH_CHECK(a.device().is_cpu() && a.dim() == 1 && a.is_contiguous() && u.dim() == 1 && u.is_contiguous(),
              "g16net_pn: contiguous 1-D CPU tensors expected");
  TORCH_CHECK(b.sizes() == a.sizes() && b.is_contiguous() && b.dtype() == a.dtype() && u.dtype() == a.dtype(),
              "g16net_pn: a, b of one shape and a, b, u of one dtype expected");
  const int64_t C = a.numel(), n = u.numel();
  auto mu = at::empty({C}, a.options()), s = at::empty({C}, a.options());
  auto out_sums = sums ? at::empty({2, 2, C}, a.options()) : at::empty({0}, a.options());
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "g16net_pn_proxy_moments", [&] {
    proxy_moments_impl<scalar_t>(a.const_data_ptr<scalar_t>(), b.const_data_ptr<scalar_t>(),
                                 u.const_data_ptr<scalar_t>(), mu.mutable_data_ptr<scalar_t>(),
                                 s.mutable_data_ptr<scalar_t>(), sums ? out_sums.mutable_data_ptr<scalar_t>() : nullptr,
                                 C, n, eps);
  });
  return {mu, s, out_sums};
}

}  // namespace

TORCH_LIBRARY(g16net_pn, m) {
  m.def("forward(Tensor x, Tensor gamma, Tensor beta, Tensor mu, Tensor s, int groups, float eps)"
        " -> (Tensor, Tensor, Tensor)");
  m.def("backward(Tensor grad, Tensor x, Tensor gamma, Tensor beta, Tensor mean, Tensor rstd, Tensor mu, Tensor s,"
        " int groups, bool need_dx) -> (Tensor, Tensor)");
  m.def("proxy_moments(Tensor a, Tensor b, Tensor u, float eps, bool sums) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(g16net_pn, CPU, m) {
  m.impl("forward", pn_forward);
  m.impl("backward", pn_backward);
  m.impl("proxy_moments", pn_proxy_moments);
}
