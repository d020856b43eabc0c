//! The operator's error type.

/// Everything that can fail in the operator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("kubernetes api: {0}")]
    Kube(#[from] kube::Error),
    /// Adding or removing the finalizer failed, or cleanup did.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// A media node's admin API refused or did not answer.
    #[error("media node {node}: {message}")]
    NodeApi {
        /// MediaNode name.
        node: String,
        /// What went wrong.
        message: String,
    },
    /// An object lacks something every stored object has (name, namespace).
    #[error("object has no {0}")]
    MissingField(&'static str),
    /// JSON (de)serialisation.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// Start-up configuration.
    #[error("config: {0}")]
    Config(String),
}

/// `Result` with the operator's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The API server's message when it refused a call with 403 Forbidden (RBAC, or an
    /// admission plugin such as Pod Security): retrying will not help until someone changes
    /// the cluster, so it is reported on the object.
    pub fn forbidden(&self) -> Option<&str> {
        use kube::runtime::finalizer::Error as F;
        fn api(e: &kube::Error) -> Option<&str> {
            match e {
                kube::Error::Api(s) if s.code == 403 => Some(s.message.as_str()),
                _ => None,
            }
        }
        match self {
            Self::Kube(e) => api(e),
            Self::Finalizer(f) => match f.as_ref() {
                F::ApplyFailed(e) | F::CleanupFailed(e) => e.forbidden(),
                F::AddFinalizer(e) | F::RemoveFinalizer(e) => api(e),
                _ => None,
            },
            _ => None,
        }
    }

    /// A short label for the errors metric (bounded set of values).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube",
            Self::Finalizer(_) => "finalizer",
            Self::NodeApi { .. } => "node_api",
            Self::MissingField(_) => "invalid_object",
            Self::Json(_) => "json",
            Self::Config(_) => "config",
        }
    }
}
