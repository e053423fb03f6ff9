//! Primitive encodings shared by every structure of the format (see FORMAT.md, "Primitives").
//!
//! - `uvarint`: unsigned LEB128, at most 10 bytes.
//! - `svarint`: zigzag then `uvarint`.
//! - `bytes`: `uvarint` length then the bytes.
//! - `opt_bytes`: `uvarint` of (length + 1), 0 meaning null, then the bytes.
//! - `string`: `bytes` holding UTF-8.

use crate::FormatError;

pub(crate) fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(crate) fn put_svarint(out: &mut Vec<u8>, v: i64) {
    put_uvarint(out, ((v << 1) ^ (v >> 63)) as u64);
}

pub(crate) fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_uvarint(out, b.len() as u64);
    out.extend_from_slice(b);
}

pub(crate) fn put_opt_bytes(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        None => put_uvarint(out, 0),
        Some(b) => {
            put_uvarint(out, b.len() as u64 + 1);
            out.extend_from_slice(b);
        }
    }
}

pub(crate) fn put_str(out: &mut Vec<u8>, s: &str) {
    put_bytes(out, s.as_bytes());
}

/// A cursor over untrusted bytes. Every method fails with a typed error instead of panicking.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, pos: 0, what }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        if self.remaining() < n {
            return Err(FormatError::Truncated {
                what: self.what,
                needed: n - self.remaining(),
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, FormatError> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u32_le(&mut self) -> Result<u32, FormatError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn array32(&mut self) -> Result<[u8; 32], FormatError> {
        let mut a = [0u8; 32];
        a.copy_from_slice(self.take(32)?);
        Ok(a)
    }

    pub(crate) fn uvarint(&mut self) -> Result<u64, FormatError> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = self.u8()?;
            if i == 9 && b > 1 {
                return Err(FormatError::invalid(self.what, "varint overflows 64 bits"));
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(FormatError::invalid(
            self.what,
            "varint longer than 10 bytes",
        ))
    }

    pub(crate) fn svarint(&mut self) -> Result<i64, FormatError> {
        let u = self.uvarint()?;
        Ok(((u >> 1) as i64) ^ -((u & 1) as i64))
    }

    /// A `uvarint` that must fit in `usize` and be at most the bytes left (a length or count of
    /// items at least one byte long each): protects against huge allocations from bad input.
    pub(crate) fn len(&mut self) -> Result<usize, FormatError> {
        let v = self.uvarint()?;
        if v > self.remaining() as u64 {
            return Err(FormatError::invalid(
                self.what,
                format!("length {v} exceeds the {} bytes left", self.remaining()),
            ));
        }
        Ok(v as usize)
    }

    pub(crate) fn bytes(&mut self) -> Result<&'a [u8], FormatError> {
        let n = self.len()?;
        self.take(n)
    }

    pub(crate) fn opt_bytes(&mut self) -> Result<Option<&'a [u8]>, FormatError> {
        let v = self.uvarint()?;
        if v == 0 {
            return Ok(None);
        }
        let n = v - 1;
        if n > self.remaining() as u64 {
            return Err(FormatError::Truncated {
                what: self.what,
                needed: (n - self.remaining() as u64) as usize,
            });
        }
        self.take(n as usize).map(Some)
    }

    pub(crate) fn string(&mut self) -> Result<String, FormatError> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec())
            .map_err(|_| FormatError::invalid(self.what, "string is not UTF-8"))
    }

    pub(crate) fn i32_varint(&mut self) -> Result<i32, FormatError> {
        let v = self.svarint()?;
        i32::try_from(v).map_err(|_| FormatError::invalid(self.what, "value out of i32 range"))
    }

    pub(crate) fn offset(&mut self) -> Result<i64, FormatError> {
        let v = self.uvarint()?;
        i64::try_from(v).map_err(|_| FormatError::invalid(self.what, "offset out of range"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn varints_round_trip(u in any::<u64>(), s in any::<i64>()) {
            let mut out = Vec::new();
            put_uvarint(&mut out, u);
            put_svarint(&mut out, s);
            let mut r = Reader::new(&out, "test");
            prop_assert_eq!(r.uvarint().unwrap(), u);
            prop_assert_eq!(r.svarint().unwrap(), s);
            prop_assert!(r.is_empty());
        }
    }

    #[test]
    fn overlong_varint_is_an_error() {
        let bytes = [0xffu8; 11];
        assert!(Reader::new(&bytes, "t").uvarint().is_err());
        let bytes = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert!(Reader::new(&bytes, "t").uvarint().is_err());
    }
}
