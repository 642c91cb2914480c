// The dlcore emulator's stand-in for CUDA's <cuda_pipeline.h> (the emulator's folder comes first
// on g++'s include path): the asynchronous-copy primitives, run by dlcore_emu_pipeline.h (see
// there for the model). The C++ API of the real header (nvcuda::experimental::pipeline,
// memcpy_async) and __pipeline_arrive_on are not emulated.
#pragma once

#include "cuda_pipeline_primitives.h"
