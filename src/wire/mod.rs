//! DNS on the wire, as pure functions over bytes: messages (`dns`) and the 2-byte length
//! framing of TCP and TLS (`framing`), zone names and their suffixes (`name`).

pub mod dns;
pub mod framing;
pub mod name;
