// philox.cu -- graph-safe random numbers: uniform and normal draws from Philox4x64-10.
//
// Philox (Salmon, Moraes, Dror and Shaw, "Parallel random numbers: as easy as 1, 2, 3", SC'11)
// is counter-based: block b of the stream is a pure function of (counter b, key), so a draw
// needs no generator state beyond where it starts. That is what a CUDA graph needs: the start
// is read from device memory (base[0] + offset), so a captured draw gives new numbers on every
// replay once the graph's last node advances base[0] by the counters the graph consumed
// (philox_advance). Host scalars would be frozen at capture. The rounds, multipliers and Weyl
// key increments are those of Random123's philox4x64 with 10 rounds, which is also NumPy's
// numpy.random.Philox bit generator: the NumPy twin (dlcore.random.philox4x64) is tested
// against it, and these kernels against the twin.
//
// Counter of block b: (base[0] + offset + b, 0, 0, 0); key (key0, key1). Each block gives four
// 64-bit words, so element i of a draw comes from word i % 4 of block i / 4.
// Uniform on [low, low + span): word >> 11 times 2^-53 (53 random bits), in double, then
// rounded once to the element type. Normal (mean, std): Box-Muller on the word pairs (0, 1) and
// (2, 3): u1 = ((w0 >> 11) + 1) 2^-53 in (0, 1], u2 = (w1 >> 11) 2^-53, r = sqrt(-2 log u1),
// z0 = r cos(2 pi u2), z1 = r sin(2 pi u2) (sincospi: exact argument reduction), in double,
// rounded once.
//
// Launch shape: 1-D, one thread per block of four elements, a grid-stride loop over blocks.
// Memory: writes n elements, reads base once per block (cached). Element types float, double
// and __half (storage only, as half.cuh). No shared memory, no synchronisation.
#include "half.cuh"

namespace {

__device__ __forceinline__ void philox4x64_10(unsigned long long c[4], unsigned long long k0,
                                              unsigned long long k1) {
  const unsigned long long m0 = 0xD2E7470EE14C6C93ull, m1 = 0xCA5A826395121157ull;
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += 0x9E3779B97F4A7C15ull;  // golden ratio
      k1 += 0xBB67AE8584CAA73Bull;  // sqrt(3) - 1
    }
    const unsigned long long hi0 = __umul64hi(m0, c[0]), lo0 = m0 * c[0];
    const unsigned long long hi1 = __umul64hi(m1, c[2]), lo1 = m1 * c[2];
    const unsigned long long c1 = c[1], c3 = c[3];
    c[0] = hi1 ^ c1 ^ k0;
    c[1] = lo1;
    c[2] = hi0 ^ c3 ^ k1;
    c[3] = lo0;
  }
}

__device__ __forceinline__ double unit53(unsigned long long w) {
  return (double)(w >> 11) * 1.1102230246251565e-16;  // 2^-53
}

}  // namespace

// dlcore: instantiate philox_uniform<float>
// dlcore: instantiate philox_uniform<double>
// dlcore: instantiate philox_uniform<__half>
template <typename T>
__global__ void philox_uniform(T* __restrict__ out, long long n, unsigned long long key0,
                               unsigned long long key1, const unsigned long long* __restrict__ base,
                               unsigned long long offset, double low, double span) {
  typedef typename dl::Acc<T>::type A;
  const long long blocks = (n + 3) / 4;
  const unsigned long long start = base[0] + offset;
  for (long long b = blockIdx.x * (long long)blockDim.x + threadIdx.x; b < blocks;
       b += (long long)gridDim.x * blockDim.x) {
    unsigned long long c[4] = {start + (unsigned long long)b, 0ull, 0ull, 0ull};
    philox4x64_10(c, key0, key1);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const long long i = 4 * b + j;
      if (i < n) out[i] = dl::narrow<T>((A)(low + span * unit53(c[j])));
    }
  }
}

// dlcore: instantiate philox_normal<float>
// dlcore: instantiate philox_normal<double>
// dlcore: instantiate philox_normal<__half>
template <typename T>
__global__ void philox_normal(T* __restrict__ out, long long n, unsigned long long key0,
                              unsigned long long key1, const unsigned long long* __restrict__ base,
                              unsigned long long offset, double mean, double std) {
  typedef typename dl::Acc<T>::type A;
  const long long blocks = (n + 3) / 4;
  const unsigned long long start = base[0] + offset;
  for (long long b = blockIdx.x * (long long)blockDim.x + threadIdx.x; b < blocks;
       b += (long long)gridDim.x * blockDim.x) {
    unsigned long long c[4] = {start + (unsigned long long)b, 0ull, 0ull, 0ull};
    philox4x64_10(c, key0, key1);
#pragma unroll
    for (int pair = 0; pair < 2; ++pair) {
      const double u1 = unit53(c[2 * pair]) + 1.1102230246251565e-16;  // (0, 1]
      const double u2 = unit53(c[2 * pair + 1]);
      const double r = sqrt(-2.0 * log(u1));
      double s, c;
      sincospi(2.0 * u2, &s, &c);  // no large-argument reduction path (sin/cos would spill)
      const long long i = 4 * b + 2 * pair;
      if (i < n) out[i] = dl::narrow<T>((A)(mean + std * (r * c)));
      if (i + 1 < n) out[i + 1] = dl::narrow<T>((A)(mean + std * (r * s)));
    }
  }
}

// The last node of a graph that draws: the next replay starts where this one stopped.
extern "C" __global__ void philox_advance(unsigned long long* base, unsigned long long count) {
  if (blockIdx.x == 0 && threadIdx.x == 0) base[0] += count;
}
