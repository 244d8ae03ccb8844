//! Test harness for TeeSQL's end-to-end tests and the `teesql-dev` local cluster: real
//! processes and real services on loopback ports chosen by the OS.

pub mod agent;
pub mod cluster;
pub mod postgres;
