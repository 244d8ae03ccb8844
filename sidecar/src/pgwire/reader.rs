//! Bounds-checked cursor over a message body.

use super::WireError;

/// Forward-only reader over an untrusted body. Every read checks bounds and
/// reports a [`WireError::Malformed`] naming the message being decoded, so the
/// decoders above it never index by hand.
pub(super) struct Reader<'a> {
    rest: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(super) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { rest: buf, what }
    }

    pub(super) fn error(&self, detail: impl Into<String>) -> WireError {
        WireError::Malformed {
            what: self.what,
            detail: detail.into(),
        }
    }

    /// The next `N` bytes as an array.
    pub(super) fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let Some((head, tail)) = self.rest.split_first_chunk::<N>() else {
            return Err(self.error(format!(
                "truncated: need {N} bytes, have {}",
                self.rest.len()
            )));
        };
        self.rest = tail;
        Ok(*head)
    }

    pub(super) fn u8(&mut self) -> Result<u8, WireError> {
        let [b] = self.array::<1>()?;
        Ok(b)
    }

    pub(super) fn u32(&mut self) -> Result<u32, WireError> {
        self.array().map(u32::from_be_bytes)
    }

    pub(super) fn i32(&mut self) -> Result<i32, WireError> {
        self.array().map(i32::from_be_bytes)
    }

    /// The next `n` bytes. `n` usually comes off the wire: it is checked against
    /// what is actually present, never used to size an allocation.
    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if n > self.rest.len() {
            return Err(self.error(format!(
                "truncated: need {n} bytes, have {}",
                self.rest.len()
            )));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    /// A NUL-terminated string, without its terminator.
    pub(super) fn cstr(&mut self) -> Result<&'a [u8], WireError> {
        let mut parts = self.rest.splitn(2, |&b| b == 0);
        match (parts.next(), parts.next()) {
            (Some(s), Some(tail)) => {
                self.rest = tail;
                Ok(s)
            }
            _ => Err(self.error("missing NUL terminator")),
        }
    }

    /// A NUL-terminated UTF-8 string; `field` names it in the error.
    pub(super) fn str(&mut self, field: &str) -> Result<&'a str, WireError> {
        let raw = self.cstr()?;
        std::str::from_utf8(raw).map_err(|_| self.error(format!("{field} is not valid UTF-8")))
    }

    /// Everything left.
    pub(super) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.rest)
    }

    /// Requires the body to be fully consumed: trailing garbage means the
    /// peer and we disagree about the layout, which is never safe to ignore.
    pub(super) fn finish(self) -> Result<(), WireError> {
        match self.rest.len() {
            0 => Ok(()),
            n => Err(self.error(format!("{n} unexpected trailing bytes"))),
        }
    }
}
