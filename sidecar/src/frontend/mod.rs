//! The Postgres front door on port 5433: accepting connections ([`server`]), TLS with the
//! RA-TLS certificate ([`tls`]), the handshake in phases up to a logged-in session
//! ([`session`]), limits per address ([`ratelimit`]), cancel requests ([`cancel`]) and
//! the relay of a logged-in session ([`relay`]).

pub mod cancel;
pub mod live;
pub mod ratelimit;
pub mod relay;
pub mod server;
pub mod session;
pub mod tls;
