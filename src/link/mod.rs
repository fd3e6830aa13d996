//! Per-link DNS: what NetworkManager and `resolvectl` push over systemd-resolved's D-Bus API,
//! `org.freedesktop.resolve1`, and what dns-proxy makes of it. Each link's search and
//! routing-only domains become zones answered by that link's servers in plain DNS, inside that
//! network; every other name stays on the DoT upstreams (`link_dns = "domains"`). Under
//! `link_dns = "all"` a link that takes the default route (a VPN with `~.`) gets the other
//! names too.
//!
//! - `bus`: the name on the system bus, its methods and replies;
//! - `input`: what a caller may set, checked (pure);
//! - `table`: the links' settings and the zones and search list they give (pure);
//! - `registry`: the settings shared with the daemon, each change put in force at once;
//! - `properties`: what `resolvectl status` reads, object paths, introspection;
//! - `lookup`: `Resolve*` through the forwarder in force;
//! - `resolv_conf`: the resolv.conf with the links' search domains.

pub(crate) mod bus;
pub(crate) mod input;
pub(crate) mod lookup;
pub(crate) mod properties;
pub(crate) mod registry;
pub(crate) mod resolv_conf;
pub(crate) mod table;
