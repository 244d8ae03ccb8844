//! Decoders for the backend messages the proxy reads while logging in to Postgres.
//!
//! Each takes the body of a message framed by [`super::parse_message`] /
//! [`super::read_message`] (which bounded its size) and borrows from it.

use super::reader::Reader;
use super::{MAX_CANCEL_KEY_LEN, MIN_CANCEL_KEY_LEN, WireError};

/// An Authentication ('R') request from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authentication<'a> {
    /// Authentication succeeded.
    Ok,
    /// Send the password in clear.
    CleartextPassword,
    /// Send `md5(md5(password + user) + salt)`.
    Md5Password([u8; 4]),
    /// Pick one of these SASL mechanisms.
    Sasl(Vec<&'a str>),
    /// Server's next SASL message.
    SaslContinue(&'a [u8]),
    /// Server's final SASL message.
    SaslFinal(&'a [u8]),
    /// Any other method (Kerberos, GSS, SSPI, ...), body not inspected.
    Other(u32),
}

/// Decodes an Authentication ('R') body.
pub fn authentication(body: &[u8]) -> Result<Authentication<'_>, WireError> {
    let mut r = Reader::new(body, "Authentication");
    let auth = match r.u32()? {
        0 => Authentication::Ok,
        3 => Authentication::CleartextPassword,
        5 => Authentication::Md5Password(r.array()?),
        10 => {
            // Each name costs at least 2 body bytes, so the list is bounded by the body.
            let mut mechanisms = Vec::new();
            loop {
                match r.str("SASL mechanism")? {
                    "" => break,
                    m => mechanisms.push(m),
                }
            }
            Authentication::Sasl(mechanisms)
        }
        11 => Authentication::SaslContinue(r.rest()),
        12 => Authentication::SaslFinal(r.rest()),
        // Methods we do not speak: their bodies are not ours to judge.
        code => return Ok(Authentication::Other(code)),
    };
    r.finish()?;
    Ok(auth)
}

/// Decodes a ParameterStatus ('S') body into (name, value).
pub fn parameter_status(body: &[u8]) -> Result<(&str, &str), WireError> {
    let mut r = Reader::new(body, "ParameterStatus");
    let name = r.str("name")?;
    let value = r.str("value")?;
    r.finish()?;
    Ok((name, value))
}

/// Decodes a BackendKeyData ('K') body into (pid, key); the key is 4..=256 bytes
/// (4 in protocol 3.0, variable in 3.2).
pub fn backend_key_data(body: &[u8]) -> Result<(i32, &[u8]), WireError> {
    let mut r = Reader::new(body, "BackendKeyData");
    let pid = r.i32()?;
    let key = r.rest();
    if !(MIN_CANCEL_KEY_LEN..=MAX_CANCEL_KEY_LEN).contains(&key.len()) {
        return Err(r.error(format!(
            "secret key is {} bytes, expected {MIN_CANCEL_KEY_LEN}..={MAX_CANCEL_KEY_LEN}",
            key.len()
        )));
    }
    Ok((pid, key))
}

/// ErrorResponse / NoticeResponse fields: (field type byte, value), in wire order.
/// Values must be UTF-8 (server messages are, unless the server is set up with
/// a non-UTF-8 encoding and localized messages).
pub fn error_fields(body: &[u8]) -> Result<Vec<(u8, &str)>, WireError> {
    let mut r = Reader::new(body, "ErrorResponse");
    let mut fields = Vec::new();
    loop {
        match r.u8()? {
            0 => break,
            ty => fields.push((ty, r.str("field value")?)),
        }
    }
    r.finish()?;
    Ok(fields)
}

/// Decodes a ReadyForQuery ('Z') body into its transaction status (`I`, `T` or `E`).
pub fn ready_for_query(body: &[u8]) -> Result<u8, WireError> {
    let mut r = Reader::new(body, "ReadyForQuery");
    let status = r.u8()?;
    if !matches!(status, b'I' | b'T' | b'E') {
        return Err(r.error(format!("unknown transaction status {status:#04x}")));
    }
    r.finish()?;
    Ok(status)
}

/// Decodes a NegotiateProtocolVersion ('v') body into (newest minor version
/// the server supports, protocol options it did not recognize).
pub fn negotiate_protocol_version(body: &[u8]) -> Result<(u32, Vec<&str>), WireError> {
    let mut r = Reader::new(body, "NegotiateProtocolVersion");
    let newest_minor = r.u32()?;
    let count = r.u32()?;
    // `count` is untrusted: never preallocate from it. Each option consumes at
    // least one byte, so a lying count fails on truncation within the body.
    let mut options = Vec::new();
    for _ in 0..count {
        options.push(r.str("option name")?);
    }
    r.finish()?;
    Ok((newest_minor, options))
}

#[cfg(test)]
mod fixtures {
    //! Malformed backend bodies for the decoders above.

    use super::*;

    const BAD_AUTHENTICATION: &[&[u8]] = &[
        b"",                                   // no code
        b"\x00\x00\x00",                       // truncated code
        b"\x00\x00\x00\x00x",                  // Ok with trailing byte
        b"\x00\x00\x00\x03\x00",               // Cleartext with trailing byte
        b"\x00\x00\x00\x05abc",                // MD5 salt too short
        b"\x00\x00\x00\x05abcde",              // MD5 salt too long
        b"\x00\x00\x00\x0a",                   // SASL without list terminator
        b"\x00\x00\x00\x0aSCRAM-SHA-256\0",    // SASL missing final NUL
        b"\x00\x00\x00\x0aSCRAM-SHA-256",      // SASL name missing NUL
        b"\x00\x00\x00\x0a\xff\0\0",           // SASL non-UTF-8 name
        b"\x00\x00\x00\x0aSCRAM-SHA-256\0\0x", // SASL trailing byte
    ];

    const BAD_PARAMETER_STATUS: &[&[u8]] = &[
        b"",
        b"TimeZone",
        b"TimeZone\0UTC",
        b"TimeZone\0UTC\0x",
        b"\xff\0UTC\0",
        b"TimeZone\0\xc3\0",
    ];

    const BAD_BACKEND_KEY_DATA: &[&[u8]] = &[
        b"",
        b"\x00\x00\x00",
        b"\x00\x00\x00\x01",    // no key
        b"\x00\x00\x00\x01abc", // 3-byte key
    ];

    const BAD_ERROR_FIELDS: &[&[u8]] = &[
        b"",              // no terminator
        b"SFATAL\0",      // missing terminator
        b"SFATAL",        // value missing NUL
        b"SFATAL\0\0x",   // trailing byte
        b"M\xff\xfe\0\0", // non-UTF-8 value
    ];

    const BAD_READY_FOR_QUERY: &[&[u8]] = &[b"", b"II", b"X"];

    const BAD_NEGOTIATE: &[&[u8]] = &[
        b"\x00\x00\x00\x02",                         // no count
        b"\x00\x00\x00\x02\x00\x00\x00\x01",         // count 1, no option
        b"\x00\x00\x00\x02\xff\xff\xff\xff_pq_.x\0", // huge count
        b"\x00\x00\x00\x02\x00\x00\x00\x00_pq_.x\0", // trailing option
        b"\x00\x00\x00\x02\x00\x00\x00\x01_pq_.x",   // option missing NUL
    ];

    /// Every case must fail as `Malformed` (a macro: the decoders borrow from their input).
    macro_rules! all_malformed {
        ($cases:expr, $f:expr) => {
            for b in $cases {
                let got = $f(b);
                assert!(
                    matches!(got, Err(WireError::Malformed { .. })),
                    "{b:?}: {got:?}"
                );
            }
        };
    }

    #[test]
    fn malformed_bodies_rejected() {
        all_malformed!(BAD_AUTHENTICATION, authentication);
        all_malformed!(BAD_PARAMETER_STATUS, parameter_status);
        all_malformed!(BAD_BACKEND_KEY_DATA, backend_key_data);
        all_malformed!([&[0u8; 4 + 257][..]], backend_key_data);
        all_malformed!(BAD_ERROR_FIELDS, error_fields);
        all_malformed!(BAD_READY_FOR_QUERY, ready_for_query);
        all_malformed!(BAD_NEGOTIATE, negotiate_protocol_version);
    }

    #[test]
    fn good_bodies() {
        assert_eq!(authentication(b"\0\0\0\0").unwrap(), Authentication::Ok);
        assert_eq!(
            authentication(b"\0\0\0\x05salt").unwrap(),
            Authentication::Md5Password(*b"salt")
        );
        assert_eq!(
            authentication(b"\0\0\0\x0aSCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0").unwrap(),
            Authentication::Sasl(vec!["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"])
        );
        assert_eq!(
            authentication(b"\0\0\0\x0bxyz").unwrap(),
            Authentication::SaslContinue(b"xyz")
        );
        assert_eq!(
            authentication(b"\0\0\0\x0c").unwrap(),
            Authentication::SaslFinal(b"")
        );
        // GSS continue carries opaque data: accepted as Other.
        assert_eq!(
            authentication(b"\0\0\0\x08opaque").unwrap(),
            Authentication::Other(8)
        );
        assert_eq!(
            backend_key_data(b"\0\0\0\x2aabcd").unwrap(),
            (42, &b"abcd"[..])
        );
        assert_eq!(backend_key_data(&[0u8; 4 + 256]).unwrap().1.len(), 256);
        assert_eq!(error_fields(b"\0").unwrap(), vec![]);
        assert_eq!(ready_for_query(b"T").unwrap(), b'T');
        assert_eq!(
            negotiate_protocol_version(b"\0\0\0\x02\0\0\0\x01_pq_.x\0").unwrap(),
            (2, vec!["_pq_.x"])
        );
    }
}
