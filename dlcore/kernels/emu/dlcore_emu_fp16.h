// dlcore CUDA emulator: the 16-bit float types of cuda_fp16.h and cuda_bf16.h (__half, __half2,
// __nv_bfloat16, __nv_bfloat162) with the conversions, arithmetic, comparisons, shuffles and
// atomics kernels commonly use. Included from dlcore_emu.h; the stub headers cuda_fp16.h and
// cuda_bf16.h next to it (found through build.py's -I) add the short names half, half2,
// nv_bfloat16, nv_bfloat162, as the real headers do.
//
// Storage and layout are the GPU's: 16-bit payload (`__x`), size and alignment 2 for the
// scalars, 4 for the pairs (.x is the low half, .y the high half). The pairs are vector types:
// a misaligned __half2 load or store raises (see dlcore_emu_vector.h).
//
// Conversions are bit-exact with NumPy's float16 and ml_dtypes' bfloat16, the emulator's
// oracles: round to nearest even, overflow to inf, subnormals kept (no flush to zero). A NaN
// stays a NaN of the same sign; its payload follows NumPy's software conversion (float->half
// keeps the payload's top bits) and ml_dtypes (float->bf16 gives the quiet NaN 0x7fc0), while a
// GPU returns its canonical NaN 0x7fff: kernels must not depend on NaN payloads (the tests
// compare NaNs by sign only, since NumPy's payloads may depend on its build's CPU paths).
//
// Arithmetic rounds once per operation, as the hardware does. +, -, *, / compute in float and
// round to 16 bits: float's 24-bit significand is at least 2p+2 bits for half (p = 11) and
// bfloat16 (p = 8), so that double rounding is exactly the correctly rounded result. Fused
// multiply-adds compute a*b exactly in double and add c with a round-to-odd sum, which a second
// rounding to 16 bits cannot spoil (a plain float fma would misround a*b on a tie plus a tiny c).
#pragma once

