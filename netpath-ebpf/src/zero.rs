//! Owns building zero-initialised values on the BPF stack.
//!
//! bpf-linker asks LLVM to expand `memcpy` in order and leaves `memset` as a call to a
//! byte-loop subprogram; a zeroed struct (`mem::zeroed`, `[0; N]`, 16+ bytes of zero fields)
//! would become such a call, which costs verifier instructions on every path through it. Here
//! the zero comes from a volatile read, so LLVM does not know the stored words are zero and
//! cannot turn them (or later copies of them) into a `memset`.
use core::mem::{MaybeUninit, size_of};

/// A `T` aligned to 8 bytes, so it can be zeroed and compared word by word.
#[repr(C, align(8))]
pub struct Aligned<T>(pub T);

/// A zeroed `T`. `T` must be valid when all-zero (plain-old-data: map keys and values, helper
/// argument structs).
#[inline(always)]
pub fn zeroed<T>() -> Aligned<T> {
    let mut value = MaybeUninit::<Aligned<T>>::uninit();
    let words = value.as_mut_ptr() as *mut u64;
    let count = size_of::<Aligned<T>>() / 8;
    let zero_source = 0u64;
    // SAFETY: reading a live local.
    let zero = unsafe { core::ptr::read_volatile(&zero_source) };
    let mut i = 0;
    while i < count {
        // SAFETY: `i < count` keeps the store inside `value`, which is 8-byte aligned and a
        // multiple of 8 bytes long.
        unsafe { words.add(i).write(zero) };
        i += 1;
    }
    // SAFETY: every byte was written, and all-zero is a valid `T` (caller's contract).
    unsafe { value.assume_init() }
}

/// Zeroes `*target` in place (e.g. per-CPU scratch memory), word by word where possible, with
/// the same volatile zero as [`zeroed`] so no `memset` call appears.
#[inline(always)]
pub fn zero_in_place<T>(target: &mut T) {
    let zero_source = 0u64;
    // SAFETY: reading a live local.
    let zero = unsafe { core::ptr::read_volatile(&zero_source) };
    let size = size_of::<T>();
    let base = core::ptr::from_mut(target) as *mut u8;
    let mut i = 0;
    while i + 8 <= size {
        // SAFETY: inside `target`; unaligned writes are fine for BPF map memory and stack.
        unsafe { (base.add(i) as *mut u64).write_unaligned(zero) };
        i += 8;
    }
    while i < size {
        // SAFETY: inside `target`.
        unsafe { base.add(i).write(zero as u8) };
        i += 1;
    }
}
