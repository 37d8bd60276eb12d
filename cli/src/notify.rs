//! Readiness for systemd (`Type=notify`): `READY=1` once the host is up
//! (config, plugins, ledger and admin endpoint loaded), `STOPPING=1` when it
//! stops. A datagram to `$NOTIFY_SOCKET`, as `sd_notify(3)` sends it; nothing
//! without that variable.

use std::os::unix::net::UnixDatagram;

/// Sends `state` to the service manager, if there is one. A failure is
/// logged, never fatal: the host runs the same without a manager.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = UnixDatagram::unbound().and_then(|socket| {
        let bytes = path.as_encoded_bytes();
        match bytes.strip_prefix(b"@") {
            // An abstract socket (Linux): `@` stands for the leading NUL.
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                socket.send_to_addr(state.as_bytes(), &addr)
            }
            None => socket.send_to(state.as_bytes(), &path),
        }
    });
    if let Err(e) = sent {
        tracing::warn!(error = %e, state, "cannot notify the service manager");
    }
}
