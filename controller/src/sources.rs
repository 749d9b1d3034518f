//! Where objects come from: a directory of manifests (standalone mode) or the Kubernetes API
//! (cluster mode). Both feed the same compile.

pub mod cluster;
pub mod dir;
pub mod manifests;
