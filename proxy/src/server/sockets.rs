//! Listening sockets across reloads. A socket outlives the listener config that
//! opened it: a reload that keeps a listener's address keeps its socket, and one
//! that gives an address to another listener (a rename, two listeners trading
//! ports) hands the open socket over instead of binding the address again, which
//! would fail while the old socket is open. Connections waiting in the socket's
//! backlog are not lost either way.
//!
//! Each snapshot maps every socket to the listener that owns it (`Snapshot::sockets`),
//! so an accepted connection always meets the listener config published with that
//! mapping, whichever accept loop took it.
//!
//! With several workers an address gets one listening socket per worker, bound with
//! `SO_REUSEPORT` (as nginx's `reuseport` and Envoy's default on Linux): the kernel
//! spreads new connections over the workers' accept queues, and a connection wakes
//! one worker, not all of them, as one shared socket would. An address another
//! process listens on is refused rather than joined (see `bind`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;

use crate::config::ListenerConfig;
use crate::snapshot::{ListenerRuntime, Snapshot};

/// One bound listening socket. Its accept loops stop when the last listener
/// holding it lets go.
pub struct Socket {
    pub local: SocketAddr,
    stop: watch::Sender<bool>,
}

impl Socket {
    /// Turns true when no listener uses the socket any more.
    pub fn stopped(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// A listener on its socket. When a reload drops it (the listener is removed, moves
/// to another address, or its socket goes to another listener), its connections
/// are told to close once their requests in flight are answered.
pub struct Binding {
    /// The configured address (port 0 means "any": see `socket.local`).
    pub address: SocketAddr,
    pub socket: Arc<Socket>,
    retire: watch::Sender<bool>,
}

impl Binding {
    /// Tells the listener's connections, and those it accepts from now on, to close
    /// once they have answered a request, as if a reload had dropped it; it goes on
    /// accepting (shutdown's delay).
    pub fn retire_connections(&self) {
        self.retire.send_replace(true);
    }
}

impl Drop for Binding {
    fn drop(&mut self) {
        self.retire.send_replace(true);
    }
}

/// The listener a socket's connections belong to, as one snapshot sees it.
pub struct SocketOwner {
    pub listener: Arc<ListenerRuntime>,
    /// Turns true when the binding is dropped by a later reload.
    pub retired: watch::Receiver<bool>,
}

/// The bindings a config needs, and the sockets bound for it that have no accept
/// loops yet (one per worker). Dropping a plan (a refused reload) closes those
/// sockets and leaves the running bindings as they were.
pub struct Plan {
    pub bindings: HashMap<String, Arc<Binding>>,
    pub fresh: Vec<(Arc<Socket>, Vec<TcpListener>)>,
    /// (listener, the listener whose socket it takes over).
    pub handed_over: Vec<(String, String)>,
}

impl Plan {
    /// Binds what `listeners` need that `current` cannot give. A listener whose
    /// address is unchanged keeps its binding; an address held by a binding the new
    /// config lets go is handed over; anything else is bound anew, and an address
    /// that cannot be bound refuses the whole config. `workers` sockets are bound
    /// for each new address.
    pub fn make(
        current: &HashMap<String, Arc<Binding>>,
        listeners: &[ListenerConfig],
        file: &Path,
        workers: usize,
    ) -> anyhow::Result<Plan> {
        let kept = |name: &str, b: &Binding| {
            listeners
                .iter()
                .any(|l| l.name == name && l.address == b.address)
        };
        let mut plan = Plan {
            bindings: HashMap::new(),
            fresh: Vec::new(),
            handed_over: Vec::new(),
        };
        for l in listeners {
            if let Some(b) = current.get(&l.name).filter(|b| b.address == l.address) {
                plan.bindings.insert(l.name.clone(), b.clone());
                continue;
            }
            // Port 0 asks for a new port: never someone else's socket.
            let free = (l.address.port() != 0)
                .then(|| {
                    current.iter().find(|(name, b)| {
                        (b.address == l.address || b.socket.local == l.address)
                            && !kept(name, b)
                            && !plan.handed_over.iter().any(|(_, from)| from == *name)
                    })
                })
                .flatten();
            let socket = match free {
                Some((from, b)) => {
                    plan.handed_over.push((l.name.clone(), from.clone()));
                    b.socket.clone()
                }
                None => {
                    let copies = bind(l.address, workers).with_context(|| {
                        format!(
                            "{}: listeners: cannot bind {:?} to {}",
                            file.display(),
                            l.name,
                            l.address
                        )
                    })?;
                    let socket = Arc::new(Socket {
                        local: copies
                            .first()
                            .and_then(|c| c.local_addr().ok())
                            .unwrap_or(l.address),
                        stop: watch::channel(false).0,
                    });
                    plan.fresh.push((socket.clone(), copies));
                    socket
                }
            };
            let binding = Binding {
                address: l.address,
                socket,
                retire: watch::channel(false).0,
            };
            plan.bindings.insert(l.name.clone(), Arc::new(binding));
        }
        Ok(plan)
    }

    /// Which listener of `snap` owns each socket of the plan.
    pub fn owners(&self, snap: &Snapshot) -> HashMap<SocketAddr, SocketOwner> {
        self.bindings
            .iter()
            .filter_map(|(name, b)| {
                let owner = SocketOwner {
                    listener: snap.listeners.get(name)?.clone(),
                    retired: b.retire.subscribe(),
                };
                Some((b.socket.local, owner))
            })
            .collect()
    }
}

/// Binds `address` once per worker: a plain listening socket for one worker, a
/// `SO_REUSEPORT` group for several (port 0 is chosen by the first and shared by
/// the rest).
fn bind(address: SocketAddr, workers: usize) -> std::io::Result<Vec<TcpListener>> {
    let group = workers > 1;
    if group && address.port() != 0 {
        // Any socket of the same user that sets SO_REUSEPORT joins the group, so a
        // second proxy started on this address would silently take a share of its
        // connections. A socket without it cannot bind while anything listens
        // there (SO_REUSEADDR only lets it past connections in TIME_WAIT): bind
        // one first, and let it go.
        new_socket(address)?.bind(address)?;
    }
    let mut copies: Vec<TcpListener> = Vec::with_capacity(workers.max(1));
    let mut at = address;
    for _ in 0..workers.max(1) {
        let socket = new_socket(at)?;
        if group {
            socket.set_reuseport(true)?;
        }
        socket.bind(at)?;
        let listener = socket.listen(BACKLOG)?;
        at = listener.local_addr()?;
        copies.push(listener);
    }
    Ok(copies)
}

fn new_socket(address: SocketAddr) -> std::io::Result<TcpSocket> {
    let socket = match address {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    Ok(socket)
}

/// The accept queue of each socket (what tokio's `TcpListener::bind` uses).
const BACKLOG: u32 = 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_address_another_process_listens_on_is_not_joined() {
        let first = bind("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        let addr = first[0].local_addr().unwrap();
        assert_eq!(first[1].local_addr().unwrap(), addr);
        // What a second proxy with two workers would do: refused, not let into the group.
        let second = bind(addr, 2).map(|c| c.len());
        assert_eq!(
            second.map_err(|e| e.kind()),
            Err(std::io::ErrorKind::AddrInUse)
        );
        let one = bind(addr, 1).map(|c| c.len());
        assert_eq!(
            one.map_err(|e| e.kind()),
            Err(std::io::ErrorKind::AddrInUse)
        );
        // Once the first lets go, the address binds again.
        drop(first);
        assert_eq!(bind(addr, 2).unwrap().len(), 2);
    }
}
