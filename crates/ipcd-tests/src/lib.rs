//! Shared helpers of ipcd's integration tests.
