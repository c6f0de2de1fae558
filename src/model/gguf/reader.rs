//! `Cursor`: a bounds-checked little-endian reader over the file bytes.
//!
//! Invariants: `pos <= bytes.len()` at all times; every read checks the bytes remaining
//! before touching them and never allocates. A failed read returns a small `ReadError`
//! that the caller turns into a `GgufError` naming the field (`.named(|| ...)`), so the
//! field name is only formatted on the error path.

use super::error::GgufError;

/// Why a primitive read failed, before the caller names the field.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// `needed` bytes were wanted at `offset`, but only `remaining` were left.
    Short {
        offset: usize,
        needed: u64,
        remaining: usize,
    },
    /// A string at `offset` is not valid UTF-8.
    Utf8 { offset: usize },
}

impl ReadError {
    pub(crate) fn into_gguf(self, field: String) -> GgufError {
        match self {
            ReadError::Short {
                offset,
                needed,
                remaining,
            } => GgufError::Truncated {
                field,
                offset: offset as u64,
                needed,
                remaining: remaining as u64,
            },
            ReadError::Utf8 { offset } => GgufError::InvalidUtf8 {
                field,
                offset: offset as u64,
            },
        }
    }
}

/// Names the field of a failed read lazily: `cursor.u32().named(|| "tensor_count".into())?`.
pub(crate) trait Named<T> {
    fn named(self, field: impl FnOnce() -> String) -> Result<T, GgufError>;
}

impl<T> Named<T> for Result<T, ReadError> {
    fn named(self, field: impl FnOnce() -> String) -> Result<T, GgufError> {
        self.map_err(|err| err.into_gguf(field()))
    }
}

#[derive(Clone)]
pub(crate) struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

macro_rules! read_le {
    ($($name:ident: $ty:ty),* $(,)?) => {$(
        pub(crate) fn $name(&mut self) -> Result<$ty, ReadError> {
            let raw = self.array::<{ std::mem::size_of::<$ty>() }>()?;
            Ok(<$ty>::from_le_bytes(raw))
        }
    )*};
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Cursor { bytes, pos: 0 }
    }

    /// Byte offset of the next read from the start of the file.
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    /// The next `n` bytes, checked against what is left (`n` may come straight from the file).
    pub(crate) fn take(&mut self, n: u64) -> Result<&'a [u8], ReadError> {
        let remaining = self.remaining();
        match usize::try_from(n) {
            Ok(len) if len <= remaining => {
                let start = self.pos;
                self.pos += len;
                Ok(&self.bytes[start..start + len])
            }
            _ => Err(ReadError::Short {
                offset: self.pos,
                needed: n,
                remaining,
            }),
        }
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ReadError> {
        let slice = self.take(N as u64)?;
        let mut out = [0u8; N];
        out.copy_from_slice(slice);
        Ok(out)
    }

    read_le!(u8: u8, i8: i8, u16: u16, i16: i16, u32: u32, i32: i32, u64: u64, i64: i64, f32: f32, f64: f64);

    /// A GGUF string: u64 byte length, then that many UTF-8 bytes. The length is checked
    /// against the remaining bytes before anything is read; nothing is allocated.
    pub(crate) fn str(&mut self) -> Result<&'a str, ReadError> {
        let len = self.u64()?;
        let start = self.pos;
        let raw = self.take(len)?;
        std::str::from_utf8(raw).map_err(|_| ReadError::Utf8 { offset: start })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_little_endian_and_stops_at_the_end() {
        let bytes = [1u8, 0, 0, 0, 0xff];
        let mut cursor = Cursor::new(&bytes);
        assert_eq!(cursor.u32().ok(), Some(1));
        assert_eq!(cursor.remaining(), 1);
        assert!(matches!(
            cursor.u16(),
            Err(ReadError::Short {
                offset: 4,
                needed: 2,
                remaining: 1
            })
        ));
        // A failed read consumes nothing.
        assert_eq!(cursor.u8().ok(), Some(0xff));
    }

    #[test]
    fn string_length_is_checked_before_reading() {
        let mut bytes = u64::MAX.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"abc");
        let err = Cursor::new(&bytes).str().unwrap_err();
        assert!(matches!(
            err,
            ReadError::Short {
                needed: u64::MAX,
                remaining: 3,
                ..
            }
        ));

        let mut bytes = 2u64.to_le_bytes().to_vec();
        bytes.extend_from_slice(&[0xc3, 0x28]);
        assert!(matches!(
            Cursor::new(&bytes).str(),
            Err(ReadError::Utf8 { offset: 8 })
        ));
    }
}
