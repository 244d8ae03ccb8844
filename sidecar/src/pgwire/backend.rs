//! Backend message encoders (each appends one message to `out`): the proxy
//! speaks as a server to its clients.
//!
//! String fields are NUL-terminated on the wire, so embedded NULs are replaced
//! by U+FFFD rather than allowed to cut a field short and shift the rest.

use super::{put_cstr, put_frame};

/// Authentication request codes ('R' messages).
const AUTH_OK: u32 = 0;
const AUTH_CLEARTEXT_PASSWORD: u32 = 3;
const AUTH_MD5_PASSWORD: u32 = 5;
const AUTH_SASL: u32 = 10;
const AUTH_SASL_CONTINUE: u32 = 11;
const AUTH_SASL_FINAL: u32 = 12;

fn authentication(out: &mut Vec<u8>, code: u32, body: impl FnOnce(&mut Vec<u8>)) {
    put_frame(out, Some(b'R'), |out| {
        out.extend_from_slice(&code.to_be_bytes());
        body(out);
    });
}

/// AuthenticationOk.
pub fn authentication_ok(out: &mut Vec<u8>) {
    authentication(out, AUTH_OK, |_| {});
}

/// AuthenticationCleartextPassword.
pub fn authentication_cleartext_password(out: &mut Vec<u8>) {
    authentication(out, AUTH_CLEARTEXT_PASSWORD, |_| {});
}

/// AuthenticationMD5Password with its 4-byte salt (the sidecar never asks for it; a
/// test plays a server that does).
pub fn authentication_md5_password(out: &mut Vec<u8>, salt: [u8; 4]) {
    authentication(out, AUTH_MD5_PASSWORD, |out| out.extend_from_slice(&salt));
}

/// AuthenticationSASL: the mechanisms offered, in order of preference.
pub fn authentication_sasl(out: &mut Vec<u8>, mechanisms: &[&str]) {
    authentication(out, AUTH_SASL, |out| {
        for m in mechanisms {
            put_cstr(out, m.as_bytes());
        }
        out.push(0);
    });
}

/// AuthenticationSASLContinue: the server-first message.
pub fn authentication_sasl_continue(out: &mut Vec<u8>, data: &[u8]) {
    authentication(out, AUTH_SASL_CONTINUE, |out| out.extend_from_slice(data));
}

/// AuthenticationSASLFinal: the server-final message.
pub fn authentication_sasl_final(out: &mut Vec<u8>, data: &[u8]) {
    authentication(out, AUTH_SASL_FINAL, |out| out.extend_from_slice(data));
}

/// ParameterStatus ('S').
pub fn parameter_status(out: &mut Vec<u8>, name: &str, value: &str) {
    put_frame(out, Some(b'S'), |out| {
        put_cstr(out, name.as_bytes());
        put_cstr(out, value.as_bytes());
    });
}

/// BackendKeyData ('K'): 4-byte keys for protocol 3.0, up to 256 bytes for 3.2.
pub fn backend_key_data(out: &mut Vec<u8>, pid: i32, key: &[u8]) {
    put_frame(out, Some(b'K'), |out| {
        out.extend_from_slice(&pid.to_be_bytes());
        out.extend_from_slice(key);
    });
}

/// ReadyForQuery ('Z') with transaction status `b'I'`, `b'T'` or `b'E'`.
pub fn ready_for_query(out: &mut Vec<u8>, status: u8) {
    put_frame(out, Some(b'Z'), |out| out.push(status));
}

/// ErrorResponse / NoticeResponse body: typed fields, then a zero byte.
fn fields(out: &mut Vec<u8>, tag: u8, fields: &[(u8, Option<&str>)]) {
    put_frame(out, Some(tag), |out| {
        for (ty, value) in fields {
            if let Some(value) = value {
                out.push(*ty);
                put_cstr(out, value.as_bytes());
            }
        }
        out.push(0);
    });
}

/// ErrorResponse ('E') with S (severity, e.g. "FATAL"), V (same, non-localized), C (SQLSTATE),
/// M (message), and optional D (detail) and H (hint); NULs in fields are replaced.
pub fn error_response(
    out: &mut Vec<u8>,
    severity: &str,
    code: &str,
    message: &str,
    detail: Option<&str>,
    hint: Option<&str>,
) {
    let f = [
        (b'S', Some(severity)),
        (b'V', Some(severity)),
        (b'C', Some(code)),
        (b'M', Some(message)),
        (b'D', detail),
        (b'H', hint),
    ];
    fields(out, b'E', &f);
}

/// NoticeResponse ('N') with severity NOTICE, SQLSTATE `code` and `message`.
pub fn notice_response(out: &mut Vec<u8>, code: &str, message: &str) {
    let f = [
        (b'S', Some("NOTICE")),
        (b'V', Some("NOTICE")),
        (b'C', Some(code)),
        (b'M', Some(message)),
    ];
    fields(out, b'N', &f);
}

/// NegotiateProtocolVersion ('v'): newest minor supported and unrecognized `_pq_.` options.
pub fn negotiate_protocol_version(out: &mut Vec<u8>, newest_minor: u32, unrecognized: &[&str]) {
    put_frame(out, Some(b'v'), |out| {
        out.extend_from_slice(&newest_minor.to_be_bytes());
        let n = u32::try_from(unrecognized.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&n.to_be_bytes());
        for opt in unrecognized {
            put_cstr(out, opt.as_bytes());
        }
    });
}
