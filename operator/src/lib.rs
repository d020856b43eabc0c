//! moim's control plane: the `Meeting`, `MediaNode` and `MediaPool` resources, the pure cores
//! that decide where meetings run and how many nodes a region needs ([`core`]), the
//! reconcilers' decisions written once ([`control`]) and the two clusters they act on: a
//! Kubernetes cluster ([`k8s`]: `operator run`) and the local fabric ([`local`]:
//! `operator local`); the join API ([`api`], [`join`]) both serve.

pub mod api;
pub mod control;
pub mod core;
pub mod crd;
pub mod error;
pub mod join;
pub mod k8s;
pub mod local;
pub mod metrics;
pub mod nodeapi;
pub mod secret;
pub mod turn;

// Where these lived before the split, for users of the library.
pub use crate::core::{autoscale, conditions, ledger, placement, regions};
pub use k8s::{context, leader, medianode, meeting, pod, pool, run};

pub use error::{Error, Result};
