//! Listeners and connections (TLS, mutual TLS). What the rest of the server sees of a connection.

/// The subject CN of a client certificate the TLS layer verified (mutual TLS); put in each
/// request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertName(pub String);
