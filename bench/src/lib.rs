//! The benchmark harness of `docs/benchmarks.md`: a fast fake OpenAI-compatible upstream, the
//! processes under test started on loopback, an open-loop constant-rate load generator recording
//! HDR histograms, oha beside it on scenario 2, the scenarios, and the report (JSON, Markdown,
//! SVG).

pub mod load;
pub mod oha;
pub mod processes;
pub mod redis_topology;
pub mod report;
pub mod scenarios;
pub mod stalls;
pub mod topologies;
pub mod upstream;
