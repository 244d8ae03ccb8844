//! A cached appraisal, kept in the two forms every decision needs: a regorus value (the
//! policy input) and JSON text (the `claims_json` of the answer). Each decision only adds
//! its own small parts (purpose, time, connection) instead of converting the whole claims
//! document again; that conversion was about a third of a warm decision.

use std::collections::BTreeMap;

use serde::Serialize;

#[cfg(test)]
use crate::claims::Claims;
use crate::claims::{AppraisedEvidence, CLAIMS_VERSION, ConnectionClaims};
use crate::manifest::ManifestClaims;
use crate::report::ReportClaims;

/// Per-purpose additions to the claims.
#[derive(Debug, Default)]
pub(crate) struct Extra {
    pub manifest: Option<ManifestClaims>,
    pub report: Option<ReportClaims>,
}

/// One section of the claims in both forms.
#[derive(Debug)]
struct Section {
    value: regorus::Value,
    json: String,
}

impl Section {
    fn of(v: &impl Serialize) -> Self {
        let json = serde_json::to_value(v).unwrap_or(serde_json::Value::Null);
        Self {
            json: json.to_string(),
            value: regorus::Value::from(json),
        }
    }
}

/// An appraisal ready to be turned into the input of any number of decisions.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub appraised: AppraisedEvidence,
    evidence: Section,
    tdx: Section,
    app: Section,
    binding: Section,
}

impl Prepared {
    pub fn new(appraised: AppraisedEvidence) -> Self {
        Self {
            evidence: Section::of(&appraised.evidence),
            tdx: Section::of(&appraised.tdx),
            app: Section::of(&appraised.app),
            binding: Section::of(&appraised.binding),
            appraised,
        }
    }

    /// The policy input and the claims JSON for one decision. The JSON is exactly what
    /// serializing [`Claims`] gives (fields in declaration order); a test holds them equal.
    pub fn input(
        &self,
        purpose: &str,
        now: u64,
        connection: Option<&ConnectionClaims>,
        extra: &Extra,
    ) -> (regorus::Value, String) {
        let connection = Section::of(&connection);
        let manifest = Section::of(&extra.manifest);
        let report = Section::of(&extra.report);
        let purpose_json = serde_json::Value::from(purpose).to_string();
        let json = format!(
            "{{\"claims_version\":{CLAIMS_VERSION},\"purpose\":{purpose_json},\"now\":{now},\
             \"evidence\":{},\"tdx\":{},\"app\":{},\"binding\":{},\"connection\":{},\
             \"manifest\":{},\"report\":{}}}",
            self.evidence.json,
            self.tdx.json,
            self.app.json,
            self.binding.json,
            connection.json,
            manifest.json,
            report.json
        );
        let mut map = BTreeMap::new();
        let mut put = |k: &str, v: regorus::Value| {
            map.insert(regorus::Value::from(k), v);
        };
        put(
            "claims_version",
            regorus::Value::from(u64::from(CLAIMS_VERSION)),
        );
        put("purpose", regorus::Value::from(purpose));
        put("now", regorus::Value::from(now));
        put("evidence", self.evidence.value.clone());
        put("tdx", self.tdx.value.clone());
        put("app", self.app.value.clone());
        put("binding", self.binding.value.clone());
        put("connection", connection.value);
        put("manifest", manifest.value);
        put("report", report.value);
        (regorus::Value::from(map), json)
    }

    /// The claims as a struct: what [`Self::input`] must agree with.
    #[cfg(test)]
    pub fn claims(
        &self,
        purpose: &str,
        now: u64,
        connection: Option<ConnectionClaims>,
        extra: Extra,
    ) -> Claims {
        let mut c = self.appraised.clone().into_claims(purpose, now, connection);
        c.manifest = extra.manifest;
        c.report = extra.report;
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spliced forms must equal a plain serialization of the claims.
    #[test]
    fn spliced_input_equals_serialized_claims() {
        let quote = crate::evidence::decode_quote_text(
            &std::fs::read(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../testdata/dcap/tdx_quote"
            ))
            .unwrap(),
        )
        .unwrap();
        let ev = crate::evidence::Evidence::from_quote(quote);
        let appraised = AppraisedEvidence::build(&ev, None, "dcap", Some(b"abc"));
        let prepared = Prepared::new(appraised);
        let connection = ConnectionClaims {
            user: "u\"ser".into(),
            database: "db".into(),
            sni: String::new(),
            client_addr: "127.0.0.1:1".into(),
            alpn: "postgresql".into(),
            expected_mrtds: vec!["aa".into()],
        };
        let extra = Extra {
            manifest: Some(crate::manifest::Manifest::claims("v=1")),
            report: None,
        };
        let (value, json) = prepared.input("sid\u{e9}car", 42, Some(&connection), &extra);
        let claims = prepared.claims("sid\u{e9}car", 42, Some(connection), extra);
        let expected = serde_json::to_string(&claims).unwrap();
        assert_eq!(json, expected);
        let reparsed: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value, regorus::Value::from(reparsed));
    }
}
