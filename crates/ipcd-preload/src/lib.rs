//! The ipcd preload library.
//! (Built out by the data-path issue; this crate holds the workspace slot.)
#![warn(missing_docs)]
