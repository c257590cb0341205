"""C++ text shared by the native CPU kernels that run 8 points at a time in SIMD lanes.

Warp's CPU code is scalar: LLVM vectorizes neither a kernel's loop over points nor the per-point work.
The kernels that need it (``shadow._pcf_forward_simd``, ``raster._soft_stream_simd``) are ``wp.func_native``
snippets in clang vector types (``ext_vector_type``, lowered to AVX on CPUs that have it, to narrower SIMD
otherwise). ``CPU_LANES`` defines, for such a snippet's CPU build (put it inside
``#if !defined(__CUDA_ARCH__)``):

- ``v8f``, ``v8i``: 8 floats, 8 ints;
- ``pick(m, a, b)``: a where the lane mask m is set (all bits, as a vector comparison gives), else b;
  ``pick_int`` the same for ints;
- ``vfloor(x)``: floorf in 8 lanes;
- ``cephes_exp(a)``, ``vexp(a)``: e^a in one lane or 8, Cephes' single-precision reduction and polynomial
  (relative error below 2e-7, as libm's ``expf``, which is a scalar call that no loop vectorizes), with a
  clamped to >= -87.33654 (so e^a >= 1.2e-38: no denormals). Both run the same operations, so a point's
  value does not depend on whether it went through the lanes or the scalar remainder.

The modules that use it compile without FMA contraction where bit-for-bit agreement matters
(``fuse_fp``), and that applies to their native snippets as well.
"""

from __future__ import annotations

CPU_LANES = r"""
typedef float v8f __attribute__((ext_vector_type(8)));
typedef int v8i __attribute__((ext_vector_type(8)));
auto pick = [](v8i m, v8f a, v8f b) -> v8f {  // a where m (all bits set), else b
    return __builtin_bit_cast(v8f, (m & __builtin_bit_cast(v8i, a)) | (~m & __builtin_bit_cast(v8i, b)));
};
auto pick_int = [](v8i m, v8i a, v8i b) -> v8i { return (m & a) | (~m & b); };
auto vfloor = [&](v8f x) -> v8f {  // floorf in 8 lanes (beyond 2^23 every float is an integer)
    v8f t = __builtin_convertvector(__builtin_convertvector(x, v8i), v8f);
    t = t + __builtin_convertvector(t > x, v8f);  // true is -1
    return pick(__builtin_bit_cast(v8f, __builtin_bit_cast(v8i, x) & 0x7fffffff) < 8388608.0f, t, x);
};
auto exp_poly = [](auto a, auto n) {  // e^(a - n ln 2), Cephes' reduction and polynomial: float or 8 lanes
    decltype(a) r = a - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    decltype(a) y = 1.9875691500e-4f;
    y = y * r + 1.3981999507e-3f;
    y = y * r + 8.3334519073e-3f;
    y = y * r + 4.1665795894e-2f;
    y = y * r + 1.6666665459e-1f;
    y = y * r + 5.0000001201e-1f;
    return y * (r * r) + r + 1.0f;
};
auto cephes_exp = [&](float a) -> float {
    a = a < -87.33654f ? -87.33654f : a;
    const float n = floorf(a * 1.44269504088896341f + 0.5f);
    return exp_poly(a, n) * __builtin_bit_cast(float, ((int)n + 127) << 23);
};
auto vexp = [&](v8f a) -> v8f {  // cephes_exp in 8 lanes
    a = pick(a < -87.33654f, (v8f)(-87.33654f), a);
    const v8f n = vfloor(a * 1.44269504088896341f + 0.5f);
    return exp_poly(a, n) * __builtin_bit_cast(v8f, (__builtin_convertvector(n, v8i) + 127) << 23);
};
"""
