//! Recycled I/O buffers of about 1 MiB, and a page of zeros that is never allocated.
//!
//! A READ of a staged file and every RPC record (a 1 MiB WRITE) each need a buffer of
//! up to 1 MiB for the length of one call. A fresh allocation of that size is an `mmap`
//! the kernel faults in page by page and unmaps again on free: reading a staged file at
//! full speed spent a quarter of the daemon's CPU in page faults. A buffer let go here
//! goes back to a small free list instead and the next call reuses its pages.
//!
//! A recycled buffer holds the bytes of whatever used it last: [`IoBuf::with_len`]
//! hands it out with its length set and its contents unspecified, so a caller fills
//! every byte before the buffer leaves its hands (a failed fill drops the buffer).

use std::sync::Mutex;

/// Size of a recycled buffer: a 1 MiB READ or WRITE with room for its RPC header.
pub const CLASS: usize = (1 << 20) + (64 << 10);
/// Buffers kept for reuse (so at most ~34 MiB held while idle).
const KEPT: usize = 32;
/// Below this a plain allocation is as cheap (the allocator's heap serves it).
const SMALL: usize = 128 << 10;

static FREE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// A byte buffer whose storage returns to a free list when dropped.
pub struct IoBuf {
    /// Always initialized to its full length; `len` bytes of it are in use.
    v: Vec<u8>,
    len: usize,
}

impl IoBuf {
    /// A buffer of `len` bytes whose contents are unspecified (zeros when new, the
    /// last user's bytes when recycled): the caller overwrites all of them.
    pub fn with_len(len: usize) -> IoBuf {
        if !(SMALL..=CLASS).contains(&len) {
            return IoBuf {
                v: vec![0; len],
                len,
            };
        }
        let v = FREE.lock().unwrap().pop().unwrap_or_else(|| vec![0; CLASS]);
        IoBuf { v, len }
    }

    /// An empty buffer (grows with [`IoBuf::resize`]).
    pub fn new() -> IoBuf {
        IoBuf {
            v: Vec::new(),
            len: 0,
        }
    }

    /// Sets the length to `len`. Bytes past the old length are unspecified, as in
    /// [`IoBuf::with_len`]; the contents up to the old length are kept.
    pub fn resize(&mut self, len: usize) {
        if len <= self.v.len() {
            self.len = len;
            return;
        }
        let mut next = IoBuf::with_len(len);
        next[..self.len].copy_from_slice(&self[..]);
        *self = next;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl From<Vec<u8>> for IoBuf {
    /// Takes the vector's bytes as they are (recycled when dropped only if it has the
    /// class size).
    fn from(v: Vec<u8>) -> IoBuf {
        IoBuf { len: v.len(), v }
    }
}

impl Default for IoBuf {
    fn default() -> Self {
        IoBuf::new()
    }
}

impl std::ops::Deref for IoBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.v[..self.len]
    }
}

impl std::ops::DerefMut for IoBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.v[..self.len]
    }
}

impl AsRef<[u8]> for IoBuf {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl std::fmt::Debug for IoBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IoBuf({} bytes)", self.len)
    }
}

impl Drop for IoBuf {
    fn drop(&mut self) {
        if self.v.len() == CLASS {
            let mut free = FREE.lock().unwrap();
            if free.len() < KEPT {
                free.push(std::mem::take(&mut self.v));
            }
        }
    }
}

/// A MiB of zeros for READs of holes and unwritten files, shared by every reply.
pub static ZEROS: [u8; 1 << 20] = [0; 1 << 20];

#[cfg(test)]
mod tests {
    use super::*;

    /// A buffer let go is reused (same pages), and lengths outside the class are plain
    /// allocations that never enter the free list.
    #[test]
    fn buffers_are_recycled_and_sized() {
        let a = IoBuf::with_len(1 << 20);
        let p = a.v.as_ptr();
        assert_eq!(a.len(), 1 << 20);
        drop(a);
        // Other tests may take it meanwhile; look for it among a few.
        let held: Vec<IoBuf> = (0..KEPT).map(|_| IoBuf::with_len(SMALL)).collect();
        assert!(held.iter().any(|b| b.v.as_ptr() == p), "pages reused");
        let small = IoBuf::with_len(100);
        assert_eq!((small.len(), small.v.len()), (100, 100));
        let big = IoBuf::with_len(CLASS + 1);
        assert_eq!(big.len(), CLASS + 1);
        drop(big);
        assert!(FREE.lock().unwrap().iter().all(|v| v.len() == CLASS));
    }

    /// `resize` keeps what was there and moves to a pooled buffer when it grows.
    #[test]
    fn resize_keeps_the_contents() {
        let mut b = IoBuf::new();
        assert!(b.is_empty());
        b.resize(3);
        b.copy_from_slice(b"abc");
        b.resize(SMALL + 10);
        assert_eq!(&b[..3], b"abc");
        assert_eq!(b.len(), SMALL + 10);
        b.resize(2);
        assert_eq!(&b[..], b"ab");
    }
}
