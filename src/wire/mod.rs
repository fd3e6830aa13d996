//! DNS on the wire, as pure functions over bytes: messages (`dns`) and the 2-byte length
//! framing of TCP and TLS (`framing`), zone names and their suffixes (`name`), where names sit in record data (`rdata`).

pub mod dns;
pub(crate) mod field;
pub mod framing;
pub mod name;
pub(crate) mod rdata;
pub(crate) mod tsig;
pub(crate) mod view;
