//! Multi-tenancy: each tenant sees a private Redis inside a shared one. Keys and channels get the
//! tenant's prefix on the way in (before routing, so placement is computed on the real key and a
//! hash tag inside the client's key still decides it), and lose it on the way out.
//!
//! Work in progress: the rules table is complete and tested; enforcement is not wired into the
//! session yet, so a config with tenants is refused at start (`Config::unsupported`).

pub mod rewrite;
pub mod rules;
