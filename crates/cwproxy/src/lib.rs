//! The cwproxy sidecar: a reverse proxy in front of one app that writes one JSON access-log line
//! with CloudWatch EMF metrics per exchange, probes health URLs, and in inspector mode launches the
//! app itself and finds its port. Configured by environment variables only (see `config`).

pub mod admin;
pub mod app;
pub mod check;
pub mod cloudwatch;
pub mod config;
pub mod cwlogs;
pub mod health;
pub mod metadata;
pub mod output;
