//! Test kit (dev-only).
