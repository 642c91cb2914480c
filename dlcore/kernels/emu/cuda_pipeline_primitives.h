// The dlcore emulator's stand-in for CUDA's <cuda_pipeline_primitives.h>, which
// <cuda_pipeline.h> includes: __pipeline_memcpy_async, __pipeline_commit, __pipeline_wait_prior,
// with CUDA's signatures (the trailing line argument is the emulator's, for its messages).
#pragma once

inline void __pipeline_memcpy_async(void* __restrict__ dst_shared,
                                    const void* __restrict__ src_global, size_t size_and_align,
                                    size_t zfill = 0, int line = __builtin_LINE()) {
  ::dlemu::pipeline_memcpy_async(dst_shared, src_global, size_and_align, zfill, line);
}

inline void __pipeline_commit() { ::dlemu::pipeline_commit(); }

inline void __pipeline_wait_prior(size_t prior) { ::dlemu::pipeline_wait_prior(prior); }
