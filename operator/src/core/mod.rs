//! Pure decisions, over an observed snapshot and `now`, with no I/O: where a meeting runs
//! ([`placement`], with the seats already promised in the [`ledger`]), how many media nodes a
//! pool needs ([`autoscale`]), and status conditions the Kubernetes way ([`conditions`]).

pub mod autoscale;
pub mod conditions;
pub mod ledger;
pub mod placement;
pub mod regions;
