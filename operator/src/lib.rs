//! moim's control plane: the `Meeting` and `MediaNode` resources and the pure cores that
//! decide where meetings run.

pub mod crd;
pub mod placement;
