//! A bounds-checked reader over untrusted bytes, with the SCALE primitives dstack uses.
//!
//! Every length is checked against the bytes that remain before anything is allocated,
//! so a hostile length prefix can never cause a large allocation.

use super::EvidenceError;

/// Cursor over a byte slice; every read is bounds-checked.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(what: &'static str, buf: &'a [u8]) -> Self {
        Self { buf, pos: 0, what }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], EvidenceError> {
        if n > self.remaining() {
            return Err(EvidenceError::Truncated {
                what: self.what,
                offset: self.pos,
                needed: n - self.remaining(),
            });
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, EvidenceError> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], EvidenceError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(crate) fn u32_le(&mut self) -> Result<u32, EvidenceError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    /// SCALE compact integer (used for every `Vec`/`String` length prefix).
    pub(crate) fn compact(&mut self) -> Result<u64, EvidenceError> {
        let first = self.u8()?;
        match first & 0b11 {
            0b00 => Ok(u64::from(first >> 2)),
            0b01 => {
                let second = self.u8()?;
                Ok(u64::from(u16::from_le_bytes([first, second]) >> 2))
            }
            0b10 => {
                let rest: [u8; 3] = self.array()?;
                Ok(u64::from(
                    u32::from_le_bytes([first, rest[0], rest[1], rest[2]]) >> 2,
                ))
            }
            _ => {
                let n = usize::from(first >> 2) + 4;
                if n > 8 {
                    return Err(EvidenceError::invalid(format!(
                        "{}: compact integer of {n} bytes at offset {} is too large",
                        self.what, self.pos
                    )));
                }
                let bytes = self.take(n)?;
                let mut le = [0u8; 8];
                le[..n].copy_from_slice(bytes);
                Ok(u64::from_le_bytes(le))
            }
        }
    }

    /// A compact length that must fit in what remains (each element takes at least
    /// `min_elem` bytes), checked before the caller allocates anything for it.
    pub(crate) fn length(&mut self, min_elem: usize) -> Result<usize, EvidenceError> {
        let at = self.pos;
        let len = self.compact()?;
        let needed = len.saturating_mul(min_elem.max(1) as u64);
        if needed > self.remaining() as u64 {
            return Err(EvidenceError::invalid(format!(
                "{}: length {len} at offset {at} exceeds the {} bytes that remain",
                self.what,
                self.remaining()
            )));
        }
        Ok(len as usize)
    }

    /// SCALE `Vec<u8>`.
    pub(crate) fn bytes(&mut self) -> Result<Vec<u8>, EvidenceError> {
        let len = self.length(1)?;
        Ok(self.take(len)?.to_vec())
    }

    /// SCALE `String` (UTF-8 checked).
    pub(crate) fn string(&mut self) -> Result<String, EvidenceError> {
        let at = self.pos;
        let bytes = self.bytes()?;
        String::from_utf8(bytes).map_err(|_| {
            EvidenceError::invalid(format!("{}: string at offset {at} is not UTF-8", self.what))
        })
    }

    pub(crate) fn offset(&self) -> usize {
        self.pos
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_forms() {
        let cases: &[(&[u8], u64)] = &[
            (&[0x00], 0),
            (&[0xfc], 63),
            (&[0x01, 0x01], 64),
            (&[0xfd, 0xff], 16383),
            (&[0x02, 0x00, 0x01, 0x00], 16384),
            (&[0x03, 0x00, 0x00, 0x00, 0x40], 1 << 30),
        ];
        for (bytes, want) in cases {
            assert_eq!(
                Reader::new("t", bytes).compact().unwrap(),
                *want,
                "{bytes:?}"
            );
        }
    }

    #[test]
    fn hostile_length_is_refused_without_allocating() {
        // Compact length 2^30 followed by 3 bytes.
        let mut r = Reader::new("t", &[0x03, 0x00, 0x00, 0x00, 0x40, 1, 2, 3]);
        let err = r.bytes().unwrap_err();
        assert!(err.to_string().contains("exceeds the 3 bytes"), "{err}");
    }

    #[test]
    fn truncation_is_reported_with_offset() {
        let mut r = Reader::new("blob", &[1, 2]);
        r.take(1).unwrap();
        let err = r.array::<4>().unwrap_err();
        assert_eq!(
            err,
            EvidenceError::Truncated {
                what: "blob",
                offset: 1,
                needed: 3
            }
        );
    }
}