namespace dlemu {

// A float widened to double from its bits: exact, subnormals included. NOTE: the emulator runs
// kernels with the CPU's denormals-are-zero mode on (as CuPy's -ftz=true builds do for float
// arithmetic), under which a plain (double)f reads a subnormal float as 0; the GPU's
// conversion instructions (cvt.rn.f16.f32, cvt.rn.bf16.f32) keep it.
inline double float_as_double(float f) {
  uint32_t b = (uint32_t)to_bits(f), mag = b & 0x7fffffffu;
  if (mag == 0 || mag >= 0x00800000u) return (double)f;  // zero, normal, inf, NaN: exact
  double v = (double)mag * 0x1p-149;                       // subnormal: mantissa * 2^-149
  return (b >> 31) ? -v : v;
}

// ---- bit-exact conversions ----------------------------------------------------------------
// Round a finite |d| to a binary format with M stored mantissa bits and normal exponents
// [EMIN, EMAX]: round to nearest even, subnormals below 2^EMIN, overflow to inf. Returns the
// format's magnitude bits.
template <int M, int EMIN, int EMAX>
inline uint32_t round_magnitude(double d) {
  constexpr int bias = 1 - EMIN;
  uint64_t bits = to_bits(d) & 0x7fffffffffffffffull;
  int exp = (int)(bits >> 52) - 1023;
  if (exp > EMAX) return (uint32_t)(EMAX + bias + 1) << M;  // inf
  uint64_t sig = (bits & 0xfffffffffffffull) | (1ull << 52);
  int shift = 52 - M;
  uint32_t base = 0;
  if (exp >= EMIN)
    base = (uint32_t)(exp + bias - 1) << M;  // sig >> shift carries the implicit bit: +1 exponent
  else
    shift += EMIN - exp;  // subnormal: the quantum stays 2^(EMIN - M)
  if (shift > 53) return 0;  // below half the smallest subnormal (and double subnormals)
  uint64_t keep = sig >> shift, rest = sig & ((1ull << shift) - 1), halfway = 1ull << (shift - 1);
  uint32_t r = base + (uint32_t)keep;
  if (rest > halfway || (rest == halfway && (keep & 1))) ++r;  // a carry may reach inf: right
  return r;
}

inline uint16_t double_to_half_bits(double d) {
  uint64_t b = to_bits(d);
  uint16_t sign = (uint16_t)((b >> 48) & 0x8000);
  if ((b & 0x7ff0000000000000ull) == 0x7ff0000000000000ull) {
    uint16_t payload = (uint16_t)((b & 0xfffffffffffffull) >> 42);
    if ((b & 0xfffffffffffffull) == 0) return sign | 0x7c00;  // inf
    return sign | 0x7c00 | (payload ? payload : 1);              // NaN, as NumPy
  }
  return sign | (uint16_t)round_magnitude<10, -14, 15>(d);
}

inline uint16_t float_to_half_bits(float f) { return double_to_half_bits(float_as_double(f)); }

inline float half_bits_to_float(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
  if (exp == 0x1f) return from_bits<float>(sign | 0x7f800000 | (man << 13));  // inf, NaN
  if (exp == 0) {  // zero or subnormal: man * 2^-24, exact in float
    float v = (float)man * 5.9604644775390625e-08f;
    return sign ? -v : v;
  }
  return from_bits<float>(sign | ((exp + 112) << 23) | (man << 13));
}

inline uint16_t double_to_bf16_bits(double d) {
  uint64_t b = to_bits(d);
  uint16_t sign = (uint16_t)((b >> 48) & 0x8000);
  if ((b & 0x7ff0000000000000ull) == 0x7ff0000000000000ull)
    return sign | ((b & 0xfffffffffffffull) ? 0x7fc0 : 0x7f80);  // NaN as ml_dtypes, or inf
  return sign | (uint16_t)round_magnitude<7, -126, 127>(d);
}

inline uint16_t float_to_bf16_bits(float f) { return double_to_bf16_bits(float_as_double(f)); }

inline float bf16_bits_to_float(uint16_t h) { return from_bits<float>((uint32_t)h << 16); }

// a*b + c as a double rounded to odd (sticky last bit when inexact), for one final rounding to
// 16 bits. a*b is exact: the 16-bit significands give at most 22 bits.
inline double fma_to_odd(double a, double b, double c) {
  double p = a * b, s = p + c;
  double bv = s - p, err = (p - (s - bv)) + (c - bv);  // TwoSum: s + err == p + c exactly
  if (err == 0.0 || !__builtin_isfinite(s) || !__builtin_isfinite(err)) return s;
  uint64_t bits = to_bits(s);
  if ((err > 0) != (s > 0)) --bits;  // s is past the exact value: step back toward zero
  return from_bits<double>(bits | 1);
}

}  // namespace dlemu

// ---- the types ----------------------------------------------------------------------------
struct __half_raw {
  unsigned short x;
};
struct __half2_raw {
  unsigned short x, y;
};
struct __nv_bfloat16_raw {
  unsigned short x;
};
struct __nv_bfloat162_raw {
  unsigned short x, y;
};

// One 16-bit scalar type: implicit conversions from the arithmetic types (rounding to nearest
// even) and to float, as in CUDA's headers.
#define DLEMU_FP16_SCALAR(T, RAW, TO_BITS, FROM_BITS)                                        \
  struct alignas(2) T {                                                                      \
    unsigned short __x;                                                                      \
    T() = default;                                                                           \
    constexpr T(const RAW& r) : __x(r.x) {}                                                  \
    T(float f) : __x(::dlemu::TO_BITS(::dlemu::float_as_double(f))) {}                       \
    T(double d) : __x(::dlemu::TO_BITS(d)) {}                                                \
    T(short v) : T((double)v) {}                                                             \
    T(unsigned short v) : T((double)v) {}                                                    \
    T(int v) : T((double)v) {}                                                               \
    T(unsigned int v) : T((double)v) {}                                                      \
    T(long v) : T((double)v) {}                                                              \
    T(unsigned long v) : T((double)v) {}                                                     \
    T(long long v) : T((double)v) {}                                                         \
    T(unsigned long long v) : T((double)v) {}                                                \
    operator float() const { return ::dlemu::FROM_BITS(__x); }                               \
    operator RAW() const { return RAW{__x}; }                                                \
  };

DLEMU_FP16_SCALAR(__half, __half_raw, double_to_half_bits, half_bits_to_float)
DLEMU_FP16_SCALAR(__nv_bfloat16, __nv_bfloat16_raw, double_to_bf16_bits, bf16_bits_to_float)
#undef DLEMU_FP16_SCALAR

