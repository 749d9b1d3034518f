//! Shared bench inputs.

pub mod scale;
