//! Where objects come from: a directory of manifests (standalone mode). The cluster source
//! (kube watchers) feeds the same compile.

pub mod dir;
pub mod manifests;
