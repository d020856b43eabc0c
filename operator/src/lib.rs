//! moim's control plane: the `Meeting` and `MediaNode` resources, the pure cores that decide
//! where meetings run, the reconcilers that apply those decisions, and the join API.

pub mod api;
pub mod autoscale;
pub mod conditions;
pub mod context;
pub mod crd;
pub mod error;
pub mod join;
pub mod leader;
pub mod ledger;
pub mod local;
pub mod medianode;
pub mod meeting;
pub mod metrics;
pub mod nodeapi;
pub mod placement;
pub mod pod;
pub mod pool;
pub mod run;
pub mod secret;
pub mod turn;

pub use error::{Error, Result};
