//! Event logs and GetQuote responses.
//!
//! * The dstack JSON event log (`[{imr, event_type, digest, event, event_payload,
//!   version?}]`), parsed with the verifier's own `TdxEvent` deserializer (what
//!   `decode_getquote_json` and the legacy `.2` certificate extension use), then
//!   `EventLog::rtmr3_events`, RTMR3 replay, `AppIdentity::from_events` and the claims.
//! * `decode_getquote_json` on JSON objects (the guest agent's `GetQuote` response:
//!   `{quote, event_log, report_data, vm_config}`), then the same.
//!
//! The event log parse is private to `decode_getquote_json` and only reached after a
//! valid quote, so it is fuzzed directly through the public `TdxEvent` type.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use teesql_appraisal::eventlog::TdxEvent;
use teesql_appraisal::evidence::{Evidence, EventLog, decode_getquote_json};

fuzz_target!(|data: &[u8]| {
    let text = data.trim_ascii_start();
    if text.first() == Some(&b'[') {
        let r = serde_json::from_slice::<Vec<TdxEvent>>(data);
        common::trace("Vec<TdxEvent> JSON", &r);
        if let Ok(tdx_events) = r {
            let mut ev = Evidence::none();
            ev.event_log = Some(EventLog {
                tdx_events,
                runtime_events: Vec::new(),
            });
            common::exercise_evidence(&ev);
        }
    }
    if text.first() == Some(&b'{') {
        let r = decode_getquote_json(data);
        common::trace("decode_getquote_json", &r);
        if let Ok(ev) = r {
            common::exercise_evidence(&ev);
        }
    }
});
