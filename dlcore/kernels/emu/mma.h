// Emulator stand-in for CUDA's <mma.h> (build.py puts this folder on g++'s include path):
// nvcuda::wmma is in dlcore_emu_wmma.h, which dlcore_emu.h always includes. The real mma.h
// includes the 16-bit float headers, so this one does too.
#pragma once

#include <cuda_fp16.h>
#include <cuda_bf16.h>
