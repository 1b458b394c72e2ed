//! One allocation holding two byte strings back to back.
//!
//! The only `unsafe` in the crate. `Arc<[u8]>` built safely from two slices
//! either copies twice (through a `Vec`) or byte by byte (from an iterator):
//! 38 ns and 134 ns for a 16-byte key and 100-byte value, against 28 ns
//! here, on the put path of the memory backend.
#![allow(unsafe_code)]

use std::sync::Arc;

/// `a` followed by `b` in one shared, immutable block.
pub(crate) fn concat_arc(a: &[u8], b: &[u8]) -> Arc<[u8]> {
    let mut block = Arc::<[u8]>::new_uninit_slice(a.len() + b.len());
    let dst = Arc::get_mut(&mut block).expect("a new Arc has no other owner");
    let (head, tail) = dst.split_at_mut(a.len());
    head.write_copy_of_slice(a);
    tail.write_copy_of_slice(b);
    // SAFETY: `head` and `tail` together cover the whole slice, and both were
    // fully written just above, so every element is initialised.
    unsafe { block.assume_init() }
}

#[cfg(test)]
mod tests {
    #[test]
    fn concatenates() {
        assert_eq!(&*super::concat_arc(b"key", b"value"), b"keyvalue");
        assert_eq!(&*super::concat_arc(b"", b""), b"");
        assert_eq!(&*super::concat_arc(b"", b"v"), b"v");
    }
}
