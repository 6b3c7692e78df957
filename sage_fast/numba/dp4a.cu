// Rung 6's one line of CUDA C: dp4a (4 signed int8 products summed into an int32, one instruction on sm61+),
// which Numba has no intrinsic for. Declared in Python with cuda.declare_device(..., abi="c"); numba-cuda
// compiles this file with NVRTC and links it into the kernel (inlined when nvJitLink does link-time optimization).
extern "C" __device__ int dp4a_s32(int a, int b, int c) { return __dp4a(a, b, c); }
