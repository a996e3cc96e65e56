//! Shared helpers for the mtcpd criterion benchmarks (see `benches/`).
