//! The Kubernetes side: the controllers (kube-rs `Controller` around [`crate::control`]'s
//! decisions), [`Cluster`](crate::control::Cluster) implemented with kube, media pods, leader
//! election, and the wiring of `operator run`.

pub mod cluster;
pub mod context;
pub mod leader;
pub mod medianode;
pub mod meeting;
pub mod pod;
pub mod pool;
pub mod run;
