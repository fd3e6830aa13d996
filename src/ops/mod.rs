//! Running the daemon: the metrics and health endpoint (`admin`), the control socket
//! (`control`), systemd's notify protocol (`notify`), logging, and the service's IP allow list
//! (`sandbox`).

pub(crate) mod admin;
pub mod control;
pub mod logging;
pub(crate) mod notify;
pub mod sandbox;