namespace dlemu {
template <typename T>
inline T raw16(unsigned short bits) {  // the 16-bit type T with these bits
  T v;
  v.__x = bits;
  return v;
}
}  // namespace dlemu

#define DLEMU_FP16_PAIR(T2, T, RAW2)                                                         \
  struct alignas(4) T2 {                                                                     \
    T x, y;                                                                                  \
    T2() = default;                                                                          \
    constexpr T2(const T& a, const T& b) : x(a), y(b) {}                                     \
    T2(const RAW2& r) : x(::dlemu::raw16<T>(r.x)), y(::dlemu::raw16<T>(r.y)) {}                \
    operator RAW2() const { return RAW2{x.__x, y.__x}; }                                     \
    DLEMU_VECTOR_COPY(T2)                                                                    \
  };                                                                                         \
  DLEMU_VECTOR_LDG(T2)

DLEMU_FP16_PAIR(__half2, __half, __half2_raw)
DLEMU_FP16_PAIR(__nv_bfloat162, __nv_bfloat16, __nv_bfloat162_raw)
#undef DLEMU_FP16_PAIR

namespace dlemu {

// Canonical NaN of the hardware (what __hmax / __hmin return for two NaNs).
template <typename T>
inline T canonical_nan() { return raw16<T>(0x7fff); }

template <typename T>
inline bool is_nan16(T a) { return __builtin_isnan((float)a); }

// CUDA's __hmax/__hmin: a NaN operand yields the other one; +0 is larger than -0.
template <typename T>
inline T max16(T a, T b) {
  if (is_nan16(a)) return is_nan16(b) ? canonical_nan<T>() : b;
  if (is_nan16(b)) return a;
  float fa = a, fb = b;
  if (fa == fb) return (a.__x & 0x8000) ? b : a;
  return fa > fb ? a : b;
}

template <typename T>
inline T min16(T a, T b) {
  if (is_nan16(a)) return is_nan16(b) ? canonical_nan<T>() : b;
  if (is_nan16(b)) return a;
  float fa = a, fb = b;
  if (fa == fb) return (a.__x & 0x8000) ? a : b;
  return fa < fb ? a : b;
}

template <typename T2>
inline T2 shfl_pair(int line, Op op, unsigned mask, const T2& v, int arg, int width) {
  uint32_t bits = (uint32_t)v.x.__x | ((uint32_t)v.y.__x << 16);
  uint32_t got = (uint32_t)collective(line, op, mask, bits, arg, width);
  using T = decltype(v.x);
  return T2(raw16<T>((unsigned short)got), raw16<T>((unsigned short)(got >> 16)));
}

// __shfl_*_sync of the pairs (the scalars are trivially copyable and use the generic shfl).
inline __half2 shfl(int line, Op op, unsigned mask, const __half2& v, int arg, int width = kWarp) {
  return shfl_pair(line, op, mask, v, arg, width);
}
inline __nv_bfloat162 shfl(int line, Op op, unsigned mask, const __nv_bfloat162& v, int arg,
                           int width = kWarp) {
  return shfl_pair(line, op, mask, v, arg, width);
}

}  // namespace dlemu

