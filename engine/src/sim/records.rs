//! The simulator's record layers: TLS (or plaintext) at both ends of every simulated link.
//!
//! Owns: opening a link's record layers when its connection opens, sealing what an end sends,
//! unsealing what arrives, telling the client session when TLS is done (with the binding), and
//! the tampering hook. Must not touch: link timing (the parent module's `Dir`) or the
//! sessions' protocol.

use bytes::{Bytes, BytesMut};

use super::SimPair;
use crate::handshake::PLAINTEXT_BINDING;
use crate::tls::{ServerIdentity, TlsSetup, TunnelTls};

impl SimPair {
    /// Flips one bit of the first chunk in flight on tunnel `t` towards the client
    /// (`to_client`) or the server, as a tampering middlebox would. False when nothing is in
    /// flight there.
    pub fn flip_bit(&mut self, t: usize, to_client: bool) -> bool {
        let dir = &mut self.links[t].dirs[usize::from(to_client)];
        let chunk = dir
            .serializing
            .iter_mut()
            .chain(dir.propagating.iter_mut())
            .map(|(_, chunk)| chunk)
            .find(|chunk| !chunk.is_empty());
        let Some(chunk) = chunk else {
            return false;
        };
        let mut bytes = BytesMut::from(&chunk[..]);
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x04;
        *chunk = bytes.freeze();
        true
    }

    /// Every TLS key of every link protects at most `records` records (the AES-GCM suites
    /// allow 2^24), so that tests see tunnels reach the limit and get replaced: call before the
    /// first run.
    pub fn record_limit(mut self, records: u64) -> Self {
        self.record_limit = Some(records);
        self
    }

    /// A new connection on link `t`: its record layers; the client's TLS ClientHello leaves, or
    /// (plaintext) the session hears the connection is up.
    pub(super) fn open_tls(&mut self, t: usize) {
        let now = self.now;
        let made = self.tls.as_ref().map(|(client, server)| {
            client
                .connection()
                .and_then(|c| Ok([c, server.connection()?]))
        });
        match made {
            None => {
                self.links[t].tls = Some([TunnelTls::plaintext(), TunnelTls::plaintext()]);
                self.client.tunnel_connected(now, t, &PLAINTEXT_BINDING);
            }
            Some(Ok(mut pair)) => {
                if let Some(records) = self.record_limit {
                    pair.iter_mut()
                        .for_each(|end| end.set_record_limit(records));
                }
                self.links[t].tls = Some(pair);
                self.seal(t, 0, Vec::new());
            }
            Some(Err(e)) => {
                self.tls_errors.push((t, e));
                self.kill(t);
            }
        }
    }

    /// Seals `chunks` (with TLS's own records) at end `end` of link `t` and puts them on the
    /// wire away from it.
    pub(super) fn seal(&mut self, t: usize, end: usize, chunks: Vec<Bytes>) {
        let now = self.now;
        let link = &mut self.links[t];
        let Some(tls) = link.tls.as_mut().map(|pair| &mut pair[end]) else {
            return;
        };
        let (spec, dir) = (link.spec, &mut link.dirs[end]);
        if let Err(e) = tls.seal(chunks, |chunk| dir.enqueue(now, &spec, chunk)) {
            self.tls_errors.push((t, e));
            self.kill(t);
        }
    }

    /// Passes what arrived at end `end` of link `t` through its record layer into the
    /// direction's plaintext buffer. False when the tunnel was dropped (a record failed).
    pub(super) fn unseal(&mut self, t: usize, end: usize) -> bool {
        let link = &mut self.links[t];
        let dir = &mut link.dirs[1 - end];
        let Some(tls) = link.tls.as_mut().map(|pair| &mut pair[end]) else {
            return false;
        };
        let read = tls.read(&mut dir.rx, &mut dir.plain);
        if let Err(e) = read {
            self.tls_errors.push((t, e));
            self.kill(t);
            return false;
        }
        // TLS's own answers (handshake flights).
        self.seal(t, end, Vec::new());
        true
    }

    pub(super) fn deliver_to_client(&mut self, t: usize) {
        let now = self.now;
        let was_handshaking = self.links[t]
            .tls
            .as_ref()
            .is_some_and(|pair| pair[0].is_handshaking());
        if !self.unseal(t, 0) {
            return;
        }
        if was_handshaking
            && let Some(binding) = self.links[t].tls.as_ref().and_then(|p| p[0].binding())
        {
            let binding = *binding;
            self.client.tunnel_connected(now, t, &binding);
        }
        let mut plain = std::mem::take(&mut self.links[t].dirs[1].plain);
        if !plain.is_empty() {
            let _ = self.client.handle_input(now, t, &mut plain);
        }
        self.links[t].dirs[1].plain = plain;
    }
}

/// TLS for the simulator's links: the client accepts any certificate (the PSK proof covers
/// the exporter); the server's identity is generated once per process.
pub(super) fn sim_tls() -> (TlsSetup, TlsSetup) {
    static SETUPS: std::sync::OnceLock<Option<(TlsSetup, TlsSetup)>> = std::sync::OnceLock::new();
    SETUPS
        .get_or_init(|| {
            let server = TlsSetup::server(ServerIdentity::generate().ok()?).ok()?;
            Some((TlsSetup::client_accepting_any().ok()?, server))
        })
        .clone()
        .unwrap_or((TlsSetup::Plaintext, TlsSetup::Plaintext))
}
