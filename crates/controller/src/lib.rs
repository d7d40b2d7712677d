//! Controller quorum (work in progress): see docs/architecture.md.
