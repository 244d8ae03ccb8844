//! A DNS server double on 127.0.0.1 (UDP) that answers TXT queries for the names it is
//! given, as an authoritative server publishing TeeSQL's leader manifests would: each
//! record may be split into several character strings (255-byte chunks), several
//! records may sit at one name, and anything else gets NXDOMAIN. Messages are read and
//! written with hickory's own wire codec. Records can be changed while it runs (a
//! leader that moves), and every query is counted.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hickory_resolver::proto::op::{Message, MessageType, ResponseCode};
use hickory_resolver::proto::rr::rdata::TXT;
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};

/// TXT records by name (lower-case, with the trailing dot), each a list of chunks.
type Zone = HashMap<String, Vec<Vec<String>>>;

/// A running TXT server.
#[derive(Debug, Clone)]
pub struct TxtServer {
    pub addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    queries: Arc<AtomicU64>,
}

impl TxtServer {
    pub async fn start() -> anyhow::Result<Self> {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        let addr = socket.local_addr()?;
        let zone: Arc<Mutex<Zone>> = Arc::default();
        let queries = Arc::new(AtomicU64::new(0));
        let (z, q) = (zone.clone(), queries.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    break;
                };
                q.fetch_add(1, Ordering::Relaxed);
                if let Some(reply) = answer(&z, &buf[..n]) {
                    let _ = socket.send_to(&reply, from).await;
                }
            }
        });
        Ok(Self {
            addr,
            zone,
            queries,
        })
    }

    /// Publish `records` at `name` (replacing what was there); each record is split into
    /// 255-byte character strings, as DNS requires.
    pub fn set(&self, name: &str, records: &[String]) {
        let chunked = records
            .iter()
            .map(|r| {
                r.as_bytes()
                    .chunks(255)
                    .map(|c| String::from_utf8_lossy(c).into_owned())
                    .collect()
            })
            .collect();
        let mut zone = self.zone.lock().unwrap_or_else(|p| p.into_inner());
        zone.insert(fqdn(name), chunked);
    }

    /// Queries received so far.
    pub fn queries(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }
}

fn fqdn(name: &str) -> String {
    let mut n = name.trim_end_matches('.').to_ascii_lowercase();
    n.push('.');
    n
}

fn answer(zone: &Mutex<Zone>, packet: &[u8]) -> Option<Vec<u8>> {
    let query = Message::from_vec(packet).ok()?;
    let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
    reply.metadata.message_type = MessageType::Response;
    reply.metadata.authoritative = true;
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    let mut found = false;
    for q in &query.queries {
        reply.add_query(q.clone());
        let name = fqdn(&q.name().to_ascii());
        let zone = zone.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(records) = zone.get(&name) {
            found = true;
            if q.query_type() == RecordType::TXT {
                let owner = Name::from_ascii(&name).ok()?;
                for chunks in records {
                    reply.add_answer(Record::from_rdata(
                        owner.clone(),
                        0,
                        RData::TXT(TXT::new(chunks.clone())),
                    ));
                }
            }
        }
    }
    if !found {
        reply.metadata.response_code = ResponseCode::NXDomain;
    }
    reply.to_vec().ok()
}
