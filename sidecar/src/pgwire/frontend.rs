//! Frontend message encoders for the proxy's own login to Postgres.
//!
//! All authentication responses share the tag `'p'`; the server tells them
//! apart by what it asked for.

use super::{put_cstr, put_frame};

/// PasswordMessage: the password (cleartext or md5 hash) NUL-terminated.
/// An embedded NUL is replaced by U+FFFD, so such a password fails to
/// authenticate rather than being silently truncated to a shorter one.
pub fn password_message(out: &mut Vec<u8>, password: &[u8]) {
    put_frame(out, Some(b'p'), |out| put_cstr(out, password));
}

/// SASLInitialResponse: chosen mechanism and the client-first message.
pub fn sasl_initial_response(out: &mut Vec<u8>, mechanism: &str, data: &[u8]) {
    put_frame(out, Some(b'p'), |out| {
        put_cstr(out, mechanism.as_bytes());
        // Oversized data clamps to a length the server will reject (see `put_frame`).
        let len = i32::try_from(data.len()).unwrap_or(i32::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(data);
    });
}

/// SASLResponse: the next SASL message, as is.
pub fn sasl_response(out: &mut Vec<u8>, data: &[u8]) {
    put_frame(out, Some(b'p'), |out| out.extend_from_slice(data));
}

/// Query: one simple-protocol query string.
pub fn query(out: &mut Vec<u8>, sql: &str) {
    put_frame(out, Some(b'Q'), |out| put_cstr(out, sql.as_bytes()));
}

/// Sync: ends an extended-query exchange; Postgres answers ReadyForQuery (and stops
/// skipping messages after an error).
pub fn sync(out: &mut Vec<u8>) {
    put_frame(out, Some(b'S'), |_| {});
}