// ---- intrinsics and operators shared by __half and __nv_bfloat16 --------------------------
#define DLEMU_FP16_OPS(H, H2, ROUND)                                                         \
  inline H __hadd(H a, H b) { return H((float)a + (float)b); }                               \
  inline H __hsub(H a, H b) { return H((float)a - (float)b); }                               \
  inline H __hmul(H a, H b) { return H((float)a * (float)b); }                               \
  inline H __hdiv(H a, H b) { return H((float)a / (float)b); }                               \
  inline H __hfma(H a, H b, H c) {                                                           \
    H r;                                                                                     \
    r.__x = ::dlemu::ROUND(::dlemu::fma_to_odd((float)a, (float)b, (float)c));               \
    return r;                                                                                \
  }                                                                                          \
  inline H __hneg(H a) { return ::dlemu::raw16<H>(a.__x ^ 0x8000); }                         \
  inline H __habs(H a) { return ::dlemu::raw16<H>(a.__x & 0x7fff); }                         \
  inline H __hmax(H a, H b) { return ::dlemu::max16(a, b); }                                 \
  inline H __hmin(H a, H b) { return ::dlemu::min16(a, b); }                                 \
  inline bool __heq(H a, H b) { return (float)a == (float)b; }                               \
  inline bool __hne(H a, H b) { return (float)a < (float)b || (float)a > (float)b; }         \
  inline bool __hlt(H a, H b) { return (float)a < (float)b; }                                \
  inline bool __hle(H a, H b) { return (float)a <= (float)b; }                               \
  inline bool __hgt(H a, H b) { return (float)a > (float)b; }                                \
  inline bool __hge(H a, H b) { return (float)a >= (float)b; }                               \
  inline bool __hisnan(H a) { return ::dlemu::is_nan16(a); }                                 \
  inline int __hisinf(H a) { return __builtin_isinf((float)a) ? ((a.__x & 0x8000) ? -1 : 1) : 0; } \
  inline H2 __hadd2(H2 a, H2 b) { return H2(__hadd(a.x, b.x), __hadd(a.y, b.y)); }           \
  inline H2 __hsub2(H2 a, H2 b) { return H2(__hsub(a.x, b.x), __hsub(a.y, b.y)); }           \
  inline H2 __hmul2(H2 a, H2 b) { return H2(__hmul(a.x, b.x), __hmul(a.y, b.y)); }           \
  inline H2 __h2div(H2 a, H2 b) { return H2(__hdiv(a.x, b.x), __hdiv(a.y, b.y)); }           \
  inline H2 __hfma2(H2 a, H2 b, H2 c) {                                                      \
    return H2(__hfma(a.x, b.x, c.x), __hfma(a.y, b.y, c.y));                                 \
  }                                                                                          \
  inline H2 __hneg2(H2 a) { return H2(__hneg(a.x), __hneg(a.y)); }                           \
  inline H2 __habs2(H2 a) { return H2(__habs(a.x), __habs(a.y)); }                           \
  inline H2 __hmax2(H2 a, H2 b) { return H2(__hmax(a.x, b.x), __hmax(a.y, b.y)); }           \
  inline H2 __hmin2(H2 a, H2 b) { return H2(__hmin(a.x, b.x), __hmin(a.y, b.y)); }           \
  inline float __low2float(H2 a) { return (float)a.x; }                                      \
  inline float __high2float(H2 a) { return (float)a.y; }                                     \
  inline H operator+(const H& a, const H& b) { return __hadd(a, b); }                        \
  inline H operator-(const H& a, const H& b) { return __hsub(a, b); }                        \
  inline H operator*(const H& a, const H& b) { return __hmul(a, b); }                        \
  inline H operator/(const H& a, const H& b) { return __hdiv(a, b); }                        \
  inline H& operator+=(H& a, const H& b) { return a = __hadd(a, b); }                        \
  inline H& operator-=(H& a, const H& b) { return a = __hsub(a, b); }                        \
  inline H& operator*=(H& a, const H& b) { return a = __hmul(a, b); }                        \
  inline H& operator/=(H& a, const H& b) { return a = __hdiv(a, b); }                        \
  inline H operator+(const H& a) { return a; }                                               \
  inline H operator-(const H& a) { return __hneg(a); }                                       \
  inline H& operator++(H& a) { return a = __hadd(a, H(1.0f)); }                              \
  inline H& operator--(H& a) { return a = __hsub(a, H(1.0f)); }                              \
  inline H operator++(H& a, int) { H old = a; ++a; return old; }                             \
  inline H operator--(H& a, int) { H old = a; --a; return old; }                             \
  inline bool operator==(const H& a, const H& b) { return (float)a == (float)b; }            \
  inline bool operator!=(const H& a, const H& b) { return (float)a != (float)b; }            \
  inline bool operator<(const H& a, const H& b) { return (float)a < (float)b; }              \
  inline bool operator>(const H& a, const H& b) { return (float)a > (float)b; }              \
  inline bool operator<=(const H& a, const H& b) { return (float)a <= (float)b; }            \
  inline bool operator>=(const H& a, const H& b) { return (float)a >= (float)b; }            \
  inline H2 operator+(const H2& a, const H2& b) { return __hadd2(a, b); }                    \
  inline H2 operator-(const H2& a, const H2& b) { return __hsub2(a, b); }                    \
  inline H2 operator*(const H2& a, const H2& b) { return __hmul2(a, b); }                    \
  inline H2 operator/(const H2& a, const H2& b) { return __h2div(a, b); }                    \
  inline H2& operator+=(H2& a, const H2& b) { return a = __hadd2(a, b); }                    \
  inline H2& operator-=(H2& a, const H2& b) { return a = __hsub2(a, b); }                    \
  inline H2& operator*=(H2& a, const H2& b) { return a = __hmul2(a, b); }                    \
  inline H2& operator/=(H2& a, const H2& b) { return a = __h2div(a, b); }                    \
  inline H2 operator-(const H2& a) { return __hneg2(a); }                                    \
  inline H atomicAdd(H* p, H v) { H old = *p; *p = __hadd(old, v); return old; }            \
  inline H2 atomicAdd(H2* p, H2 v) { H2 old = *p; *p = __hadd2(old, v); return old; }

