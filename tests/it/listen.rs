//! Without socket activation the daemon binds its listening sockets itself: from `--listen` on
//! the command line, or from `listen` in the config file.

use std::net::{Ipv4Addr, SocketAddr};

use crate::support::assert_serves;
use crate::support::proxy::{Proxy, ProxyConfig, free_port};
use crate::support::upstream::FakeUpstream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binds_command_line_listen_address_without_socket_activation() {
    let up = FakeUpstream::start().await;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let proxy = Proxy::builder(&ProxyConfig::new(up.spec()))
        .listen_args(vec![addr])
        .start()
        .await;
    assert_serves(addr, addr, "www.example.com.", up.answer()).await;
    proxy.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binds_config_listen_address_without_socket_activation() {
    let up = FakeUpstream::start().await;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let proxy = Proxy::builder(&ProxyConfig::new(up.spec()).listen(vec![addr]))
        .listen_args(Vec::new())
        .start()
        .await;
    assert_serves(addr, addr, "www.example.com.", up.answer()).await;
    proxy.assert_running();
}
