//! The Trellis coordinator.
//!
//! # Layout
//! - [`map`]: the shard map and the consistent-hash ring.
//! - [`catalog`]: cluster metadata in SQL (sqlx: SQLite or PostgreSQL).

pub mod catalog;
pub mod map;
