// Fiber stacks and the context switch (see fiber.h).
#include "host/emu/fiber.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "host/emu/internal.h"  // L2V_EMU_ASAN
#if defined(L2V_EMU_ASAN)
#include <sanitizer/common_interface_defs.h>
#endif

#if !defined(__x86_64__)
#error "host/emu/fiber.cpp: the fiber switch is written for x86-64 (System V ABI); port l2v_emu_switch"
#endif

extern "C" {
// Pushes the callee-saved registers and the FP control words, stores the stack pointer into *save_sp,
// loads new_sp and pops the same frame from it. A new fiber's stack holds a frame whose return
// address is l2v_emu_trampoline, which calls l2v_emu_fiber_start(r12 = the Fiber).
void l2v_emu_switch(void** save_sp, void* new_sp);
void l2v_emu_trampoline();
[[noreturn]] void l2v_emu_fiber_start(l2v::emu::Fiber* f);
}

asm(R"(
  .text
  .globl l2v_emu_switch
  .type l2v_emu_switch, @function
  .p2align 4
l2v_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size l2v_emu_switch, .-l2v_emu_switch

  .globl l2v_emu_trampoline
  .type l2v_emu_trampoline, @function
  .p2align 4
l2v_emu_trampoline:
  .cfi_startproc
  .cfi_undefined rip
  movq %r12, %rdi
  call l2v_emu_fiber_start@PLT
  ud2
  .cfi_endproc
  .size l2v_emu_trampoline, .-l2v_emu_trampoline
)");

namespace l2v::emu {
namespace {

size_t page_size() {
  static const size_t size = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return size;
}

// Free stacks of this OS thread; unmapped when the thread ends.
struct StackPool {
  std::vector<char*> free;
  ~StackPool() {
    for (char* s : free) munmap(s - page_size(), kFiberStackSize + page_size());
  }
};
thread_local StackPool t_pool;

}  // namespace

char* acquire_stack() {
  if (!t_pool.free.empty()) {
    char* s = t_pool.free.back();
    t_pool.free.pop_back();
    return s;
  }
  const size_t guard = page_size();
  void* m = mmap(nullptr, kFiberStackSize + guard, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
  if (m == MAP_FAILED) {
    std::fprintf(stderr, "llm2vec.cu emulator: mmap of a %zu KiB fiber stack failed: %s\n",
                 kFiberStackSize / 1024, std::strerror(errno));
    std::abort();
  }
  if (mprotect(m, guard, PROT_NONE) != 0) {
    std::fprintf(stderr, "llm2vec.cu emulator: mprotect of a fiber stack guard page failed: %s\n",
                 std::strerror(errno));
    std::abort();
  }
  return static_cast<char*>(m) + guard;
}

void release_stack(char* stack, bool dirty) {
#if defined(L2V_EMU_ASAN)
  // Frames abandoned by an unwinding fiber may leave redzone poison behind; a fiber that returned
  // normally popped (and so unpoisoned) every frame it pushed.
  if (dirty) ASAN_UNPOISON_MEMORY_REGION(stack, kFiberStackSize);
#else
  (void)dirty;
#endif
  t_pool.free.push_back(stack);
}

// Writes the initial switch frame; not instrumented because the top of a recycled stack may still
// carry the redzone shadow of the previous fiber's first frames, which are rebuilt on entry.
__attribute__((no_sanitize_address)) void fiber_prepare(Fiber& f, Fiber& host, char* stack,
                                                         void (*entry)(void*), void* arg) {
  f.stack = stack;
  f.stack_size = kFiberStackSize;
  f.entry = entry;
  f.arg = arg;
  f.host = &host;
  f.asan_fake_stack = nullptr;
  // s points 16 bytes below the top, 16-byte aligned: after the switch frame is popped and `ret`
  // jumps to the trampoline, rsp == s, so its `call` enters l2v_emu_fiber_start with the ABI's
  // alignment. The two words at s are zero: the end of the frame-pointer chain for backtraces.
  auto top = reinterpret_cast<uintptr_t>(stack + kFiberStackSize) & ~uintptr_t{15};
  void** s = reinterpret_cast<void**>(top - 16);
  s[0] = nullptr;
  s[1] = nullptr;
  s[-1] = reinterpret_cast<void*>(&l2v_emu_trampoline);  // return address of the switch
  s[-2] = nullptr;                                        // rbp
  s[-3] = nullptr;                                        // rbx
  s[-4] = &f;                                             // r12: the trampoline's argument
  s[-5] = nullptr;                                        // r13
  s[-6] = nullptr;                                        // r14
  s[-7] = nullptr;                                        // r15
  // MXCSR and the x87 control word of the creating thread (rounding mode, masked exceptions).
  auto* control = reinterpret_cast<uint32_t*>(&s[-8]);
  control[0] = __builtin_ia32_stmxcsr();
  uint16_t x87 = 0;
  asm volatile("fnstcw %0" : "=m"(x87));
  control[1] = x87;
  f.sp = &s[-8];
}

void fiber_switch(Fiber& from, Fiber& to) {
#if defined(L2V_EMU_ASAN)
  __sanitizer_start_switch_fiber(&from.asan_fake_stack, to.stack, to.stack_size);
#endif
  l2v_emu_switch(&from.sp, to.sp);
#if defined(L2V_EMU_ASAN)
  const void* bottom = nullptr;
  size_t size = 0;
  __sanitizer_finish_switch_fiber(from.asan_fake_stack, &bottom, &size);
  // A fiber is only ever resumed by its host, so what we came from is the host's stack.
  if (from.host != nullptr) {
    from.host->stack = static_cast<char*>(const_cast<void*>(bottom));
    from.host->stack_size = size;
  }
#endif
}

void fiber_finish(Fiber& self, Fiber& to) {
#if defined(L2V_EMU_ASAN)
  // nullptr: this context ends, so ASan frees its use-after-return frames.
  __sanitizer_start_switch_fiber(nullptr, to.stack, to.stack_size);
#endif
  l2v_emu_switch(&self.sp, to.sp);
  __builtin_unreachable();
}

}  // namespace l2v::emu

extern "C" void l2v_emu_fiber_start(l2v::emu::Fiber* f) {
#if defined(L2V_EMU_ASAN)
  const void* bottom = nullptr;
  size_t size = 0;
  __sanitizer_finish_switch_fiber(nullptr, &bottom, &size);
  f->host->stack = static_cast<char*>(const_cast<void*>(bottom));
  f->host->stack_size = size;
#endif
  f->entry(f->arg);
  std::fputs("llm2vec.cu emulator: a fiber's entry function returned instead of calling fiber_finish\n",
             stderr);
  std::abort();
}
