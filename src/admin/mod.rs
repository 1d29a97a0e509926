//! The monitoring and control API of both daemons (axum, JSON under `/v1`), and its client.
//!
//! [`model`] is the contract: paths and documents shared by the servers and `tunnelizectl`.

pub mod client;
pub mod model;
pub mod table;
pub mod view;
