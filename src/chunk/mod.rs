//! Chunking: the parallel pipeline that cuts, digests, deduplicates and compresses file data
//! and feeds the blob writer.

pub mod pipeline;
