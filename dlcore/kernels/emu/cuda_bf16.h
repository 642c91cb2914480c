// Emulator stand-in for CUDA's <cuda_bf16.h> (build.py puts this folder on g++'s include path):
// the types and intrinsics are in dlcore_emu_fp16.h, which dlcore_emu.h always includes; this
// adds the short names the real header defines.
#pragma once

typedef __nv_bfloat16 nv_bfloat16;
typedef __nv_bfloat162 nv_bfloat162;
