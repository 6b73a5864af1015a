//! One conformance suite for every GpuBackend, and a wire suite for any running node
