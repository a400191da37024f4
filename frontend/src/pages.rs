//! The dashboard's pages, one module per area.

pub mod app;
pub mod apps;
pub mod hosts;
pub mod team;
