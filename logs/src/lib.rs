//! Vigil's log store and log search.
//!
//! - [`store`]: time-partitioned tantivy indexes under `<data_dir>/logs/`, fed through a
//!   write-ahead log so an acknowledged line survives kill -9; retention drops whole
//!   partitions.
//! - [`search`]: Lucene-like queries, cursors, histogram by level, field summaries.
//! - [`api`]: `/api/v1/logs/search`, `/api/v1/logs/histogram`, `/api/v1/logs/fields`.
//!
//! The collector writes through [`vigil_model::LogSink`], which [`store::LogStore`]
//! implements; it never imports this crate.
#![warn(missing_docs)]

pub mod api;
pub mod directory;
pub mod schema;
pub mod search;
pub mod store;
pub mod tokenizer;
pub mod upgrade;
pub mod wal;

pub use store::{LogStore, LogStoreError, LogStoreOptions};

#[cfg(test)]
mod tests;