DLEMU_FP16_OPS(__half, __half2, double_to_half_bits)
DLEMU_FP16_OPS(__nv_bfloat16, __nv_bfloat162, double_to_bf16_bits)
#undef DLEMU_FP16_OPS

// ---- cuda_fp16.h conversions --------------------------------------------------------------
inline __half __float2half(float f) { return __half(f); }
inline __half __float2half_rn(float f) { return __half(f); }
inline __half __double2half(double d) { return __half(d); }
inline float __half2float(__half h) { return (float)h; }
inline __half2 __float2half2_rn(float f) { return __half2(__half(f), __half(f)); }
inline __half2 __floats2half2_rn(float lo, float hi) { return __half2(__half(lo), __half(hi)); }
inline __half2 __float22half2_rn(float2 f) { return __half2(__half(f.x), __half(f.y)); }
inline float2 __half22float2(__half2 h) { return float2((float)h.x, (float)h.y); }
inline __half2 __halves2half2(__half lo, __half hi) { return __half2(lo, hi); }
inline __half2 make_half2(__half x, __half y) { return __half2(x, y); }
inline __half2 __half2half2(__half h) { return __half2(h, h); }
inline __half __low2half(__half2 h) { return h.x; }
inline __half __high2half(__half2 h) { return h.y; }
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
inline short __half_as_short(__half h) { return (short)h.__x; }
inline __half __ushort_as_half(unsigned short v) { return ::dlemu::raw16<__half>(v); }
inline __half __short_as_half(short v) { return ::dlemu::raw16<__half>((unsigned short)v); }

// ---- cuda_bf16.h conversions --------------------------------------------------------------
inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __double2bfloat16(double d) { return __nv_bfloat16(d); }
inline float __bfloat162float(__nv_bfloat16 h) { return (float)h; }
inline __nv_bfloat162 __float2bfloat162_rn(float f) {
  return __nv_bfloat162(__nv_bfloat16(f), __nv_bfloat16(f));
}
inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) {
  return __nv_bfloat162(__nv_bfloat16(lo), __nv_bfloat16(hi));
}
inline __nv_bfloat162 __float22bfloat162_rn(float2 f) {
  return __nv_bfloat162(__nv_bfloat16(f.x), __nv_bfloat16(f.y));
}
inline float2 __bfloat1622float2(__nv_bfloat162 h) { return float2((float)h.x, (float)h.y); }
inline __nv_bfloat162 __halves2bfloat162(__nv_bfloat16 lo, __nv_bfloat16 hi) {
  return __nv_bfloat162(lo, hi);
}
inline __nv_bfloat162 __bfloat162bfloat162(__nv_bfloat16 h) { return __nv_bfloat162(h, h); }
inline __nv_bfloat162 make_bfloat162(__nv_bfloat16 x, __nv_bfloat16 y) {
  return __nv_bfloat162(x, y);
}
inline __nv_bfloat16 __low2bfloat16(__nv_bfloat162 h) { return h.x; }
inline __nv_bfloat16 __high2bfloat16(__nv_bfloat162 h) { return h.y; }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.__x; }
inline short __bfloat16_as_short(__nv_bfloat16 h) { return (short)h.__x; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short v) {
  return ::dlemu::raw16<__nv_bfloat16>(v);
}
inline __nv_bfloat16 __short_as_bfloat16(short v) {
  return ::dlemu::raw16<__nv_bfloat16>((unsigned short)v);
}
