// Fibers: the user-space threads that run the threads of one emulated thread block on one OS thread.
// A fiber has its own mmap'ed stack with a PROT_NONE guard page below it, so a stack overflow faults
// at once instead of silently overwriting a neighbouring stack. Switching is cooperative: a fiber runs
// until it calls fiber_switch (at a barrier or warp collective) or finishes. The switch is a few lines
// of x86-64 assembly (callee-saved registers, MXCSR and the x87 control word) rather than swapcontext,
// which makes a signal-mask system call on every switch -- and a block of 1024 threads switches 1024
// times per __syncthreads().
//
// Under AddressSanitizer every switch is announced with __sanitizer_start_switch_fiber /
// __sanitizer_finish_switch_fiber, so ASan knows which stack is live (otherwise it reports false
// stack-buffer-overflows, or misses real ones, as soon as the stack pointer leaves the thread's stack).
#pragma once
#include <cstddef>

namespace l2v::emu {

// Usable bytes of every fiber stack. Generous because ASan's redzones and local arrays of kernels
// (register tiles, WMMA fragments) live there; only the pages a fiber touches are ever committed.
constexpr size_t kFiberStackSize = 256 * 1024;

struct Fiber {
  void* sp = nullptr;             // saved stack pointer while the fiber is suspended
  char* stack = nullptr;          // lowest usable byte of its stack; nullptr for an OS thread's own stack
  size_t stack_size = 0;
  void (*entry)(void*) = nullptr; // run on the fiber's stack at the first switch to it; must not return
  void* arg = nullptr;
  Fiber* host = nullptr;          // the context this fiber switches back to (learns its stack for ASan)
  void* asan_fake_stack = nullptr;  // ASan's use-after-return frames of this context while suspended
};

// A guarded stack of kFiberStackSize usable bytes, recycled per OS thread (a launch creates one fiber
// per emulated thread: mmap/munmap for each would dominate small kernels).
char* acquire_stack();
// `dirty`: the fiber did not return normally, so ASan may still mark parts of the stack as poisoned.
void release_stack(char* stack, bool dirty);

// Makes `f` start `entry(arg)` on `stack` when first switched to; it switches back to `host`.
void fiber_prepare(Fiber& f, Fiber& host, char* stack, void (*entry)(void*), void* arg);
// Suspends the running context into `from` and resumes `to`; returns when something switches back.
void fiber_switch(Fiber& from, Fiber& to);
// The last switch of a fiber whose entry function is done: `self` is never resumed again.
[[noreturn]] void fiber_finish(Fiber& self, Fiber& to);

}  // namespace l2v::emu
